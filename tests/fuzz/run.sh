#!/usr/bin/env bash
# `make fuzz [FUZZ_SECS=N]`: coverage-guided fuzzing of the request pipeline with AFL++ on the
# stable toolchain (`cargo afl`; `make tools-afl` installs it). Builds the instrumented target
# (target/afl), seeds the corpus from events/*.json, fuzzes for N seconds (default 60) and
# prints executions, paths, coverage and crashes. Every crash is copied to
# tests/fuzz/regressions/ (replayed by `cargo test`, tests/tests/fuzz_regressions.rs) and the
# run fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-60}"
OUT="target/afl/run"
export CARGO_TARGET_DIR="$PWD/target/afl"
if ! cargo afl --version >/dev/null 2>&1; then
  echo "cargo-afl is missing: make tools-afl" >&2
  exit 2
fi
(cd tests/fuzz && cargo afl build --release --quiet)
rm -rf "$OUT" && mkdir -p "$OUT/in"
cp events/*.json "$OUT/in/"
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  AFL_QUIET=1 AFL_NO_AFFINITY=1 AFL_SHUFFLE_QUEUE=0 AFL_FAST_CAL=1
cargo afl fuzz -V "$SECS" -t 5000 -i "$OUT/in" -o "$OUT/out" -x tests/fuzz/pipeline.dict \
  -- "$CARGO_TARGET_DIR/release/pipeline" > "$OUT/afl.log" 2>&1 || {
    tail -30 "$OUT/afl.log" >&2
    exit 1
  }
stats="$OUT/out/default/fuzzer_stats"
val() { awk -F' *: *' -v k="$1" '$1 == k {print $2}' "$stats"; }
crashes=$(val saved_crashes)
echo "fuzz: $(val execs_done) executions in $(val run_time) s ($(val execs_per_sec) per second), corpus $(val corpus_count) inputs, edges $(val edges_found) of $(val total_edges) ($(val bitmap_cvg)), crashes $crashes, hangs $(val saved_hangs)"
if [ "$crashes" != "0" ]; then
  for f in "$OUT"/out/default/crashes/id:*; do
    name="crash-$(sha256sum "$f" | cut -c1-16)"
    cp "$f" "tests/fuzz/regressions/$name"
    echo "crash saved as tests/fuzz/regressions/$name" >&2
  done
  echo "fuzz: 0 passed, 1 failed"
  exit 1
fi
echo "fuzz: 1 passed, 0 failed"
