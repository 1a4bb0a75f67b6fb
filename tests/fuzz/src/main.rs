//! AFL++ target: every input runs through [`tollgate_tests::fuzzing::Harness::run`] (the whole
//! request pipeline of a tool function); a panic is a crash. Built by `cargo afl build`
//! (`make fuzz`); the same inputs replay under `cargo test` (`tests/tests/fuzz_regressions.rs`).

fn main() {
    let harness = std::panic::AssertUnwindSafe(
        tollgate_tests::fuzzing::Harness::new().expect("fuzz harness"),
    );
    afl::fuzz!(|data: &[u8]| {
        harness.run(data);
    });
}
