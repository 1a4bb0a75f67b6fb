//! The AWS SDK interceptor against a DynamoDB-protocol endpoint on loopback: a call made inside
//! a traced request gets its own CLIENT span under the enclosing span, the request carries
//! `X-Amzn-Trace-Id` and `traceparent` naming that span, and the X-Ray daemon (a UDP socket)
//! receives it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use axum::extract::State;
use axum::http::HeaderMap;
use tollgate::telemetry::trace::TraceContext;
use tollgate::telemetry::{self, AwsSdkSpans, TelemetryConfig};
use tracing::Instrument as _;

type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

async fn dynamodb(
    State(seen): State<Seen>,
    headers: HeaderMap,
) -> impl axum::response::IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    seen.lock()
        .expect("lock")
        .push((header("x-amzn-trace-id"), header("traceparent")));
    ([("content-type", "application/x-amz-json-1.0")], "{}")
}

fn segments(socket: &std::net::UdpSocket) -> Vec<serde_json::Value> {
    let mut docs = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = socket.recv(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (header, doc) = text.split_once('\n').expect("daemon header line");
        assert_eq!(header, r#"{"format": "json", "version": 1}"#);
        docs.push(serde_json::from_str(doc).expect("segment JSON"));
    }
    docs
}

#[tokio::test(flavor = "current_thread")]
async fn sdk_calls_get_a_client_span_named_in_their_trace_header() -> anyhow::Result<()> {
    let seen = Seen::default();
    let app = axum::Router::new()
        .fallback(dynamodb)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let daemon = std::net::UdpSocket::bind("127.0.0.1:0")?;
    daemon.set_read_timeout(Some(Duration::from_millis(300)))?;
    let config = TelemetryConfig {
        xray_daemon: Some(daemon.local_addr()?),
        ..TelemetryConfig::off()
    };
    let telemetry = telemetry::build(&config, "sdk-spans-test");
    let _subscriber = tracing::dispatcher::set_default(&telemetry.dispatch);

    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(&endpoint)
            .interceptor(AwsSdkSpans)
            .build(),
    );
    let get = || {
        client
            .get_item()
            .table_name("t")
            .key("pk", AttributeValue::S("x".into()))
            .send()
    };
    get().await?; // outside any request: no span, no header of ours
    let trace = TraceContext::new_root();
    let request = telemetry::server_span("tools/call", None, "1", &trace);
    get().instrument(request.clone()).await?;
    drop(request);
    telemetry
        .export
        .as_ref()
        .expect("exporting")
        .provider()
        .force_flush()
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0],
        (None, None),
        "no trace header outside a traced request"
    );
    let header = seen[1].0.clone().expect("trace header");
    let parent = header
        .split(';')
        .find_map(|f| f.strip_prefix("Parent="))
        .expect("Parent")
        .to_owned();
    assert!(
        header.starts_with(&format!("Root={};", trace.xray_trace_id())),
        "{header}"
    );
    assert_ne!(parent, trace.span_id, "the SDK call has its own span");
    assert_eq!(
        seen[1].1.as_deref(),
        Some(format!("00-{}-{parent}-01", trace.trace_id).as_str())
    );
    let docs = segments(&daemon);
    let call = docs
        .iter()
        .find(|d| d["id"] == parent.as_str())
        .unwrap_or_else(|| panic!("no segment {parent} in {docs:?}"));
    assert_eq!(call["parent_id"], trace.span_id.as_str(), "{call}");
    assert_eq!(call["trace_id"], trace.xray_trace_id().as_str(), "{call}");
    assert!(
        docs.iter().any(|d| d["id"] == trace.span_id.as_str()),
        "the request's server span is a segment too"
    );
    server.abort();
    Ok(())
}

type SeenByTable = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

async fn dynamodb_by_table(
    State(seen): State<SeenByTable>,
    headers: HeaderMap,
    body: String,
) -> impl axum::response::IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let table = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["TableName"].as_str().map(str::to_owned))
        .unwrap_or_default();
    seen.lock()
        .expect("lock")
        .push((table, header("x-amzn-trace-id"), header("traceparent")));
    ([("content-type", "application/x-amz-json-1.0")], "{}")
}

/// With no span exported (no subscriber at all), SDK calls made by concurrent invocations each
/// carry their own invocation's trace (task-local, never the process environment), naming
/// that invocation's span as the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_span_export_concurrent_invocations_name_their_own_trace() -> anyhow::Result<()> {
    const N: usize = 32;
    let seen = SeenByTable::default();
    let app = axum::Router::new()
        .fallback(dynamodb_by_table)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(&endpoint)
            .interceptor(AwsSdkSpans)
            .build(),
    );
    let traces: Vec<TraceContext> = (0..N).map(|_| TraceContext::new_root()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, trace) in traces.iter().cloned().enumerate() {
        let client = client.clone();
        tasks.spawn(telemetry::with_invocation_trace(trace, async move {
            // Two calls with a yield between them: the task may move threads and interleave
            // with the others.
            for _ in 0..2 {
                client
                    .get_item()
                    .table_name(format!("t-{i}"))
                    .key("pk", AttributeValue::S("x".into()))
                    .send()
                    .await?;
                tokio::task::yield_now().await;
            }
            anyhow::Ok(())
        }));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2 * N);
    for (table, amzn, traceparent) in seen {
        let i: usize = table.trim_start_matches("t-").parse()?;
        let trace = &traces[i];
        assert_eq!(
            amzn.as_deref(),
            Some(
                format!(
                    "Root={};Parent={};Sampled=1",
                    trace.xray_trace_id(),
                    trace.span_id
                )
                .as_str()
            ),
            "{table}"
        );
        assert_eq!(
            traceparent.as_deref(),
            Some(format!("00-{}-{}-01", trace.trace_id, trace.span_id).as_str()),
            "{table}"
        );
    }
    server.abort();
    Ok(())
}
