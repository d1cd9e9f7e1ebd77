//! Replays the fuzz corpus of the Clerk event parser (`fuzz/corpus/clerk_event`): a regression
//! check that every input found so far is handled without a panic.

#[test]
fn the_clerk_event_fuzz_corpus_is_handled_without_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/clerk_event");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        store::event::fuzz_case(&data);
        seen += 1;
    }
    assert!(seen >= 5, "corpus at {} has {seen} inputs", dir.display());
}
