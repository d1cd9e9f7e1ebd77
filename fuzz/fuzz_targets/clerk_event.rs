//! The Clerk event parser and the calendar-account reader must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    store::event::fuzz_case(data);
});
