//! Every API Gateway event fixture in `events/` through the real handler, snapshotted.
//!
//! For each `events/<function>.<case>.json`:
//! 1. the event must survive a parse -> serialize -> reparse round trip through
//!    `aws_lambda_events`' `ApiGatewayV2httpRequest`, and look like what API Gateway sends
//!    (lowercase header names, matching route and path, a correct `content-length`);
//! 2. it is handed to `tollgate::Server::respond` of that function (the gateway forwards
//!    `tools/call` in-process to the tool servers, as the local stack does);
//! 3. the response must meet the contract in `EXPECTED` and the general rules in
//!    [`check_contract`] (README "Error contract", the MCP transport rules);
//! 4. status, headers, body and the audit records it produced are snapshotted with insta in
//!    `tests/tests/snapshots/fixtures__<function>.<case>.snap`.
//!
//! Each fixture gets fresh servers built as `tollgate::lambda::build_server` builds them, over
//! a fresh in-memory store seeded by `tollgate_tests::fixtures::seed` and in-memory budget
//! buckets on a fixed clock (every store and budget behaviour is covered against a real
//! DynamoDB-protocol server by the end-to-end tests), so no fixture depends on another. The
//! tools run for real: a single-threaded moto server holds the app table and the local carrier
//! API answers `track_shipment`. A fixture whose case ends in `-over-budget` or `-replay` is
//! sent twice and its second answer checked: the first spends the budget, or runs the keyed
//! call the second replays. The idempotency fixtures whose answer depends on an earlier call
//! (`-idempotency-in-progress`, `-idempotency-key-reused`) get that call's record written into
//! the tollgate table (on moto) just before they are served.
//!
//! Tools read their configuration from the environment when they are built, and Rust 2024
//! forbids `set_var` without `unsafe`, so the test runs in two processes: the outer one starts
//! moto and the carrier API, then re-runs this same test binary with `TRACK_SHIPMENT_API_URL`,
//! `TOLLGATE_APP_TABLE` and the moto URL set; the inner one serves the fixtures.
//!
//! Two deployments: events whose `requestContext.apiId` is `local` were built by the local
//! stack's front door and are served with a loopback resource URL (DNS-rebinding rules on);
//! every other event is served as on AWS, with `TOLLGATE_RESOURCE_URL` on the fixture API.
//! The body limit is lowered to 8 KiB so the oversized-body fixture stays small.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use serde_json::{Value, json};
use tollgate::audit::{AuditSink, MemorySink};
use tollgate::auth::Authenticator;
use tollgate::budget::buckets::MemoryBuckets;
use tollgate::budget::{AgentDefaults, Budgets};
use tollgate::server::{Dispatch, Invocation, ServerIdentity};
use tollgate::store::{MemoryStore, Store};
use tollgate::tool::Clients;
use tollgate::{Catalog, Config, Server};

/// This test's name, for re-running it in the inner process.
const TEST_NAME: &str = "every_fixture_matches_the_contract_and_its_snapshot";
/// Set in the inner process.
const INNER: &str = "TOLLGATE_FIXTURES_INNER";
/// The moto endpoint, passed to the inner process (its DynamoDB client is configured
/// explicitly from it, not from the SDK's environment variables).
const DYNAMODB_URL: &str = "TOLLGATE_FIXTURES_DYNAMODB_URL";
/// The app table the example tools read.
const APP_TABLE: &str = "tollgate-app";
/// The Lambda request id every fixture is invoked with.
const INVOCATION_ID: &str = "8a1e9f04-5f2b-4c37-9d0e-6b7c2f1a3e55";
/// Canonical resource URL of the fixture API (`a1b2c3d4e5` is the fixtures' API id).
const AWS_RESOURCE_URL: &str = "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/mcp";
/// Resource URL of the local stack.
const LOCAL_RESOURCE_URL: &str = "http://127.0.0.1:9000/mcp";
/// Lowered body limit (bytes); `events/gateway.body-too-large.json` is just over it.
const MAX_BODY_BYTES: &str = "8192";
/// The budgets' clock: the fixtures' `timeEpoch` (2026-11-26T07:00:00Z), so `RateLimit` and
/// `Retry-After` values never vary.
const BUDGET_CLOCK_MS: u64 = 1_795_676_400_000;
/// Fixtures whose case ends with one of these are sent twice; the second response is the one
/// checked and snapshotted (a budget is spent, or a keyed call run, by the first).
const SENT_TWICE_SUFFIXES: &[&str] = &["-over-budget", "-replay", "-replay-2026-07-28"];
/// The agent of the fixtures' full-access key.
const FULL_AGENT: &str = "fixture-full";

#[test]
fn every_fixture_matches_the_contract_and_its_snapshot() -> anyhow::Result<()> {
    if std::env::var_os(INNER).is_some() {
        return inner();
    }
    outer()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

// ---------------------------------------------------------------------------------------------
// Outer process: moto, the carrier API, then this test again with the tools' environment.

/// A child process killed (by its own pid) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `GET /moto-api/` answers.
fn wait_for_moto(port: u16, moto: &mut Child) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let _ = s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                return Ok(());
            }
        }
        if let Some(status) = moto.try_wait()? {
            bail!("moto exited early ({status}); see target/fixtures-moto.log");
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "moto did not start within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn outer() -> anyhow::Result<()> {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    ensure!(
        python.exists(),
        "{} is missing: run `make tools-venv` (moto for the app table)",
        python.display()
    );
    let started = Instant::now();
    let port = free_port()?;
    std::fs::create_dir_all(root.join("target"))?;
    let log = std::fs::File::create(root.join("target/fixtures-moto.log"))?;
    let mut moto = Command::new(&python)
        .arg(root.join("tests/stack/moto_server.py"))
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start moto")?;
    wait_for_moto(port, &mut moto)?;
    let _moto = Killed(moto);
    eprintln!(
        "fixtures: moto ready on port {port} after {:?}",
        started.elapsed()
    );

    // The carrier API, served from a thread of its own for as long as this process lives.
    let carrier = std::net::TcpListener::bind("127.0.0.1:0")?;
    carrier.set_nonblocking(true)?;
    let carrier_url = format!("http://{}", carrier.local_addr()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(carrier) {
                let _ = axum::serve(listener, tollgate_tests::carrier::app()).await;
            }
        });
    });

    let inner = Command::new(std::env::current_exe()?)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .env(DYNAMODB_URL, format!("http://127.0.0.1:{port}"))
        .env("TRACK_SHIPMENT_API_URL", &carrier_url)
        .env("TOLLGATE_APP_TABLE", APP_TABLE)
        // A task run started by a fixture outlives the test: no end record lands in another
        // fixture's audit slice.
        .env("EXPORT_TICKETS_DURATION_MS", "600000")
        .stdin(Stdio::null())
        .output()
        .context("re-run the test with the tools' environment")?;
    // Through the test harness's capture: shown when the test fails (or with --nocapture).
    print!("{}", String::from_utf8_lossy(&inner.stdout));
    eprint!("{}", String::from_utf8_lossy(&inner.stderr));
    eprintln!("fixtures: done in {:?}", started.elapsed());
    ensure!(
        inner.status.success(),
        "the fixture run failed ({}); see its output above",
        inner.status
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inner process: servers, fixtures, contract checks, snapshots.

/// One deployment's servers: the gateway and each tool's own function.
struct Deployment {
    gateway: Server,
    tools: HashMap<String, Arc<Server>>,
}

fn identity(function: &str) -> ServerIdentity {
    ServerIdentity {
        function: function.to_owned(),
        name: "tollgate".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Clients for one deployment: its configuration, moto for DynamoDB, a real HTTP client.
fn clients(sdk: &aws_config::SdkConfig, resource_url: &str) -> anyhow::Result<Arc<Clients>> {
    let vars = HashMap::from([
        ("TOLLGATE_RESOURCE_URL", resource_url.to_owned()),
        ("TOLLGATE_MAX_BODY_BYTES", MAX_BODY_BYTES.to_owned()),
        // Keys, and client certificates from API Gateway mutual TLS (custom domains).
        ("TOLLGATE_AUTH_METHODS", "api_key,mtls".to_owned()),
        // A provider for account_profile: its connect answers (no provider is ever called).
        ("TOLLGATE_PROVIDERS", "demo_account".to_owned()),
        (
            "TOLLGATE_PROVIDER_DEMO_ACCOUNT_AUTHORIZE_URL",
            "https://accounts.example/authorize".to_owned(),
        ),
        (
            "TOLLGATE_PROVIDER_DEMO_ACCOUNT_TOKEN_URL",
            "https://accounts.example/token".to_owned(),
        ),
        (
            "TOLLGATE_PROVIDER_DEMO_ACCOUNT_CLIENT_ID",
            "tollgate".to_owned(),
        ),
        (
            "TOLLGATE_PROVIDER_DEMO_ACCOUNT_CLIENT_SECRET",
            "tollgate/demo-account-client-secret".to_owned(),
        ),
        ("TOLLGATE_VAULT_KMS_KEY", "alias/tollgate-vault".to_owned()),
    ]);
    let config = Arc::new(Config::from_lookup(|k| vars.get(k).cloned())?);
    Ok(Arc::new(tollgate::lambda::build_clients(sdk, config)?))
}

/// Fresh servers over a freshly seeded store, so no fixture sees another's cached keys or
/// spent budget.
async fn deployment(
    catalog: &Catalog,
    clients: &Arc<Clients>,
    audit: &Arc<dyn AuditSink>,
) -> anyhow::Result<Deployment> {
    let memory = Arc::new(MemoryStore::new());
    tollgate_tests::fixtures::seed(memory.as_ref()).await?;
    let store: Arc<dyn Store> = memory;
    let config = &clients.config;
    let auth = || {
        Authenticator::new(store.clone(), config.key_cache_ttl).with_config(
            &config.auth,
            None,
            config.resource_url.as_deref(),
        )
    };
    let mut tools = HashMap::new();
    let starter = tollgate::server::in_process::InProcessStarter::new(Duration::from_secs(900));
    for tool in catalog.iter() {
        let name = tool.spec().name;
        let own = catalog
            .only(name)
            .context("tool vanished from the catalog")?;
        let runs_tasks = tool.task_support() != tollgate::task::TaskSupport::Forbidden;
        // As `tollgate::lambda::build_server`: tool functions enforce the budgets (here on
        // in-memory buckets and a fixed clock), the gateway leaves them to the tools.
        let defaults = AgentDefaults {
            per_minute: config.agent_per_minute,
            per_day: config.agent_per_day,
        };
        let budgets = Budgets::new(
            Arc::new(MemoryBuckets::default()),
            store.clone(),
            defaults,
            config.budget_timeout,
            config.policy_cache_ttl,
        )
        .with_clock(Arc::new(|| BUDGET_CLOCK_MS));
        let server = Server::new(
            own,
            Dispatch::Local,
            auth(),
            clients.clone(),
            audit.clone(),
            None,
            identity(name),
        )
        .with_budgets(Arc::new(budgets));
        let server = match tollgate::connect::Connections::new(
            clients.as_ref(),
            clients.kms.clone(),
            config.connect.clone(),
        ) {
            Some(c) => server.with_connections(Arc::new(c)),
            None => server,
        };
        let server = if runs_tasks {
            server.with_task_starter(starter.clone())
        } else {
            server
        };
        tools.insert(name.to_owned(), Arc::new(server));
    }
    starter.set_servers(&tools);
    let invoker = tollgate::server::in_process::InProcessInvoker::new(tools.clone());
    let gateway = Server::new(
        catalog.clone(),
        Dispatch::Forward(Arc::new(invoker)),
        auth(),
        clients.clone(),
        audit.clone(),
        None,
        identity("gateway"),
    );
    Ok(Deployment { gateway, tools })
}

/// An SDK configuration for moto: explicit endpoint, region and static credentials.
fn moto_sdk(url: &str) -> aws_config::SdkConfig {
    use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "fixtures", "fixtures", None, None, "static",
        )))
        .build()
}

struct Outcome {
    name: String,
    request: Value,
    snapshot: Value,
}

fn inner() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcomes = runtime.block_on(run_fixtures())?;
    let mut failures = Vec::new();
    for o in &outcomes {
        let snapshot = || {
            insta::with_settings!({
                description => format!("events/{}.json", o.name),
                info => &o.request,
                omit_expression => true,
                prepend_module_to_snapshot => true,
            }, {
                insta::assert_json_snapshot!(o.name.as_str(), &o.snapshot, {
                    ".audit[].timestamp" => "[timestamp]",
                    ".audit[].latency_ms" => "[latency_ms]",
                    ".audit[].cold_start" => "[cold_start]",
                });
            });
        };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(snapshot)).is_err() {
            failures.push(o.name.clone());
        }
    }
    ensure!(
        failures.is_empty(),
        "snapshots differ for: {}",
        failures.join(", ")
    );
    eprintln!(
        "fixtures: {} fixtures match the contract and their snapshots",
        outcomes.len()
    );
    Ok(())
}

async fn run_fixtures() -> anyhow::Result<Vec<Outcome>> {
    let started = Instant::now();
    let url = std::env::var(DYNAMODB_URL).context(DYNAMODB_URL)?;
    let sdk = moto_sdk(&url);
    let db = aws_sdk_dynamodb::Client::new(&sdk);
    tollgate_tests::devstack::create_app_table(&db, APP_TABLE).await?;
    tollgate_tests::devstack::seed_customers(&db, APP_TABLE).await?;
    // Idempotency records live in the tollgate table (the default name).
    tollgate::store::DynamoStore::new(db.clone(), "tollgate")
        .create_table()
        .await?;

    let sink = Arc::new(MemorySink::default());
    let audit: Arc<dyn AuditSink> = sink.clone();
    let catalog = gateway::catalog()?;
    let aws = clients(&sdk, AWS_RESOURCE_URL)?;
    let local = clients(&sdk, LOCAL_RESOURCE_URL)?;
    eprintln!("fixtures: stack ready after {:?}", started.elapsed());

    let dir = repo_root().join("events");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let names: Vec<String> = files.iter().filter_map(|p| fixture_name(p)).collect();
    let mut missing: Vec<&str> = names
        .iter()
        .filter(|n| !EXPECTED.iter().any(|(e, ..)| e == n))
        .map(String::as_str)
        .collect();
    missing.extend(
        EXPECTED
            .iter()
            .map(|(e, ..)| *e)
            .filter(|e| !names.iter().any(|n| n == e)),
    );
    ensure!(
        missing.is_empty(),
        "fixtures and EXPECTED disagree on: {missing:?}"
    );

    let mut outcomes = Vec::new();
    let mut violations = Vec::new();
    let mut fixed = Vec::new();
    for path in &files {
        let name = fixture_name(path).context("fixture name")?;
        let text = std::fs::read_to_string(path)?;
        let event = round_trip(&name, &text)?;
        lint_event(&name, &event, &text)?;
        let function = name.split('.').next().unwrap_or_default();
        let clients = if event.request_context.apiid.as_deref() == Some("local") {
            &local
        } else {
            &aws
        };
        let deployment = deployment(&catalog, clients, &audit).await?;
        let server = match function {
            "gateway" => &deployment.gateway,
            tool => deployment
                .tools
                .get(tool)
                .map(Arc::as_ref)
                .with_context(|| format!("{name}: no function {tool}"))?,
        };
        let inv = Invocation::new(INVOCATION_ID, Duration::from_secs(10));
        seed_idempotency(&db, &name, &event).await?;
        let mut first_body = None;
        if SENT_TWICE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            let first = server.respond(&event, &inv).await;
            ensure!(
                first.status == 200,
                "{name}: the first of two calls got HTTP {}",
                first.status
            );
            first_body = first.body.clone();
        }
        let audit_before = sink.records().len();
        let t = Instant::now();
        let resp = server.respond(&event, &inv).await;
        let elapsed = t.elapsed();
        if name.contains("-replay")
            && let (Some(first), Some(again)) = (&first_body, &resp.body)
        {
            // A replay answers with the stored outcome of the call that ran (its ticket id and
            // fields), never with fields re-derived from the retry.
            let content = |b: &str| -> anyhow::Result<Value> {
                Ok(serde_json::from_str::<Value>(b)?["result"]["structuredContent"].clone())
            };
            let (stored, replayed) = (content(first)?, content(again)?);
            ensure!(
                !stored.is_null() && stored == replayed,
                "{name}: the replay answered {replayed} instead of the stored {stored}"
            );
        }
        let audit: Vec<Value> = sink.records()[audit_before..]
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        let request = request_body(&event);
        let snapshot = normalise(json!({
            "status": resp.status,
            "headers": headers(&resp.headers),
            "body": resp.body.as_deref().map(|b| serde_json::from_str(b).unwrap_or_else(|_| json!(b))),
            "audit": audit,
        }));
        eprintln!("fixtures: {name}: {} in {elapsed:?}", resp.status);
        let known = KNOWN_VIOLATIONS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, why)| *why);
        match (check_contract(&name, &request, &resp, &snapshot), known) {
            (Ok(()), None) => outcomes.push(Outcome {
                name,
                request,
                snapshot,
            }),
            (Ok(()), Some(_)) => fixed.push(name),
            (Err(problems), Some(why)) => {
                eprintln!(
                    "fixtures: {name}: KNOWN CONTRACT VIOLATION, not snapshotted: {why}\n  - {}",
                    problems.join("\n  - ")
                );
            }
            (Err(problems), None) => {
                violations.push(format!("{name}:\n  - {}", problems.join("\n  - ")))
            }
        }
    }
    ensure!(
        violations.is_empty(),
        "contract violations:\n{}",
        violations.join("\n")
    );
    ensure!(
        fixed.is_empty(),
        "these fixtures now meet the contract: remove them from KNOWN_VIOLATIONS, then review \
         and accept their new snapshots: {fixed:?}"
    );
    eprintln!(
        "fixtures: {} fixtures served in {:?}",
        outcomes.len(),
        started.elapsed()
    );
    Ok(outcomes)
}

/// Writes the record an earlier call would have left, for the fixtures that answer from one:
/// a call still running (its lease ends 30.9 s from now, so `Retry-After` is 31), or a
/// completed call with other arguments.
async fn seed_idempotency(
    db: &aws_sdk_dynamodb::Client,
    name: &str,
    event: &ApiGatewayV2httpRequest,
) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    let in_progress = name.ends_with("-idempotency-in-progress");
    if !in_progress && !name.ends_with("-idempotency-key-reused") {
        return Ok(());
    }
    let body = request_body(event);
    let tool = body["params"]["name"].as_str().context("tool name")?;
    let key = event
        .headers
        .get(tollgate::idempotency::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned())
        .context("idempotency-key header")?;
    let now = tollgate::store::now_ms();
    let n = |v: u64| A::N(v.to_string());
    let mut put = db
        .put_item()
        .table_name("tollgate")
        .item(
            "pk",
            A::S(tollgate::idempotency::Ledger::record_key(
                FULL_AGENT, tool, &key,
            )),
        )
        .item("sk", A::S("IDEM".into()))
        .item("kind", A::S("idempotency".into()))
        .item("owner", A::S("0b6f2d7e-earlier-call".into()))
        .item(tollgate::store::TTL_ATTRIBUTE, n(now / 1000 + 86_400));
    put = if in_progress {
        put.item("state", A::S("in_progress".into()))
            .item(
                "args_hash",
                A::S(tollgate::idempotency::arguments_hash(
                    &body["params"]["arguments"],
                )),
            )
            .item("lease_until_ms", n(now + 30_900))
    } else {
        put.item("state", A::S("complete".into()))
            .item(
                "args_hash",
                A::S(tollgate::idempotency::arguments_hash(
                    &json!({"other": "arguments"}),
                )),
            )
            .item("outcome", A::S(r#"{"content":[]}"#.into()))
            .item("outcome_status", A::S("success".into()))
            .item("completed_at_ms", n(now))
    };
    put.send().await?;
    Ok(())
}

/// Ticket ids are random: `T-` and 16 hex digits become `T-[ticket-id]` in snapshots.
/// Connect links carry a random id: `…/connect/start?id=<43 characters>` -> `…?id=[link-id]`.
fn mask_connect_links(s: &str) -> String {
    const MARK: &str = "/connect/start?id=";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i + MARK.len()]);
        rest = &rest[i + MARK.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(rest.len());
        out.push_str("[link-id]");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn mask_ticket_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("T-") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let hex = after
            .bytes()
            .take_while(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            .count();
        if hex == 16 {
            out.push_str("T-[ticket-id]");
            rest = &after[16..];
        } else {
            out.push_str("T-");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn fixture_name(path: &Path) -> Option<String> {
    path.file_stem().and_then(|s| s.to_str()).map(str::to_owned)
}

/// Parse -> serialize -> reparse: the fixture means the same thing after a trip through the
/// event type (what the Lambda runtime and the gateway's forward both do).
fn round_trip(name: &str, text: &str) -> anyhow::Result<ApiGatewayV2httpRequest> {
    let event: ApiGatewayV2httpRequest = serde_json::from_str(text)
        .with_context(|| format!("{name}: not an API Gateway v2 event"))?;
    let serialized = serde_json::to_string(&event)?;
    let reparsed: ApiGatewayV2httpRequest = serde_json::from_str(&serialized)?;
    ensure!(
        event == reparsed,
        "{name}: the event changes in a serialize/reparse round trip"
    );
    ensure!(
        serde_json::to_value(&reparsed)? == serde_json::to_value(&event)?,
        "{name}: the event serializes differently after a round trip"
    );
    Ok(event)
}

/// The fixture is shaped like what API Gateway sends for the route its file name names.
fn lint_event(name: &str, event: &ApiGatewayV2httpRequest, text: &str) -> anyhow::Result<()> {
    let raw: Value = serde_json::from_str(text)?;
    ensure!(raw["version"] == "2.0", "{name}: version must be \"2.0\"");
    for field in [
        "routeKey",
        "rawPath",
        "rawQueryString",
        "headers",
        "requestContext",
        "isBase64Encoded",
    ] {
        ensure!(raw.get(field).is_some(), "{name}: {field} missing");
    }
    let ctx = &raw["requestContext"];
    for field in [
        "accountId",
        "apiId",
        "domainName",
        "http",
        "requestId",
        "routeKey",
        "stage",
        "time",
        "timeEpoch",
    ] {
        ensure!(
            ctx.get(field).is_some(),
            "{name}: requestContext.{field} missing"
        );
    }
    for field in ["method", "path", "protocol", "sourceIp", "userAgent"] {
        ensure!(
            ctx["http"].get(field).is_some(),
            "{name}: requestContext.http.{field} missing"
        );
    }
    if let Some(headers) = raw["headers"].as_object() {
        for k in headers.keys() {
            ensure!(
                *k == k.to_ascii_lowercase(),
                "{name}: header {k} is not lowercase"
            );
        }
    }
    let function = name.split('.').next().unwrap_or_default();
    let mcp_path = if function == "gateway" {
        "/mcp".to_owned()
    } else {
        format!("/tools/{function}/mcp")
    };
    let method = event.request_context.http.method.as_str();
    // RFC 9728 metadata is served at the well-known prefix followed by the MCP path, on the
    // API's `{proxy+}` route.
    let (path, route) = if name.ends_with(".protected-resource-metadata") {
        (
            format!("{}{mcp_path}", tollgate::server::WELL_KNOWN_PRM),
            format!("{method} {}/{{proxy+}}", tollgate::server::WELL_KNOWN_PRM),
        )
    } else {
        (mcp_path.clone(), format!("{method} {mcp_path}"))
    };
    ensure!(
        event.raw_path.as_deref() == Some(path.as_str()),
        "{name}: rawPath must be {path}"
    );
    ensure!(
        event.request_context.http.path.as_deref() == Some(path.as_str()),
        "{name}: http.path must be {path}"
    );
    ensure!(
        event.route_key.as_deref() == Some(route.as_str()),
        "{name}: routeKey must be {route}"
    );
    ensure!(
        event.request_context.route_key.as_deref() == Some(route.as_str()),
        "{name}: requestContext.routeKey must be {route}"
    );
    let body_len = tollgate::http::Request::new(event)
        .body()
        .map(|b| b.len())
        .unwrap_or_default();
    if let Some(declared) = event.headers.get("content-length") {
        ensure!(
            declared.to_str()? == body_len.to_string(),
            "{name}: content-length is not the body's length"
        );
    }
    Ok(())
}

/// The decoded JSON-RPC body of the request (for the snapshot's info and the id checks).
fn request_body(event: &ApiGatewayV2httpRequest) -> Value {
    let body = tollgate::http::Request::new(event)
        .body()
        .map(|b| b.into_owned())
        .unwrap_or_default();
    if body.len() > 1024 {
        return json!(format!("[{} bytes]", body.len()));
    }
    serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)))
}

/// Response headers, sorted, with values that change per call replaced.
fn headers(map: &http::HeaderMap) -> BTreeMap<String, String> {
    const VOLATILE: &[&str] = &[
        "date",
        "x-amzn-requestid",
        "x-amzn-trace-id",
        "x-request-id",
        "traceparent",
    ];
    map.iter()
        .map(|(k, v)| {
            let value = if VOLATILE.contains(&k.as_str()) {
                "[volatile]".to_owned()
            } else {
                v.to_str()
                    .map_or_else(|_| "[not ascii]".to_owned(), str::to_owned)
            };
            (k.as_str().to_owned(), value)
        })
        .collect()
}

/// Replaces the invocation id wherever it appears, the audit's request ids and the server
/// version (it moves with every release).
fn normalise(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(mask_connect_links(&mask_ticket_ids(
            &s.replace(INVOCATION_ID, "[invocation-id]"),
        ))),
        Value::Array(items) => Value::Array(items.into_iter().map(normalise).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if k == "elicitationId" {
                        // Random per link.
                        json!("[elicitation-id]")
                    } else if k == "completedAtMs" {
                        // A replay's original completion time (wall clock).
                        json!("[completed-at-ms]")
                    } else if matches!(k.as_str(), "taskId" | "task_id") && v.is_string() {
                        json!("[task-id]")
                    } else if matches!(k.as_str(), "createdAt" | "lastUpdatedAt") {
                        json!("[timestamp]")
                    } else if k == tollgate::task::META_IMMEDIATE_RESPONSE {
                        json!("[immediate response naming the task]")
                    } else if matches!(
                        k.as_str(),
                        "serverInfo" | "io.modelcontextprotocol/serverInfo"
                    ) {
                        let mut v = v;
                        if v.get("version").is_some() {
                            v["version"] = json!("[version]");
                        }
                        v
                    } else {
                        v
                    };
                    (k, normalise(v))
                })
                .collect(),
        ),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// The contract.

/// What a fixture must produce.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// A JSON-RPC result (and for tools/call, `isError` absent or false).
    Result,
    /// A tools/call result with `isError: true`.
    ToolError,
    /// A JSON-RPC error with this code (`None`: any code).
    Error(Option<i64>),
    /// No body (202).
    Empty,
    /// A plain JSON document (RFC 9728 metadata) naming this `resource`.
    Document(&'static str),
}

use Want::{Document, Empty, Error as Err_, Result as Ok_, ToolError};

/// Every fixture, with the HTTP status and outcome the README's error contract and the MCP spec call for.
const EXPECTED: &[(&str, u16, Want)] = &[
    // Lifecycle and discovery.
    ("gateway.initialize-2025-06-18", 200, Ok_),
    ("gateway.initialize-2025-11-25", 200, Ok_),
    ("gateway.initialize-unsupported-version", 200, Ok_),
    (
        "gateway.initialize-2026-07-28-removed",
        404,
        Err_(Some(-32601)),
    ),
    ("gateway.notifications-initialized", 202, Empty),
    ("gateway.ping", 200, Ok_),
    ("gateway.ping-2026-07-28-removed", 404, Err_(Some(-32601))),
    ("gateway.tools-list-2025-06-18", 200, Ok_),
    ("gateway.tools-list-2026-07-28", 200, Ok_),
    ("gateway.tools-list-reader-scope", 200, Ok_),
    ("gateway.server-discover", 200, Ok_),
    (
        "gateway.protected-resource-metadata",
        200,
        Document("https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/mcp"),
    ),
    (
        "lookup_customer.protected-resource-metadata",
        200,
        Document(
            "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/tools/lookup_customer/mcp",
        ),
    ),
    ("gateway.unknown-method-2025-11-25", 200, Err_(Some(-32601))),
    ("gateway.unknown-method-2026-07-28", 404, Err_(Some(-32601))),
    // 2026-07-28 headers and _meta.
    ("gateway.mcp-method-missing", 400, Err_(Some(-32020))),
    ("gateway.mcp-method-mismatch", 400, Err_(Some(-32020))),
    ("gateway.mcp-name-missing", 400, Err_(Some(-32020))),
    ("gateway.mcp-name-mismatch", 400, Err_(Some(-32020))),
    (
        "gateway.version-header-meta-mismatch",
        400,
        Err_(Some(-32020)),
    ),
    ("gateway.version-unsupported-v999", 400, Err_(Some(-32022))),
    ("gateway.version-header-unsupported-legacy", 400, Err_(None)),
    ("gateway.meta-missing", 400, Err_(Some(-32602))),
    // Transport.
    ("gateway.bad-json", 400, Err_(Some(-32700))),
    ("gateway.batch", 400, Err_(Some(-32600))),
    ("gateway.content-type-wrong", 415, Err_(None)),
    ("gateway.accept-html", 406, Err_(None)),
    ("gateway.get", 405, Err_(None)),
    ("gateway.delete", 405, Err_(None)),
    ("gateway.origin-wrong", 403, Err_(None)),
    ("gateway.host-not-loopback", 403, Err_(None)),
    ("gateway.loopback-host-and-origin", 200, Ok_),
    ("gateway.body-too-large", 413, Err_(None)),
    ("gateway.base64-body", 200, Ok_),
    // Credentials.
    ("gateway.no-token", 401, Err_(None)),
    ("gateway.token-malformed", 401, Err_(None)),
    ("gateway.token-unknown", 401, Err_(None)),
    ("gateway.key-expired", 401, Err_(None)),
    ("gateway.key-revoked", 403, Err_(None)),
    ("gateway.agent-disabled", 403, Err_(None)),
    ("gateway.scope-insufficient", 403, Err_(None)),
    // tools/call through the gateway.
    ("gateway.call-lookup_customer-ok", 200, Ok_),
    ("gateway.call-open_ticket-ok-2026-07-28", 200, Ok_),
    ("gateway.call-track_shipment-ok", 200, Ok_),
    ("gateway.call-unknown-tool", 200, Err_(Some(-32602))),
    // Tool functions called directly.
    ("lookup_customer.call-ok", 200, Ok_),
    ("lookup_customer.call-ok-2026-07-28", 200, Ok_),
    ("lookup_customer.call-invalid-arguments", 200, ToolError),
    ("lookup_customer.call-unknown-customer", 200, ToolError),
    ("lookup_customer.call-unknown-tool", 200, Err_(Some(-32602))),
    ("lookup_customer.call-no-token", 401, Err_(None)),
    ("lookup_customer.call-over-budget", 429, Err_(None)),
    ("lookup_customer.tools-list", 200, Ok_),
    ("lookup_customer.mtls-subject-bound-cert", 200, Ok_),
    ("gateway.mtls-known-cert", 200, Ok_),
    ("gateway.mtls-unknown-cert", 401, Err_(Some(-31001))),
    ("gateway.mtls-expired-cert", 401, Err_(Some(-31001))),
    ("open_ticket.call-ok", 200, Ok_),
    // Retry safety: idempotency keys (header or `_meta`), both routes.
    ("open_ticket.call-idempotent-replay", 200, Ok_),
    (
        "gateway.call-open_ticket-idempotent-replay-2026-07-28",
        200,
        Ok_,
    ),
    (
        "open_ticket.call-idempotency-in-progress",
        409,
        Err_(Some(-31009)),
    ),
    (
        "open_ticket.call-idempotency-key-reused",
        422,
        Err_(Some(-31022)),
    ),
    (
        "open_ticket.call-idempotency-key-invalid",
        400,
        Err_(Some(-32602)),
    ),
    ("open_ticket.call-invalid-arguments", 200, ToolError),
    ("open_ticket.call-unknown-customer", 200, ToolError),
    ("open_ticket.call-suspended-customer", 200, ToolError),
    ("open_ticket.call-scope-insufficient", 403, Err_(None)),
    ("open_ticket.call-unknown-tool", 200, Err_(Some(-32602))),
    ("track_shipment.call-ok", 200, Ok_),
    // Not connected: the connect step in each form (README "Connections").
    ("account_profile.call-connect-required", 200, ToolError),
    (
        "account_profile.call-connect-elicitation-2026-07-28",
        200,
        Ok_,
    ),
    (
        "account_profile.call-connect-elicitation-2025-11-25",
        200,
        Err_(Some(-32042)),
    ),
    ("track_shipment.call-invalid-arguments", 200, ToolError),
    (
        "track_shipment.call-unknown-tracking-number",
        200,
        ToolError,
    ),
    ("track_shipment.call-carrier-error", 200, ToolError),
    ("track_shipment.call-unknown-tool", 200, Err_(Some(-32602))),
    // Tasks (2025-11-25): a task-augmented call answered at once with the task; the refusals.
    ("export_tickets.call-task-created", 200, Ok_),
    (
        "export_tickets.call-task-invalid-arguments",
        400,
        Err_(Some(-32602)),
    ),
    ("export_tickets.tasks-get-unknown", 400, Err_(Some(-32602))),
    (
        "gateway.call-lookup_customer-task-forbidden",
        200,
        Err_(Some(-32601)),
    ),
    ("gateway.tasks-cancel-unknown", 400, Err_(Some(-32602))),
    ("gateway.tasks-list-2025-11-25", 200, Ok_),
];

/// Fixtures whose response breaks the contract today. They are reported and not snapshotted
/// (a snapshot would bless the violation); the test fails once one is fixed, so its entry goes
/// and its snapshot gets reviewed.
const KNOWN_VIOLATIONS: &[(&str, &str)] = &[];

fn header<'a>(resp: &'a tollgate::http::Response, name: &str) -> Option<&'a str> {
    resp.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The fixture's expectation plus the rules every response follows. Returns the problems.
fn check_contract(
    name: &str,
    request: &Value,
    resp: &tollgate::http::Response,
    snapshot: &Value,
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let Some((_, status, want)) = EXPECTED.iter().find(|(n, ..)| *n == name) else {
        return Err(vec!["no entry in EXPECTED".to_owned()]);
    };
    let body = &snapshot["body"];
    expect(
        resp.status == *status,
        format!("HTTP {} (want {status})", resp.status),
    );
    expect(
        header(resp, "mcp-session-id").is_none(),
        "a session id was issued".to_owned(),
    );
    match want {
        Want::Empty => expect(resp.body.is_none(), "202 must have no body".to_owned()),
        Want::Document(resource) => {
            expect(
                body["resource"] == *resource,
                format!(
                    "metadata names resource {} (want {resource})",
                    body["resource"]
                ),
            );
            expect(
                body["bearer_methods_supported"] == serde_json::json!(["header"]),
                "bearer_methods_supported must be [\"header\"]".to_owned(),
            );
            expect(
                body["scopes_supported"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty()),
                "scopes_supported must list the tools' scopes".to_owned(),
            );
        }
        Want::Result | Want::ToolError => {
            expect(
                body.get("result").is_some(),
                format!("want a result, got {body}"),
            );
            let is_error = body["result"]["isError"].as_bool().unwrap_or(false);
            expect(
                is_error == matches!(want, Want::ToolError),
                format!("isError is {is_error}"),
            );
        }
        Want::Error(code) => {
            expect(
                body.get("result").is_none(),
                "an error must not carry a result".to_owned(),
            );
            let got = body["error"]["code"].as_i64();
            expect(got.is_some(), format!("want a JSON-RPC error, got {body}"));
            if let Some(code) = code {
                expect(
                    got == Some(*code),
                    format!("error code {got:?} (want {code})"),
                );
            }
        }
    }
    if let Some(text) = &resp.body {
        expect(
            !text.contains('\n'),
            "the body must be one line of JSON".to_owned(),
        );
        expect(
            body.is_object(),
            "the body must be a JSON object".to_owned(),
        );
        expect(
            body["jsonrpc"] == "2.0" || matches!(want, Want::Document(_)),
            "the body must be JSON-RPC 2.0".to_owned(),
        );
        expect(
            header(resp, "content-type") == Some("application/json"),
            "a JSON body needs Content-Type: application/json".to_owned(),
        );
    }
    // Echo the id, with its type, whenever the request had one. Transport refusals may answer
    // before reading the body and then carry no id (the spec allows an id-less error for a
    // refused Origin; the error contract asks for the id "where known"), but never a wrong one.
    let transport_refusal = matches!(
        body["error"]["data"]["reason"].as_str(),
        Some(
            "method_not_allowed"
                | "origin_not_allowed"
                | "unsupported_media_type"
                | "not_acceptable"
                | "payload_too_large"
        )
    );
    if let Some(id) = request.get("id").filter(|_| resp.body.is_some()) {
        let id_less = transport_refusal && body.get("id").is_none_or(Value::is_null);
        expect(
            id_less || body["id"] == *id,
            format!("id {} not echoed (got {})", id, body["id"]),
        );
    }
    let modern =
        request["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == "2026-07-28";
    if let Some(result) = body.get("result") {
        let has_result_type = result.get("resultType").is_some();
        expect(
            has_result_type == modern,
            format!("resultType present: {has_result_type}"),
        );
        if modern {
            expect(
                result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"].is_string(),
                "2026-07-28 results carry _meta serverInfo".to_owned(),
            );
            if matches!(
                request["method"].as_str(),
                Some("tools/list" | "server/discover")
            ) {
                expect(
                    result["ttlMs"].is_u64(),
                    "cacheable results need ttlMs".to_owned(),
                );
                expect(
                    result["cacheScope"].is_string(),
                    "cacheable results need cacheScope".to_owned(),
                );
            }
        }
    }
    if let Some(error) = body.get("error") {
        expect(
            error["message"].is_string(),
            "error.message must be a string".to_owned(),
        );
        expect(
            error["data"]["reason"].is_string(),
            "error.data.reason must say why".to_owned(),
        );
    }
    let www = header(resp, "www-authenticate").unwrap_or_default();
    match resp.status {
        401 => {
            expect(
                www.starts_with("Bearer "),
                "401 needs a Bearer challenge".to_owned(),
            );
            expect(
                www.contains("resource_metadata=\"")
                    && www.contains("/.well-known/oauth-protected-resource"),
                format!(
                    "401 must point at the protected resource metadata (WWW-Authenticate: {www:?})"
                ),
            );
            if request_has_credentials(name) {
                expect(
                    www.contains("error=\"invalid_token\""),
                    "a bad token gets error=\"invalid_token\"".to_owned(),
                );
            }
        }
        403 if body["error"]["data"]["reason"] == "insufficient_scope" => {
            expect(
                www.contains("error=\"insufficient_scope\""),
                "insufficient_scope challenge".to_owned(),
            );
            expect(
                www.contains("scope=\""),
                "the challenge names the scope".to_owned(),
            );
        }
        403 if name.contains("revoked") || name.contains("disabled") => {
            expect(
                body["error"]["data"]["retry"] == "never",
                "permanent denials say retry: never".to_owned(),
            );
            expect(
                www.is_empty(),
                "a permanent denial is not a token challenge".to_owned(),
            );
        }
        405 => expect(
            header(resp, "allow") == Some("POST"),
            "405 needs Allow: POST".to_owned(),
        ),
        409 => {
            let retry_after = header(resp, "retry-after").and_then(|v| v.parse::<u64>().ok());
            expect(
                retry_after.is_some_and(|s| s > 0),
                "409 (in progress) needs Retry-After in whole seconds".to_owned(),
            );
        }
        429 => {
            let retry_after = header(resp, "retry-after").and_then(|v| v.parse::<u64>().ok());
            expect(
                retry_after.is_some_and(|s| s > 0),
                "429 needs Retry-After in whole seconds".to_owned(),
            );
            expect(
                header(resp, "ratelimit-policy").is_some(),
                "429 needs RateLimit-Policy".to_owned(),
            );
            expect(
                header(resp, "ratelimit").is_some(),
                "429 needs RateLimit".to_owned(),
            );
            let data = &body["error"]["data"];
            expect(
                data["layer"] == "agent" || data["layer"] == "tool",
                format!("a 429 body names the layer (data: {data})"),
            );
        }
        _ => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Whether the fixture sent an Authorization header (a missing one gets no error code, RFC 6750
/// section 3.1).
fn request_has_credentials(name: &str) -> bool {
    !name.contains("no-token")
}
