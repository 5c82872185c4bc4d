//! Fuzz target `keys`: the properties are in `classe_bundle::fuzzing::keys`,
//! which the corpus replay test (crates/classe-bundle/tests/fuzz_corpus.rs)
//! runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    classe_bundle::fuzzing::keys(data);
});
