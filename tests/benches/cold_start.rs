//! `make bench`, cold start: every function binary as Lambda starts it.
//!
//! For each function (the gateway and every tool folder), 30 spawns of the release binary as a
//! separate process with a clean environment (only what Lambda sets, plus the function's own
//! configuration as the SAM template gives it), under a Lambda Runtime API on loopback that
//! hands it one unauthenticated call (answered 401 without the store). Timed from `exec` to the
//! first `/next` poll and to the first response posted, p50 / p99:
//!
//! - cold: each spawn runs a fresh copy of the binary whose pages were evicted from the page
//!   cache (`dd iflag=nocache`), as the first start after a deployment package is unpacked;
//! - warm: the same file spawned again, its pages cached.
//!
//! It prints each binary's size (stripped) and, when `strace` is installed, the files one cold
//! start opens before its first poll. `cargo bench -p tollgate-tests --bench cold_start -- NAME`
//! runs only the functions whose names contain NAME. Needs `target/release/<function>` for
//! every function (`make bench` builds them).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};

const SPAWNS: usize = 30;

struct RuntimeApi {
    event: String,
    served: AtomicBool,
    next_at: Mutex<Option<Instant>>,
    response: Mutex<Option<(Instant, u16)>>,
    done: tokio::sync::Notify,
}

async fn next(State(api): State<Arc<RuntimeApi>>) -> (HeaderMap, String) {
    let now = Instant::now();
    if api.served.swap(true, Ordering::AcqRel) {
        // Hold the second poll open: the bench kills the process.
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    api.next_at.lock().expect("lock").get_or_insert(now);
    let mut h = HeaderMap::new();
    let deadline = (std::time::SystemTime::now() + Duration::from_secs(10))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    for (name, value) in [
        ("lambda-runtime-aws-request-id", "bench-1".to_owned()),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:000000000000:function:bench".to_owned(),
        ),
        (
            "lambda-runtime-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".to_owned(),
        ),
    ] {
        h.insert(name, value.parse().expect("header value"));
    }
    (h, api.event.clone())
}

async fn response(State(api): State<Arc<RuntimeApi>>, body: String) -> &'static str {
    let now = Instant::now();
    let status = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["statusCode"].as_u64())
        .unwrap_or(0) as u16;
    api.response
        .lock()
        .expect("lock")
        .get_or_insert((now, status));
    api.done.notify_one();
    "{}"
}

/// The 401 call a function gets: `tools/call` without credentials, on its own route.
fn event_for(function: &str) -> String {
    let path = if function == "gateway" {
        "/mcp".to_owned()
    } else {
        format!("/tools/{function}/mcp")
    };
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{function}","arguments":{{}}}}}}"#
    );
    let event = tollgate::http::event_from_parts(
        "POST",
        &path,
        [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        Some(body.as_bytes()),
        "bench-1",
        "198.51.100.7",
    );
    serde_json::to_string(&event).expect("event")
}

/// Lambda's own variables (the X-Ray daemon on loopback rather than its link-local address),
/// and the function's configuration as the SAM template sets it. Nothing else.
fn lambda_env(function: &str, runtime_api: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api),
        ("AWS_LAMBDA_FUNCTION_NAME", function),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench"),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/30/[$LATEST]bench"),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"),
        ("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "ASIABENCHBENCHBENCH0"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_SESSION_TOKEN", "bench"),
        ("AWS_XRAY_DAEMON_ADDRESS", "127.0.0.1:2000"),
        ("AWS_XRAY_CONTEXT_MISSING", "LOG_ERROR"),
        ("LAMBDA_TASK_ROOT", "/var/task"),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime"),
        ("LANG", "en_US.UTF-8"),
        ("TZ", ":UTC"),
        ("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin"),
        ("_HANDLER", "bootstrap"),
        ("TOLLGATE_TABLE", "tollgate"),
        ("TOLLGATE_SERVICE", "tollgate"),
        (
            "TOLLGATE_RESOURCE_URL",
            "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/mcp",
        ),
        ("TOLLGATE_AUTH_METHODS", "api_key"),
        (
            "TOLLGATE_HASH_KEY_SECRET",
            "arn:aws:secretsmanager:us-east-1:000000000000:secret:tollgate-hash-key",
        ),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    if function == "gateway" {
        env.push(("TOLLGATE_FUNCTION_PREFIX".into(), "tollgate-".into()));
    }
    env
}

struct Spawn {
    first_poll: Duration,
    first_response: Duration,
    status: u16,
}

/// One start of `binary` under a fresh Runtime API, until its first response.
async fn spawn_once(function: &str, binary: &Path) -> anyhow::Result<Spawn> {
    let api = Arc::new(RuntimeApi {
        event: event_for(function),
        served: AtomicBool::new(false),
        next_at: Mutex::new(None),
        response: Mutex::new(None),
        done: tokio::sync::Notify::new(),
    });
    let app = axum::Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut command = tokio::process::Command::new(binary);
    command
        .env_clear()
        .envs(lambda_env(function, &addr.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let start = Instant::now();
    let mut child = command.spawn()?;
    let done = tokio::time::timeout(Duration::from_secs(20), api.done.notified()).await;
    child.kill().await?;
    server.abort();
    anyhow::ensure!(done.is_ok(), "{function}: no response within 20 s");
    let next_at = (*api.next_at.lock().expect("lock"))
        .ok_or_else(|| anyhow::anyhow!("{function}: no /next"))?;
    let (resp_at, status) = (*api.response.lock().expect("lock"))
        .ok_or_else(|| anyhow::anyhow!("{function}: no response"))?;
    Ok(Spawn {
        first_poll: next_at - start,
        first_response: resp_at - start,
        status,
    })
}

/// A fresh copy of `binary` (a new file, as after unpacking a deployment package), written
/// out and evicted from the page cache.
fn cold_copy(binary: &Path, dir: &Path, n: usize) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = binary.file_name().expect("file name").to_string_lossy();
    let copy = dir.join(format!("{name}.{n}"));
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(binary, &copy)?;
    let f = std::fs::File::open(&copy)?;
    f.sync_all()?;
    drop(f);
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    // GNU dd: `count=0` with `iflag=nocache` drops the whole file from the page cache.
    let status = std::process::Command::new("dd")
        .arg(format!("if={}", copy.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()?;
    anyhow::ensure!(status.success(), "dd iflag=nocache failed");
    Ok(copy)
}

/// Resident bytes of `path` in the page cache (`fincore`), when the tool is there.
fn resident(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

struct Row {
    polls: Vec<Duration>,
    responses: Vec<Duration>,
}

impl Row {
    fn summary(mut self) -> String {
        self.polls.sort();
        self.responses.sort();
        format!(
            "p50 {:>5} p99 {:>5} ms | p50 {:>5} p99 {:>5} ms",
            ms(percentile(&self.polls, 0.5)),
            ms(percentile(&self.polls, 0.99)),
            ms(percentile(&self.responses, 0.5)),
            ms(percentile(&self.responses, 0.99)),
        )
    }
}

async fn measure(
    function: &str,
    binary: &Path,
    dir: &Path,
) -> anyhow::Result<(String, String, Option<u64>)> {
    let mut cold = Row {
        polls: Vec::new(),
        responses: Vec::new(),
    };
    let mut left_resident = None;
    for n in 0..SPAWNS {
        let copy = cold_copy(binary, dir, n)?;
        if n == 0 {
            left_resident = resident(&copy);
        }
        let s = spawn_once(function, &copy).await?;
        anyhow::ensure!(s.status == 401, "{function}: answered {} not 401", s.status);
        cold.polls.push(s.first_poll);
        cold.responses.push(s.first_response);
        std::fs::remove_file(&copy)?;
    }
    let mut warm = Row {
        polls: Vec::new(),
        responses: Vec::new(),
    };
    spawn_once(function, binary).await?;
    for _ in 0..SPAWNS {
        let s = spawn_once(function, binary).await?;
        warm.polls.push(s.first_poll);
        warm.responses.push(s.first_response);
    }
    Ok((cold.summary(), warm.summary(), left_resident))
}

/// Files one cold start opens before its first poll, from `strace` (None when not installed).
async fn opens_at_init(function: &str, binary: &Path, dir: &Path) -> Option<Vec<String>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    let port = listener.local_addr().ok()?.port();
    let trace = dir.join(format!("{function}.strace"));
    // Nothing answers on this port after the connect: the trace ends at the first poll.
    let mut child = tokio::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=open,openat,connect", "-o"])
        .arg(&trace)
        .arg(binary)
        .env_clear()
        .envs(lambda_env(function, &format!("127.0.0.1:{port}")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let accepted = tokio::task::spawn_blocking(move || listener.accept().map(|_| ()));
    let _ = tokio::time::timeout(Duration::from_secs(20), accepted).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = child.kill().await;
    let text = std::fs::read_to_string(&trace).ok()?;
    let _ = std::fs::remove_file(&trace);
    let marker = format!("sin_port=htons({port})");
    let mut opened = Vec::new();
    for line in text.lines() {
        if line.contains("connect(") && line.contains(&marker) {
            return Some(opened);
        }
        if (line.contains("openat(") || line.contains("open("))
            && !line.contains("= -1")
            && let Some(path) = line.split('"').nth(1)
        {
            opened.push(path.to_owned());
        }
    }
    Some(opened)
}

fn functions(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("functions"))? {
        let entry = entry?;
        if entry.path().join("Cargo.toml").exists() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets too: only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("cold_start bench: run with `make bench`");
        return Ok(());
    }
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/bench/cold");
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "cold start, {SPAWNS} spawns per row, clean Lambda environment, Runtime API on loopback, \
         a 401 call; {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    eprintln!(
        "{:<16} {:>8}  {:<5} {:<25} | {:<25}",
        "function", "size MB", "mode", "exec -> first poll", "exec -> first response"
    );
    let mut opens = Vec::new();
    for function in functions(&root)?
        .into_iter()
        .filter(|f| f.contains(&filter))
    {
        let binary = root.join("target/release").join(&function);
        anyhow::ensure!(
            binary.exists(),
            "build it first: cargo build --release --bin {function}"
        );
        let size = std::fs::metadata(&binary)?.len();
        let (cold, warm, left) = measure(&function, &binary, &dir).await?;
        let mb = format!("{:.2}", size as f64 / 1_000_000.0);
        eprintln!("{function:<16} {mb:>8}  cold  {cold}");
        eprintln!("{:<16} {:>8}  warm  {warm}", "", "");
        if let Some(bytes) = left.filter(|b| *b > 0) {
            eprintln!("  (page cache kept {bytes} bytes of the cold copies: not fully cold)");
        }
        opens.push((
            function.clone(),
            opens_at_init(&function, &binary, &dir).await,
        ));
    }
    for (function, opened) in opens {
        match opened {
            None => eprintln!("{function}: files opened at init: strace not installed"),
            Some(paths) => eprintln!(
                "{function}: {} files opened before the first poll: {}",
                paths.len(),
                paths.join(" ")
            ),
        }
    }
    Ok(())
}
