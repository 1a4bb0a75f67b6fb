//! The gateway's Lambda `Invoke` against a Lambda-protocol endpoint on loopback: the request
//! carries the forwarded event's `X-Amzn-Trace-Id` (so Lambda's own segments for the tool
//! function join the caller's trace), and the function's response comes back.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use tollgate::server::Invocation;
use tollgate::server::forward::{Invoker as _, LambdaInvoker};

type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

async fn invocations(
    State(seen): State<Seen>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> axum::Json<serde_json::Value> {
    let trace = headers
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock()
        .expect("lock")
        .push((uri.path().to_owned(), trace));
    axum::Json(serde_json::json!({
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
        "isBase64Encoded": false,
        "cookies": []
    }))
}

/// A Lambda client for the endpoint on loopback.
fn lambda_client(endpoint: &str) -> aws_sdk_lambda::Client {
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
        .region(aws_sdk_lambda::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_lambda::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_lambda::Client::from_conf(config)
}

#[tokio::test]
async fn invoke_carries_the_forwarded_trace_header() -> anyhow::Result<()> {
    let seen = Seen::default();
    let app = axum::Router::new()
        .fallback(invocations)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let invoker = LambdaInvoker::new(lambda_client(&endpoint), "tollgate-dev-");
    let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let event = tollgate::http::event_from_parts(
        "POST",
        "/mcp",
        [
            ("content-type", "application/json"),
            ("x-amzn-trace-id", header),
        ],
        Some(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#),
        "req-1",
        "127.0.0.1",
    );
    let inv = Invocation::new("req-1", std::time::Duration::from_secs(5));
    let resp = invoker.invoke("track_shipment", &event, &inv).await?;
    assert_eq!(resp.status, 200);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        vec![(
            "/2015-03-31/functions/tollgate-dev-track_shipment/invocations".to_owned(),
            Some(header.to_owned())
        )]
    );
    server.abort();
    Ok(())
}

type Started = Arc<Mutex<Vec<(String, Option<String>, Option<String>, serde_json::Value)>>>;

async fn started(
    State(seen): State<Started>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    seen.lock().expect("lock").push((
        uri.path().to_owned(),
        header("x-amz-invocation-type"),
        header("x-amzn-trace-id"),
        serde_json::from_slice(&body).unwrap_or_default(),
    ));
    // What Lambda answers to an accepted asynchronous invocation.
    axum::http::StatusCode::ACCEPTED
}

/// A task run is started with an `Event` invoke of the tool's own function, carrying the job
/// (task, principal, arguments, trace) and the creating request's trace header.
#[tokio::test]
async fn a_task_run_is_an_event_invoke_of_the_function_itself() -> anyhow::Result<()> {
    use tollgate::task::{LambdaStarter, TaskEvent, TaskJob, TaskStarter as _};
    let seen = Started::default();
    let app = axum::Router::new()
        .fallback(started)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let starter = LambdaStarter::new(lambda_client(&endpoint), "tollgate-dev-export_tickets");
    let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let principal: tollgate::Principal = serde_json::from_value(serde_json::json!({
        "agent_id": "bot", "scopes": ["tickets:read"], "method": "api_key",
        "credential_id": "k1", "budget": {"per_minute": null, "per_day": null, "tools": {}},
    }))?;
    let job = TaskJob {
        task_id: "0b8f4a52-2b7e-4c43-9d59-3e1f6f0c2a11".into(),
        principal,
        tool: "export_tickets".into(),
        arguments: serde_json::json!({"customer_id": "C-1001"}),
        trace: vec![("x-amzn-trace-id".into(), header.into())],
        protocol_version: "2025-11-25".into(),
    };
    starter.start(&job).await.map_err(anyhow::Error::msg)?;
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let (path, kind, trace, body) = &seen[0];
    assert_eq!(
        path,
        "/2015-03-31/functions/tollgate-dev-export_tickets/invocations"
    );
    assert_eq!(kind.as_deref(), Some("Event"));
    assert_eq!(trace.as_deref(), Some(header));
    // The function reads it back as a task event (and never as an API Gateway event).
    let event: TaskEvent = serde_json::from_value(body.clone())?;
    assert_eq!(event.tollgate_task.task_id, job.task_id);
    assert_eq!(event.tollgate_task.arguments, job.arguments);
    server.abort();
    Ok(())
}
