//! The shared crate's modules form one-way layers (docs/ARCHITECTURE.md, "Layers"): a module
//! uses only modules of lower layers and its own folder. This test reads every source file of
//! `shared/src` and checks each `crate::` path against the table below; a new module must be
//! placed in the table before it builds.
//!
//! Test code (`tests.rs` files and `#[cfg(test)] mod tests` blocks) composes layers freely: a
//! unit test may build a server to exercise an authenticator. Comments are not code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, lowest first. Keep in step with `shared/src/lib.rs` and docs/ARCHITECTURE.md.
const LAYERS: &[&[&str]] = &[
    &["aws", "config", "http", "protocol", "store", "tls"],
    &["auth", "telemetry"],
    &["error", "tool"],
    &["budget", "catalog", "connect", "idempotency", "task"],
    &["audit"],
    &["server"],
    &["admin", "lambda"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`auth/oauth.rs` -> `auth`, `catalog.rs` ->
/// `catalog`); `None` for the crate root.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_owned())
}

/// Items the crate root re-exports (`pub use server::{Invocation, Server};`), by item name:
/// `crate::Server` is a use of `server`.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            let item = item.trim();
            if !item.is_empty() {
                map.insert(item.to_owned(), module.trim().to_owned());
            }
        }
    }
    map
}

/// The code of a line: the part before a `//` comment.
fn code_of(line: &str) -> &str {
    line.split_once("//").map_or(line, |(code, _)| code)
}

/// Identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every module a piece of code names through `crate::`: `crate::x::...`, `crate::Item` (a
/// root re-export) and each top-level name in `use crate::{a::..., b::...}`.
fn modules_named(code: &str, reexports: &BTreeMap<String, String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level names of a group: split at commas outside nested braces.
            let mut depth = 0;
            let mut start = 0;
            let bytes: Vec<char> = group.chars().collect();
            let mut names = Vec::new();
            for (k, c) in bytes.iter().enumerate() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        names.push(bytes[start..k].iter().collect::<String>());
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(bytes[start..k].iter().collect::<String>());
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            for n in names {
                let n = ident(n.trim());
                if !n.is_empty() {
                    found.push(reexports.get(n).cloned().unwrap_or_else(|| n.to_owned()));
                }
            }
        } else {
            let n = ident(after);
            found.push(reexports.get(n).cloned().unwrap_or_else(|| n.to_owned()));
        }
        rest = after;
    }
    found
}

/// The file's lines outside test code, numbered from 1, joined per statement where a `use`
/// group spans lines.
fn production_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    let mut pending: Option<(usize, String)> = None;
    while let Some((n, line)) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|(_, next)| next.trim_start().starts_with("mod tests"))
        {
            // Skip the test module: `mod tests;` or its braced block.
            let mut depth = 0usize;
            for (_, l) in lines.by_ref() {
                let code = code_of(l);
                depth += code.matches('{').count();
                depth = depth.saturating_sub(code.matches('}').count());
                if depth == 0 && (code.contains('}') || code.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        let code = code_of(line);
        if let Some((start, mut acc)) = pending.take() {
            acc.push(' ');
            acc.push_str(code.trim());
            if code.contains(';') {
                out.push((start, acc));
            } else {
                pending = Some((start, acc));
            }
            continue;
        }
        let trimmed = code.trim_start();
        let is_use = trimmed.starts_with("use ") || trimmed.starts_with("pub use ");
        if is_use && !code.contains(';') {
            pending = Some((n + 1, code.trim().to_owned()));
        } else {
            out.push((n + 1, code.to_owned()));
        }
    }
    out
}

#[test]
fn shared_crate_modules_use_only_lower_layers() {
    let src = src_dir();
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        src.display()
    );

    let mut violations = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(&src).expect("under src");
        let Some(module) = module_of(rel) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            violations.push(format!(
                "shared/src/{}: module `{module}` is in no layer of tests/tests/layers.rs",
                rel.display()
            ));
            continue;
        };
        if rel.file_name().is_some_and(|f| f == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("readable source");
        for (n, code) in production_lines(&text) {
            for used in modules_named(&code, &reexports) {
                if used == module {
                    continue;
                }
                match layer_of(&used) {
                    Some(l) if l < own => {}
                    Some(l) => violations.push(format!(
                        "shared/src/{}:{n}: `{module}` (L{own}) uses `{used}` (L{l}): {}",
                        rel.display(),
                        code.trim()
                    )),
                    None => violations.push(format!(
                        "shared/src/{}:{n}: `{module}` uses `crate::{used}`, which is in no layer: {}",
                        rel.display(),
                        code.trim()
                    )),
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layer table:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_module_of_the_crate_root_is_in_the_table() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs");
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').trim())
        .filter(|m| !m.contains(' ') && !m.contains('{'))
        .collect();
    assert!(declared.len() >= 15, "declared modules: {declared:?}");
    for m in &declared {
        assert!(layer_of(m).is_some(), "module `{m}` is in no layer");
    }
    for layer in LAYERS {
        for m in *layer {
            assert!(
                declared.contains(m),
                "the table names `{m}`, which lib.rs does not declare"
            );
        }
    }
}

#[test]
fn the_checker_finds_what_it_must() {
    let reexports = root_reexports("pub use server::{Invocation, Server};");
    assert_eq!(
        modules_named("use crate::server::Server;", &reexports),
        ["server"]
    );
    assert_eq!(
        modules_named(
            "use crate::{auth::Principal, store::{Store, now_ms}};",
            &reexports
        ),
        ["auth", "store"]
    );
    assert_eq!(
        modules_named(
            "let s: Weak<crate::Server> = x(crate::http::origin_of(u));",
            &reexports
        ),
        ["server", "http"]
    );
    let lines = production_lines(
        "use crate::{\n    a::X,\n    b::Y,\n};\nfn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::z;\n    fn g() {\n    }\n}\nuse crate::after;\n",
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(modules_named(&lines[2].1, &reexports), ["after"]);
    assert_eq!(modules_named(&lines[0].1, &reexports), ["a", "b"]);
    assert_eq!(code_of("let x = 1; // crate::server"), "let x = 1; ");
}
