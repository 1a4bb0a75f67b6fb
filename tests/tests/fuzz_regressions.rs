//! Replays the fuzzer's seed corpus (`events/*.json`) and every input it ever reported
//! (`tests/fuzz/regressions/`, one file each, named after what it found) through the fuzz
//! harness: the pipeline must not panic and its invariants must hold (see
//! `tollgate_tests::fuzzing`), and so must a short seeded mutation run over them (the loop of
//! `make test`'s `fuzz-short`, `tollgate_tests::fuzz_short`).

use std::path::Path;

use tollgate_tests::fuzz_short;
use tollgate_tests::fuzzing::Harness;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read(&p).expect("read input"),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn seed_corpus_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events");
    let seeds = inputs(&root);
    assert!(seeds.len() > 50, "{} seeds", seeds.len());
    let h = Harness::new().expect("harness");
    for (name, data) in seeds {
        eprintln!("{name}");
        h.run(&data);
    }
}

#[test]
fn every_input_the_fuzzer_reported_runs_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let h = Harness::new().expect("harness");
    for (name, data) in inputs(&dir) {
        eprintln!("{name}");
        h.run(&data);
    }
}

#[test]
fn a_short_seeded_mutation_run_holds_every_invariant() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let regressions = root.join("tests/fuzz/regressions");
    let seeds = fuzz_short::corpus(&[&root.join("events"), &regressions]).expect("corpus");
    let dict = fuzz_short::dictionary(
        &std::fs::read_to_string(root.join("tests/fuzz/pipeline.dict")).expect("dictionary"),
    );
    let h = Harness::new().expect("harness");
    let budget = fuzz_short::Budget {
        execs: 3000,
        time: std::time::Duration::from_secs(3600),
    };
    let report =
        fuzz_short::run(seeds, &dict, 12, budget, &regressions, |input| h.run(input)).expect("run");
    assert_eq!(report.execs, 3000);
    // The mutants reach past the transport checks: more than the seeds' few refusals.
    assert!(report.classes >= 8, "{} response classes", report.classes);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}
