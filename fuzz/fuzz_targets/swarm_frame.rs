//! Fuzz target `swarm_frame`: the properties are in
//! `classe_bundle::fuzzing::swarm_frame_limited`, which the corpus replay
//! test (crates/classe-bundle/tests/fuzz_corpus.rs) runs too. Each decoding
//! runs under an allocation limit (`fuzzing::swarm_alloc_bound`): an
//! allocation past it fails, which aborts, which libFuzzer reports.
#![no_main]

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

fn limit(n: Option<usize>) {
    let _ = match n {
        Some(n) => ALLOC.set_limit(ALLOC.allocated().saturating_add(n)),
        None => ALLOC.set_limit(usize::MAX),
    };
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    classe_bundle::fuzzing::swarm_frame_limited(data, &limit);
});
