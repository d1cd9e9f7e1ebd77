//! Svix header handling and signature verification must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ingress::verify::fuzz_case(data);
});
