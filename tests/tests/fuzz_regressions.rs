//! Replays the fuzzer's seed corpus (`events/*.json`) and every input it ever reported
//! (`tests/fuzz/regressions/`, one file each, named after what it found) through the fuzz
//! harness: the pipeline must not panic and its invariants must hold (see
//! `tollgate_tests::fuzzing`).

use std::path::Path;

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
