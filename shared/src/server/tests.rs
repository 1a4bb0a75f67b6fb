//! Pipeline tests over the in-memory store and sink: the pure logic of ordering, outcomes and
//! audit statuses. The same behaviours run end to end against a real DynamoDB server in
//! `tests/e2e`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::*;
use crate::audit::MemorySink;
use crate::auth::keys;
use crate::http::event_from_parts;
use crate::store::{AgentRecord, AgentStatus, KeyRecord, KeyStatus, MemoryStore, Store as _};
use crate::tool::{Annotations, DefaultBudget, LogAs, Tool, ToolSpec};

/// What the test tool should do.
#[derive(Debug, Deserialize, JsonSchema)]
struct Input {
    /// `ok`, `business`, `system`, `panic` or `sleep`.
    mode: String,
    /// A personal value that must never be logged raw.
    #[serde(default)]
    #[allow(dead_code)]
    secret: Option<String>,
}

struct Probe;

impl Tool for Probe {
    type Input = Input;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "probe",
            title: "Probe",
            description: "Test tool.",
            scope: "probe:run",
            annotations: Annotations::default(),
            budget: DefaultBudget::per_minute(10, 1),
            log_fields: &[("mode", LogAs::Safe), ("secret", LogAs::Hashed)],
        }
    }

    async fn call(&self, ctx: ToolContext, input: Input) -> Result<String, ToolError> {
        match input.mode.as_str() {
            "ok" => Ok(format!("hello {}", ctx.principal.agent_id)),
            "business" => Err(ToolError::business("nothing matches; try another value")),
            "system" => Err(ToolError::system("database exploded")),
            "sleep" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok("late".into())
            }
            _ => panic!("probe panicked on purpose"),
        }
    }
}

struct Harness {
    server: Server,
    sink: Arc<MemorySink>,
    token: String,
    store: Arc<MemoryStore>,
}

async fn harness() -> Harness {
    let store = Arc::new(MemoryStore::new());
    let scopes = BTreeSet::from(["probe:run".to_owned()]);
    store
        .create_agent(&AgentRecord {
            agent_id: "agent-1".into(),
            description: String::new(),
            status: AgentStatus::Active,
            scopes: scopes.clone(),
            budget: Default::default(),
            created_at_ms: 0,
        })
        .await
        .expect("agent");
    let k = keys::issue();
    store
        .create_key(&KeyRecord {
            key_id: k.key_id.clone(),
            agent_id: "agent-1".into(),
            digest_hex: k.digest_hex,
            status: KeyStatus::Active,
            created_at_ms: 0,
            expires_at_ms: None,
            agent_status: AgentStatus::Active,
            scopes,
            budget: Default::default(),
        })
        .await
        .expect("key");
    let sink = Arc::new(MemorySink::default());
    let server = server_over(
        store.clone(),
        sink.clone(),
        Some(HashKey::new("v1", vec![3; 32]).expect("key")),
    );
    Harness {
        server,
        sink,
        token: k.token,
        store,
    }
}

async fn post(h: &Harness, token: Option<&str>, body: &Value) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let body = body.to_string();
    let ev = event_from_parts(
        "POST",
        "/mcp",
        headers,
        Some(body.as_bytes()),
        "req-1",
        "127.0.0.1",
    );
    h.server
        .respond(&ev, &Invocation::new("req-1", Duration::from_secs(2)))
        .await
}

fn call(mode: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
           "params": {"name": "probe", "arguments": {"mode": mode, "secret": "ada@example.com"}}})
}

#[tokio::test]
async fn outcomes_map_to_results_and_one_audit_record_each() {
    let h = harness().await;
    let cases = [
        ("ok", CallStatus::Success, false),
        ("business", CallStatus::BusinessError, true),
        ("system", CallStatus::SystemError, true),
        ("panic", CallStatus::SystemError, true),
    ];
    for (i, (mode, status, is_error)) in cases.iter().enumerate() {
        let resp = post(&h, Some(&h.token), &call(mode)).await;
        assert_eq!(resp.status, 200, "{mode}");
        let body = resp.body_json().expect("json");
        assert_eq!(body["id"], 7);
        assert_eq!(
            body["result"]["isError"].as_bool().unwrap_or(false),
            *is_error,
            "{mode}"
        );
        let records = h.sink.records();
        assert_eq!(records.len(), i + 1, "exactly one audit record per call");
        assert_eq!(records[i].status, *status, "{mode}");
        assert_eq!(records[i].agent_id.as_deref(), Some("agent-1"));
    }
    let text = |r: &Response| {
        r.body_json().expect("json")["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let business = post(&h, Some(&h.token), &call("business")).await;
    assert!(text(&business).contains("try another value"));
    let system = post(&h, Some(&h.token), &call("system")).await;
    assert!(
        !text(&system).contains("exploded"),
        "system error details never reach the agent"
    );
    assert!(
        text(&system).contains("req-1"),
        "the reference lets operators find the log line"
    );
}

#[tokio::test]
async fn a_slow_tool_is_cut_at_the_deadline() {
    let h = harness().await;
    let started = std::time::Instant::now();
    let resp = post(&h, Some(&h.token), &call("sleep")).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let body = resp.body_json().expect("json");
    assert_eq!(body["result"]["isError"], true);
    let rec = h.sink.records().pop().expect("record");
    assert_eq!(rec.status, CallStatus::SystemError);
    assert_eq!(rec.reason.as_deref(), Some("deadline_exceeded"));
}

#[tokio::test]
async fn audit_hashes_declared_fields_and_never_logs_raw_values() {
    let h = harness().await;
    post(&h, Some(&h.token), &call("ok")).await;
    let rec = h.sink.records().pop().expect("record");
    let line = serde_json::to_string(&rec).expect("json");
    assert!(!line.contains("ada@example.com"));
    assert_eq!(rec.arguments.as_ref().expect("args")["mode"], "ok");
    assert!(
        rec.arguments.as_ref().expect("args")["secret"]
            .as_str()
            .expect("hash")
            .starts_with("hmac-sha256:v1:")
    );
}

#[tokio::test]
async fn denials_are_audited_with_their_status() {
    let h = harness().await;
    let resp = post(&h, None, &call("ok")).await;
    assert_eq!(resp.status, 401);
    assert_eq!(
        h.sink.records().pop().expect("record").status,
        CallStatus::DeniedAuth
    );

    let mut agent = h
        .store
        .get_agent("agent-1")
        .await
        .expect("get")
        .expect("agent");
    agent.scopes.clear();
    h.store.update_agent(&agent).await.expect("update");
    // A fresh server (no cached key) sees the new scopes.
    let h2 = Harness {
        server: server_over(h.store.clone(), h.sink.clone(), None),
        ..h
    };
    let resp = post(&h2, Some(&h2.token), &call("ok")).await;
    assert_eq!(resp.status, 403);
    let body = resp.body_json().expect("json");
    assert_eq!(
        body["error"]["code"],
        crate::protocol::codes::INSUFFICIENT_SCOPE
    );

    let unknown =
        json!({"jsonrpc": "2.0", "id": "x", "method": "tools/call", "params": {"name": "nope"}});
    let resp = post(&h2, Some(&h2.token), &unknown).await;
    let body = resp.body_json().expect("json");
    assert_eq!(body["error"]["code"], -32602);
    assert_eq!(body["id"], "x");
}

/// A server over `store` (a fresh one has an empty key cache, as after the cache TTL).
fn server_over(
    store: Arc<MemoryStore>,
    sink: Arc<MemorySink>,
    hash_key: Option<HashKey>,
) -> Server {
    server_with(
        Catalog::new().register(Probe).expect("register"),
        store,
        sink,
        hash_key,
    )
}

fn server_with(
    catalog: Catalog,
    store: Arc<MemoryStore>,
    sink: Arc<MemorySink>,
    hash_key: Option<HashKey>,
) -> Server {
    let config = Arc::new(Config::from_lookup(|_| None).expect("config"));
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let clients = Arc::new(crate::lambda::build_clients(&sdk, config).expect("clients"));
    Server::new(
        catalog,
        Dispatch::Local,
        Authenticator::new(store, Duration::from_secs(30)),
        clients,
        sink,
        hash_key,
        ServerIdentity {
            function: "probe".into(),
            name: "tollgate".into(),
            version: "0.0.0".into(),
        },
    )
}

#[tokio::test]
async fn invalid_arguments_name_the_field_without_echoing_it() {
    let h = harness().await;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "probe", "arguments": {"mode": 42, "secret": "ada@example.com"}}});
    let resp = post(&h, Some(&h.token), &body).await;
    let body = resp.body_json().expect("json");
    assert_eq!(body["result"]["isError"], true);
    let text = body["result"]["content"][0]["text"].as_str().expect("text");
    assert!(text.contains("/mode"), "{text}");
    assert!(!text.contains("42"), "{text}");
    assert_eq!(
        h.sink.records().pop().expect("record").status,
        CallStatus::InvalidInput
    );
}

#[tokio::test]
async fn tools_list_shows_only_what_the_scopes_allow() {
    let h = harness().await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let body = post(&h, Some(&h.token), &list)
        .await
        .body_json()
        .expect("json");
    assert_eq!(body["result"]["tools"][0]["name"], "probe");
    assert!(
        body["result"].get("resultType").is_none(),
        "legacy results carry no resultType"
    );
    let mut agent = h
        .store
        .get_agent("agent-1")
        .await
        .expect("get")
        .expect("agent");
    agent.scopes = BTreeSet::from(["other".to_owned()]);
    h.store.update_agent(&agent).await.expect("update");
    let h2 = Harness {
        server: server_over(h.store.clone(), h.sink.clone(), None),
        ..h
    };
    let body = post(&h2, Some(&h2.token), &list)
        .await
        .body_json()
        .expect("json");
    assert_eq!(body["result"]["tools"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn notifications_get_202_without_body_and_still_need_auth() {
    let h = harness().await;
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let resp = post(&h, Some(&h.token), &note).await;
    assert_eq!((resp.status, resp.body.is_none()), (202, true));
    assert_eq!(post(&h, None, &note).await.status, 401);
}

#[test]
fn metadata_url_inserts_the_well_known_prefix() {
    assert_eq!(
        metadata_url_for("https://mcp.example.com/mcp").as_deref(),
        Some("https://mcp.example.com/.well-known/oauth-protected-resource/mcp")
    );
    assert_eq!(
        metadata_url_for("http://127.0.0.1:9000").as_deref(),
        Some("http://127.0.0.1:9000/.well-known/oauth-protected-resource")
    );
}

/// A tool with side effects that requires an idempotency key.
struct Keyed;

impl Tool for Keyed {
    type Input = Input;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "keyed",
            ..Probe.spec()
        }
    }

    fn idempotency(&self) -> crate::idempotency::Idempotency {
        crate::idempotency::Idempotency::Required
    }

    async fn call(&self, _ctx: ToolContext, _input: Input) -> Result<String, ToolError> {
        Ok("ran".into())
    }
}

async fn keyed_post(h: &Harness, server: &Server, key: Option<&str>) -> Response {
    let auth = format!("Bearer {}", h.token);
    let mut headers = vec![
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    if let Some(k) = key {
        headers.push(("idempotency-key", k));
    }
    let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": "keyed", "arguments": {"mode": "ok"}}})
    .to_string();
    let ev = event_from_parts(
        "POST",
        "/mcp",
        headers,
        Some(body.as_bytes()),
        "req-1",
        "127.0.0.1",
    );
    server
        .respond(&ev, &Invocation::new("req-1", Duration::from_secs(2)))
        .await
}

#[tokio::test]
async fn a_required_key_that_is_missing_or_invalid_is_refused_before_anything_runs() {
    let h = harness().await;
    let server = server_with(
        Catalog::new().register(Keyed).expect("register"),
        h.store.clone(),
        h.sink.clone(),
        None,
    );
    // tools/list tells the model.
    let listed = server
        .catalog()
        .get("keyed")
        .expect("tool")
        .descriptor()
        .clone();
    assert!(
        listed
            .description
            .as_deref()
            .is_some_and(|d| d.contains("Requires an idempotency key")
                && d.contains(crate::idempotency::META_KEY)),
        "{listed:?}"
    );

    let resp = keyed_post(&h, &server, None).await;
    assert_eq!(resp.status, 200);
    let body = resp.body_json().expect("json");
    assert_eq!(body["result"]["isError"], true);
    let text = body["result"]["content"][0]["text"].as_str().expect("text");
    assert!(text.contains(crate::idempotency::META_KEY), "{text}");
    assert!(text.contains("Idempotency-Key"), "{text}");
    let rec = h.sink.records().pop().expect("record");
    assert_eq!(rec.status, CallStatus::InvalidInput);
    assert_eq!(rec.reason.as_deref(), Some("idempotency_key_required"));

    let resp = keyed_post(&h, &server, Some("not a valid key!")).await;
    assert_eq!(resp.status, 400);
    let text = resp.body.clone().unwrap_or_default();
    assert!(text.contains("-32602"), "{text}");
    assert!(
        !text.contains("not a valid key"),
        "the key is never echoed: {text}"
    );
    let rec = h.sink.records().pop().expect("record");
    assert_eq!(rec.reason.as_deref(), Some("invalid_idempotency_key"));
    // No budget layer ran for either (this server has none; the refusals came first).
    assert!(rec.budget_layer.is_none());
}

/// A tool that runs only as a task.
struct TaskOnly;

impl Tool for TaskOnly {
    type Input = Input;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "task_only",
            title: "Task only",
            description: "Test tool that must be called as a task.",
            scope: "probe:run",
            annotations: Annotations::default(),
            budget: DefaultBudget::per_minute(10, 1),
            log_fields: &[],
        }
    }

    fn task_support(&self) -> crate::task::TaskSupport {
        crate::task::TaskSupport::Required
    }

    async fn call(&self, _ctx: ToolContext, _input: Input) -> Result<String, ToolError> {
        panic!("a task-only tool must not run on a plain call");
    }
}

async fn post_at(h: &Harness, server: &Server, version: &str, body: &Value) -> Value {
    let auth = format!("Bearer {}", h.token);
    let body = body.to_string();
    let ev = event_from_parts(
        "POST",
        "/mcp",
        vec![
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
            ("mcp-protocol-version", version),
        ],
        Some(body.as_bytes()),
        "req-1",
        "127.0.0.1",
    );
    server
        .respond(&ev, &Invocation::new("req-1", Duration::from_secs(2)))
        .await
        .body_json()
        .expect("json")
}

#[tokio::test]
async fn task_support_is_declared_and_enforced_before_anything_runs() {
    let h = harness().await;
    let server = server_with(
        Catalog::new()
            .register(Probe)
            .expect("probe")
            .register(TaskOnly)
            .expect("task_only"),
        h.store.clone(),
        h.sink.clone(),
        None,
    );
    // 2025-11-25: capability and execution.taskSupport; 2025-06-18 has neither.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "t", "version": "1"}}});
    let body = post_at(&h, &server, "2025-11-25", &init).await;
    assert_eq!(
        body["result"]["capabilities"]["tasks"]["requests"]["tools"]["call"],
        json!({})
    );
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let body = post_at(&h, &server, "2025-11-25", &list).await;
    let tools = body["result"]["tools"].as_array().expect("tools");
    let by_name = |n: &str| tools.iter().find(|t| t["name"] == n).expect("listed");
    assert_eq!(by_name("task_only")["execution"]["taskSupport"], "required");
    assert!(
        by_name("probe").get("execution").is_none(),
        "absent = forbidden"
    );
    let body = post_at(&h, &server, "2025-06-18", &list).await;
    assert!(
        body["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .all(|t| t.get("execution").is_none())
    );
    // A plain call of a task-only tool: -32601, audited, the handler never runs (it panics).
    let plain = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                       "params": {"name": "task_only", "arguments": {"mode": "ok"}}});
    for version in ["2025-11-25", "2025-06-18"] {
        let body = post_at(&h, &server, version, &plain).await;
        assert_eq!(body["error"]["code"], -32601, "{version}: {body}");
        let record = h.sink.records().pop().expect("record");
        assert_eq!(record.status, CallStatus::InvalidInput);
        assert_eq!(record.reason.as_deref(), Some("task_required"));
    }
    // A task call of a tool that forbids tasks: -32601; a malformed `task`: -32602.
    let task_call = |name: &str, task: Value| {
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
               "params": {"name": name, "arguments": {"mode": "ok"}, "task": task}})
    };
    let body = post_at(&h, &server, "2025-11-25", &task_call("probe", json!({}))).await;
    assert_eq!(body["error"]["code"], -32601, "{body}");
    assert_eq!(
        h.sink.records().pop().expect("record").reason.as_deref(),
        Some("task_forbidden")
    );
    for bad in [json!(5), json!({"ttl": "soon"}), json!({"ttl": -1})] {
        let body = post_at(&h, &server, "2025-11-25", &task_call("task_only", bad)).await;
        assert_eq!(body["error"]["code"], -32602, "{body}");
    }
    // tasks/* exist only where tasks are declared, and need a task id.
    let get = json!({"jsonrpc": "2.0", "id": 5, "method": "tasks/get", "params": {}});
    let body = post_at(&h, &server, "2025-11-25", &get).await;
    assert_eq!(body["error"]["code"], -32602, "{body}");
    let body = post_at(&h, &server, "2025-06-18", &get).await;
    assert_eq!(body["error"]["code"], -32601, "{body}");
    let body = post_at(&h, &h.server, "2025-11-25", &get).await;
    assert_eq!(body["error"]["code"], -32601, "no task tool here: {body}");
}
