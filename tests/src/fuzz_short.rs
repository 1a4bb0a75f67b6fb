//! The short fuzz run of `make test`: a seeded, structure-aware mutation loop over the seed
//! corpus that drives the same harness as the AFL++ target ([`crate::fuzzing::Harness`]) in the
//! ordinary debug build, without instrumentation, for a fixed number of executions or seconds.
//!
//! Each execution takes an input from the pool (the seeds `events/*.json`, every saved
//! regression, and every mutant that produced a response class not seen before: status,
//! JSON-RPC error code, `isError`), mutates it and runs it. Mutations are JSON-aware: an API
//! Gateway event's fields, its headers and the JSON-RPC message inside its `body` string are
//! parsed, changed node by node (dictionary words from `tests/fuzz/pipeline.dict`, boundary
//! numbers, wrong types, deep nesting, long and non-ASCII strings, removed and added keys) and
//! written back, so most mutants get past the JSON parser and reach authentication, version
//! negotiation and argument validation; a quarter are byte-level (bit flips, dictionary
//! insertions, cuts, splices) for the parsers themselves. The same seed and execution count give
//! the same inputs. An input that breaks an invariant (the harness panics) is written to the
//! regressions folder under its SHA-256, where `tests/tests/fuzz_regressions.rs` replays it.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// How long a run lasts: whichever limit comes first.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// At most this many executions.
    pub execs: u64,
    /// At most this long.
    pub time: Duration,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Inputs run.
    pub execs: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Inputs in the pool at the end (seeds plus mutants that found a new response class).
    pub pool: usize,
    /// Distinct response classes seen.
    pub classes: usize,
    /// Failing inputs, as saved (path) with the panic message.
    pub failures: Vec<(PathBuf, String)>,
    /// The slowest execution and its input.
    pub slowest: (Duration, Vec<u8>),
}

impl Report {
    /// Executions per second.
    pub fn rate(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The seed corpus: every file of `dirs` (README.md excluded), sorted by path.
pub fn corpus(dirs: &[&Path]) -> std::io::Result<Vec<Vec<u8>>> {
    let mut paths = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            if p.is_file() && p.file_name().is_some_and(|n| n != "README.md") {
                paths.push(p);
            }
        }
    }
    paths.sort();
    paths.iter().map(std::fs::read).collect()
}

/// The words of an AFL++ dictionary (`"word"` per line, `\"` and `\\` escapes).
pub fn dictionary(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('"') && l.ends_with('"') && l.len() >= 2)
        .map(|l| {
            l[1..l.len() - 1]
                .replace("\\\"", "\"")
                .replace("\\\\", "\\")
        })
        .collect()
}

/// Runs `target` on mutants of `seeds` until the budget is spent. `target` returns the
/// response class of an input and panics when an invariant does not hold; each failing input is
/// written to `failures_dir` as `crash-<16 hex of its SHA-256>`.
pub fn run(
    seeds: Vec<Vec<u8>>,
    dict: &[String],
    seed: u64,
    budget: Budget,
    failures_dir: &Path,
    mut target: impl FnMut(&[u8]) -> String,
) -> std::io::Result<Report> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pool = seeds;
    if pool.is_empty() {
        pool.push(b"{}".to_vec());
    }
    let mut classes = HashSet::new();
    let mut report = Report::default();
    let start = Instant::now();
    while report.execs < budget.execs && start.elapsed() < budget.time {
        let base = pool.choose(&mut rng).expect("pool is not empty");
        let other = pool.choose(&mut rng).expect("pool is not empty");
        let input = mutate(&mut rng, base, other, dict);
        report.execs += 1;
        let began = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        if began.elapsed() > report.slowest.0 {
            report.slowest = (began.elapsed(), input.clone());
        }
        match outcome {
            Ok(class) => {
                if classes.insert(class) {
                    pool.push(input);
                }
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                std::fs::create_dir_all(failures_dir)?;
                let name = format!("crash-{}", &hex::encode(Sha256::digest(&input))[..16]);
                let path = failures_dir.join(name);
                std::fs::write(&path, &input)?;
                report.failures.push((path, message));
            }
        }
    }
    report.elapsed = start.elapsed();
    report.pool = pool.len();
    report.classes = classes.len();
    Ok(report)
}

/// One mutant of `base` (`other` is the splice partner).
pub fn mutate(rng: &mut StdRng, base: &[u8], other: &[u8], dict: &[String]) -> Vec<u8> {
    if rng.random_bool(0.75)
        && let Ok(mut event) = serde_json::from_slice::<Value>(base)
    {
        for _ in 0..rng.random_range(1..=3) {
            mutate_event(rng, &mut event, dict);
        }
        return serde_json::to_vec(&event).unwrap_or_default();
    }
    mutate_bytes(rng, base, other, dict)
}

/// A JSON mutation aimed where the pipeline looks: the JSON-RPC body (a string holding JSON),
/// the headers, or any node of the event.
fn mutate_event(rng: &mut StdRng, event: &mut Value, dict: &[String]) {
    let body = event
        .get("body")
        .and_then(Value::as_str)
        .and_then(|b| serde_json::from_str::<Value>(b).ok());
    match (rng.random_range(0..10), body) {
        (0..=4, Some(mut msg)) => {
            mutate_node(rng, &mut msg, dict);
            let text = serde_json::to_string(&msg).unwrap_or_default();
            if let Some(obj) = event.as_object_mut() {
                // A stale content-length would stop most mutants at the transport check.
                if let Some(h) = obj.get_mut("headers").and_then(Value::as_object_mut)
                    && h.contains_key("content-length")
                {
                    h.insert("content-length".into(), Value::from(text.len().to_string()));
                }
                obj.insert("body".into(), Value::from(text));
            }
        }
        (5..=6, _) if event.get("headers").is_some_and(Value::is_object) => {
            let headers = event
                .get_mut("headers")
                .and_then(Value::as_object_mut)
                .expect("checked");
            mutate_object(rng, headers, dict, true);
        }
        _ => mutate_node(rng, event, dict),
    }
}

/// Changes one node of `value`, chosen by a random walk from the root.
fn mutate_node(rng: &mut StdRng, value: &mut Value, dict: &[String]) {
    let descend = rng.random_bool(0.7);
    match value {
        Value::Object(map) if descend && !map.is_empty() => {
            let key = map
                .keys()
                .nth(rng.random_range(0..map.len()))
                .cloned()
                .expect("in range");
            mutate_node(rng, map.get_mut(&key).expect("present"), dict);
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let i = rng.random_range(0..items.len());
            mutate_node(rng, &mut items[i], dict);
        }
        Value::Object(map) if rng.random_bool(0.5) => mutate_object(rng, map, dict, false),
        Value::String(s) if rng.random_bool(0.5) => mutate_string(rng, s, dict),
        _ => *value = replacement(rng, dict),
    }
}

fn mutate_object(rng: &mut StdRng, map: &mut Map<String, Value>, dict: &[String], strings: bool) {
    let value = |rng: &mut StdRng| {
        if strings {
            Value::from(word(rng, dict))
        } else {
            replacement(rng, dict)
        }
    };
    match rng.random_range(0..4) {
        0 if !map.is_empty() => {
            let key = map.keys().nth(rng.random_range(0..map.len())).cloned();
            if let Some(key) = key {
                map.remove(&key);
            }
        }
        1 if !map.is_empty() => {
            let key = map.keys().nth(rng.random_range(0..map.len())).cloned();
            if let Some(key) = key {
                let v = value(rng);
                map.insert(key, v);
            }
        }
        2 if strings && !map.is_empty() => {
            let key = map.keys().nth(rng.random_range(0..map.len())).cloned();
            if let Some(Value::String(s)) = key.and_then(|k| map.get_mut(&k)) {
                mutate_string(rng, s, dict);
            }
        }
        _ => {
            let key = word(rng, dict).to_ascii_lowercase();
            let v = value(rng);
            map.insert(key, v);
        }
    }
}

fn mutate_string(rng: &mut StdRng, s: &mut String, dict: &[String]) {
    match rng.random_range(0..6) {
        0 => s.clear(),
        1 => {
            let cut = floor_char_boundary(s, rng.random_range(0..=s.len()));
            s.truncate(cut);
        }
        2 => {
            let at = floor_char_boundary(s, rng.random_range(0..=s.len()));
            s.insert_str(at, &word(rng, dict));
        }
        3 if s.len() < 4096 => *s = s.repeat(rng.random_range(2..64)),
        4 => {
            let at = floor_char_boundary(s, rng.random_range(0..=s.len()));
            let odd = [
                "\u{0}", "\r\n", "é", "\u{202e}", "\u{fffd}", "%00", "😀", "\\",
            ];
            s.insert_str(at, odd.choose(rng).expect("not empty"));
        }
        _ => *s = word(rng, dict),
    }
}

/// A value of any JSON type, often at a boundary.
fn replacement(rng: &mut StdRng, dict: &[String]) -> Value {
    match rng.random_range(0..12) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => Value::from(
            *[0i64, -1, 1, i64::MIN, i64::MAX]
                .choose(rng)
                .expect("not empty"),
        ),
        3 => Value::from(u64::MAX),
        4 => serde_json::Number::from_f64(*[1e308, -0.5, 3.5, 1e-300].choose(rng).expect("n"))
            .map_or(Value::Null, Value::Number),
        5 => Value::Array(Vec::new()),
        6 => Value::Object(Map::new()),
        7 => {
            let mut v = Value::from(word(rng, dict));
            for _ in 0..rng.random_range(1..200) {
                v = Value::Array(vec![v]);
            }
            v
        }
        8 => Value::from("A".repeat(rng.random_range(256..20_000))),
        9 => Value::Array(vec![Value::from(word(rng, dict)); rng.random_range(1..4)]),
        _ => Value::from(word(rng, dict)),
    }
}

fn mutate_bytes(rng: &mut StdRng, base: &[u8], other: &[u8], dict: &[String]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let at = rng.random_range(0..=len);
                let w = word(rng, dict);
                out.splice(at..at, w.into_bytes());
            }
            2 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                out.drain(a..b);
            }
            3 => out.truncate(rng.random_range(0..=len)),
            4 if !other.is_empty() => {
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = *[0u8, 0xff, b'"', b'{', b'}', b'\\', 0x7f, 0xc3]
                    .choose(rng)
                    .expect("not empty");
            }
            _ => {}
        }
    }
    out
}

fn word(rng: &mut StdRng, dict: &[String]) -> String {
    dict.choose(rng).cloned().unwrap_or_default()
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_unescapes_its_words() {
        let d = dictionary("# c\n\"\\\"id\\\"\"\n\"Bearer \"\nnot a word\n");
        assert_eq!(d, vec!["\"id\"".to_owned(), "Bearer ".to_owned()]);
    }

    #[test]
    fn the_same_seed_gives_the_same_mutants_and_most_stay_json() {
        let seed = br#"{"headers":{"a":"b"},"body":"{\"jsonrpc\":\"2.0\",\"id\":1}"}"#.to_vec();
        let dict = vec!["tools/call".to_owned()];
        let mutants = |s| {
            let mut rng = StdRng::seed_from_u64(s);
            (0..200)
                .map(|_| mutate(&mut rng, &seed, &seed, &dict))
                .collect::<Vec<_>>()
        };
        assert_eq!(mutants(7), mutants(7));
        let all = mutants(7);
        let distinct: HashSet<_> = all.iter().collect();
        assert!(distinct.len() > 100, "{} distinct", distinct.len());
        let json = all
            .iter()
            .filter(|m| serde_json::from_slice::<Value>(m).is_ok())
            .count();
        assert!(json > 100, "{json} of 200 mutants are JSON");
    }

    #[test]
    fn a_failing_input_is_saved_under_its_digest_and_the_run_goes_on() {
        let dir = std::env::temp_dir().join(format!("fuzz-short-{}", std::process::id()));
        let report = run(
            vec![b"{\"x\":1}".to_vec()],
            &["boom".to_owned()],
            1,
            Budget {
                execs: 300,
                time: Duration::from_secs(600),
            },
            &dir,
            |input| {
                assert!(!input.windows(4).any(|w| w == b"boom"), "found boom");
                "ok".to_owned()
            },
        )
        .expect("run");
        assert_eq!(report.execs, 300);
        assert!(!report.failures.is_empty());
        for (path, message) in &report.failures {
            assert_eq!(message, "found boom");
            let saved = std::fs::read(path).expect("saved");
            let name = format!("crash-{}", &hex::encode(Sha256::digest(&saved))[..16]);
            assert!(path.ends_with(name));
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
