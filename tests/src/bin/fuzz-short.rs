//! `fuzz-short [--secs N] [--execs N] [--seed N]`: the short fuzz run of `make test`
//! (`tollgate_tests::fuzz_short`): mutants of the seed corpus (`events/*.json` and
//! `tests/fuzz/regressions/`) through the fuzz harness for N seconds (default 30) or N
//! executions, whichever comes first. Prints executions per second; each failing input is saved
//! in `tests/fuzz/regressions/` (replayed by `cargo test`) and the run exits 1.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tollgate_tests::fuzz_short::{self, Budget};
use tollgate_tests::fuzzing::Harness;

fn main() -> anyhow::Result<()> {
    let mut secs = 30u64;
    let mut execs = u64::MAX;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let n: u64 = value.parse().with_context(|| format!("{flag} {value}"))?;
        match flag.as_str() {
            "--secs" => secs = n,
            "--execs" => execs = n,
            "--seed" => seed = Some(n),
            _ => anyhow::bail!("usage: fuzz-short [--secs N] [--execs N] [--seed N]"),
        }
    }
    // A new seed each run unless one is given (the run prints it, to reproduce).
    let seed = seed.unwrap_or_else(rand::random);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let regressions = root.join("tests/fuzz/regressions");
    let seeds = fuzz_short::corpus(&[&root.join("events"), &regressions])?;
    let dict = fuzz_short::dictionary(&std::fs::read_to_string(
        root.join("tests/fuzz/pipeline.dict"),
    )?);
    let n_seeds = seeds.len();
    let harness = Harness::new()?;
    let budget = Budget {
        execs,
        time: Duration::from_secs(secs),
    };
    let report = fuzz_short::run(seeds, &dict, seed, budget, &regressions, |input| {
        harness.run(input)
    })?;
    println!(
        "fuzz-short: {} executions in {:.1} s ({:.0} per second), seed {seed}, {n_seeds} seeds, \
         pool {} inputs, {} response classes, failures {}",
        report.execs,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.pool,
        report.classes,
        report.failures.len()
    );
    println!(
        "fuzz-short: slowest execution {:.0} ms ({} bytes)",
        report.slowest.0.as_secs_f64() * 1000.0,
        report.slowest.1.len()
    );
    if let Ok(path) = std::env::var("FUZZ_SHORT_SLOWEST") {
        std::fs::write(path, &report.slowest.1)?;
    }
    for (path, message) in &report.failures {
        eprintln!("failing input saved as {}: {message}", path.display());
    }
    if report.failures.is_empty() {
        println!("fuzz-short: 1 passed, 0 failed");
        Ok(())
    } else {
        println!("fuzz-short: 0 passed, 1 failed");
        std::process::exit(1)
    }
}
