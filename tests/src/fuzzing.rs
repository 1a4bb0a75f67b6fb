//! The fuzz harness: one input -> one API Gateway v2 event -> the whole request pipeline of a
//! tool function (`Server::respond`: transport checks, JSON-RPC, version negotiation, header
//! decoding, bearer-token parsing, argument validation against the real tools' schemas,
//! idempotency-key checks), over an in-memory store seeded with the fixture agents and keys so
//! a mutated fixture gets past authentication.
//!
//! Shared by the coverage-guided fuzzer (`tests/fuzz`, `make fuzz`, AFL++ via `cargo afl`) and
//! by the regression test that replays the seed corpus and every input the fuzzer ever found
//! (`tests/tests/fuzz_regressions.rs`, part of `cargo test`).
//!
//! An input is either an API Gateway event (JSON; the seeds are `events/*.json`) or, when it
//! does not parse as one, the body of a `POST /mcp` with a valid token and the usual headers,
//! so mutations of either reach deep. What must hold for every input (checked in [`run`]):
//! no panic, a status a client can act on, a JSON-RPC error body on every JSON error, and at
//! most one audit record per request. Nothing here touches the network: the SDK clients have
//! no credentials, so a step that needs DynamoDB fails at once (the fail-closed paths).

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use tollgate::audit::{AuditRecord, AuditSink};
use tollgate::auth::Authenticator;
use tollgate::server::{Dispatch, ServerIdentity};
use tollgate::store::MemoryStore;
use tollgate::{Config, Invocation, Server};

use crate::fixtures;

/// Counts the audit records written (the fuzzer runs millions of inputs: nothing is kept).
#[derive(Debug, Default)]
pub struct CountingSink(std::sync::atomic::AtomicUsize);

impl CountingSink {
    fn take(&self) -> usize {
        self.0.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

impl AuditSink for CountingSink {
    fn write(&self, _record: &AuditRecord) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A tool function's server with the gateway's catalog (every example tool), fixture
/// credentials in memory, no budgets (they need the store) and no network.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    server: Server,
    sink: Arc<CountingSink>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Harness")
    }
}

impl Harness {
    /// Builds the server once (per fuzzing process).
    pub fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store = Arc::new(MemoryStore::new());
        rt.block_on(fixtures::seed(store.as_ref()))?;
        let config = Arc::new(Config::from_lookup(|name| match name {
            "TOLLGATE_ALLOWED_ORIGINS" => Some("https://app.example.com".to_owned()),
            "TOLLGATE_BUDGET_TIMEOUT_MS" => Some("50".to_owned()),
            _ => None,
        })?);
        // No credentials provider, no retries: any store request fails before the network.
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        let clients = Arc::new(tollgate::lambda::build_clients(&sdk, config)?);
        let sink = Arc::new(CountingSink::default());
        let server = Server::new(
            gateway::catalog()?,
            Dispatch::Local,
            Authenticator::new(store, Duration::from_secs(30)),
            clients,
            sink.clone(),
            None,
            ServerIdentity {
                function: "fuzz".into(),
                name: "tollgate".into(),
                version: "0.0.0".into(),
            },
        );
        Ok(Self { rt, server, sink })
    }

    /// Runs one input through the pipeline; panics (what the fuzzer reports as a crash) when
    /// an invariant does not hold. Returns the response's class (status, JSON-RPC error code or
    /// `isError`), which the short fuzz run uses as its feedback.
    pub fn run(&self, data: &[u8]) -> String {
        let event = event_of(data);
        // Header values and tokens also go through the decoders on their own: the pipeline
        // stops at the first refusal, these see every value.
        for value in event.headers.values() {
            if let Ok(v) = value.to_str() {
                let _ = tollgate::protocol::version::decode_header_value(v);
                if let Some(token) = v.strip_prefix("Bearer ") {
                    let _ = tollgate::auth::keys::key_id(token);
                }
            }
        }
        let inv = Invocation::new("fuzz", Duration::from_secs(5));
        let resp = self.rt.block_on(self.server.respond(&event, &inv));
        let records = self.sink.take();
        assert!(records <= 1, "{records} audit records for one request");
        assert!(
            (200..600).contains(&resp.status),
            "status {} out of range",
            resp.status
        );
        let is_json = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json && resp.status >= 400 && resp.status != 404 {
            let body = resp
                .body_json()
                .expect("a JSON error response has a JSON body");
            let code = body["error"]["code"].as_i64();
            assert!(
                code.is_some() || body.get("error").is_some_and(|e| e.is_string()),
                "error without a code: {body}"
            );
        }
        let output = format!(
            "{:?}{}",
            resp.headers,
            resp.body.as_deref().unwrap_or_default()
        );
        for secret in secrets_of(&event) {
            assert!(
                !output.contains(&secret),
                "a credential's secret is in the response"
            );
        }
        let json = if is_json { resp.body_json() } else { None };
        let error = json.as_ref().and_then(|b| b["error"]["code"].as_i64());
        let is_error = json
            .as_ref()
            .and_then(|b| b["result"]["isError"].as_bool())
            .unwrap_or(false);
        format!("{} {error:?} {is_error}", resp.status)
    }
}

/// The secret part of every bearer credential in the request's `authorization` header (of a
/// tollgate key: the part after the key id; of anything else: all of it), unless the body carries it too (a
/// body value may be echoed in a validation error, that is not a leak).
fn secrets_of(event: &ApiGatewayV2httpRequest) -> Vec<String> {
    use base64::Engine as _;
    let raw = event.body.as_deref().unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let body = format!("{raw}\n{decoded}");
    event
        .headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer "))
        .map(|token| match tollgate::auth::keys::key_id(token) {
            Some(id) => token[tollgate::auth::keys::TOKEN_PREFIX.len() + id.len()..].to_owned(),
            None => token.to_owned(),
        })
        .filter(|secret| secret.len() >= 16 && !body.contains(secret.as_str()))
        .collect()
}

/// The event an input stands for: an API Gateway event when it parses as one, else the body
/// of a `POST /mcp` from the full-scope fixture agent.
pub fn event_of(data: &[u8]) -> ApiGatewayV2httpRequest {
    if let Ok(event) = serde_json::from_slice::<ApiGatewayV2httpRequest>(data) {
        return event;
    }
    let auth = format!("Bearer {}", fixtures::TOKEN_FULL);
    tollgate::http::event_from_parts(
        "POST",
        "/mcp",
        [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("authorization", auth.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
        ],
        Some(data),
        "fuzz",
        "203.0.113.7",
    )
}
