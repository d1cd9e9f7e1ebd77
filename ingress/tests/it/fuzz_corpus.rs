//! Replays the fuzz corpus of the signature handling (`fuzz/corpus/svix_signature`): a regression
//! check that every input found so far is handled without a panic.

#[test]
fn the_svix_signature_fuzz_corpus_is_handled_without_panics() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/svix_signature");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        ingress::verify::fuzz_case(&data);
        seen += 1;
    }
    assert!(seen >= 4, "corpus at {} has {seen} inputs", dir.display());
}
