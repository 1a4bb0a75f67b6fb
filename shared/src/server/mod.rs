//! The request pipeline: one stateless handler per function, fed an API Gateway v2 event.
//!
//! Order (README, the request path), composed here and nowhere else:
//! 1. transport checks and JSON-RPC parsing ([`crate::protocol`])
//! 2. protocol-version negotiation and 2026-07-28 header rules
//! 3. authentication ([`crate::auth`]) -> [`Principal`]
//! 4. `tools/call`: tool lookup, scope check (the gateway forwards here)
//! 5. idempotency: a keyed call claims its record, or is answered from it (replay, in
//!    progress, key reused) without spending budget ([`crate::idempotency`])
//! 6. budgets, argument validation
//! 7. the tool run under a deadline, panics caught; its outcome stored for replays when keyed
//! 8. one audit record per tool call ([`crate::audit`])
//!
//! A task-augmented `tools/call` runs steps 1 to 6, records the task and starts the run
//! asynchronously; `tasks/*` are served from the record ([`crate::task`], `server/tasks.rs`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use futures::FutureExt as _;
use rmcp::model::{CallToolResult, ContentBlock as Content};
use serde_json::{Value, json};
use tracing::Instrument as _;

use crate::audit::hash_key::HashKeys;
use crate::audit::{AuditRecord, AuditSink, CallStatus, HashKey, redact_arguments};
use crate::auth::{Authenticator, Principal};
use crate::budget::{Admission, Budgets, Layer, Refusal};
use crate::catalog::{Catalog, RegisteredTool};
use crate::config::Config;
use crate::error::{RateLimited, Rejection, rate_limit_header, rate_limit_policy_header};
use crate::http::{Request, Response, origin_of};
use crate::idempotency::{self, Begin, Claim, Idempotency, Ledger};
use crate::protocol::jsonrpc::{self, Message, RequestId, RpcRequest};
use crate::protocol::printable;
use crate::protocol::version::{Era, Negotiated};
use crate::protocol::{META_SERVER_INFO, SUPPORTED_VERSIONS};
use crate::server::forward::Invoker;
use crate::telemetry;
use crate::telemetry::trace::TraceContext;
use crate::tool::{Clients, ToolContext, ToolError};

/// Per-invocation facts from the runtime (Lambda context, or the local stack).
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Request id (Lambda's `aws_request_id`, or a generated one locally).
    pub request_id: String,
    /// When the invocation must have answered.
    pub deadline: Instant,
    /// X-Ray trace header from the runtime, when present.
    pub trace_id: Option<String>,
}

impl Invocation {
    /// An invocation with `budget` left before its deadline.
    pub fn new(request_id: impl Into<String>, budget: Duration) -> Self {
        Self {
            request_id: request_id.into(),
            deadline: Instant::now() + budget,
            trace_id: None,
        }
    }
}

/// How `tools/call` is carried out.
#[derive(Debug, Clone)]
pub enum Dispatch {
    /// Run the tool in this process (tool functions).
    Local,
    /// Forward the event to the tool's own function (the gateway).
    Forward(Arc<dyn Invoker>),
}

/// Server identity reported in `initialize` and `server/discover`.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// Function name in logs (the Lambda function, or the tool / `gateway` locally).
    pub function: String,
    /// Implementation name.
    pub name: String,
    /// Implementation version.
    pub version: String,
}

/// One function's MCP server: its catalog, how it dispatches calls, and the shared parts.
#[derive(Debug)]
pub struct Server {
    catalog: Catalog,
    dispatch: Dispatch,
    auth: Authenticator,
    config: Arc<Config>,
    clients: Arc<Clients>,
    audit: Arc<dyn AuditSink>,
    hash_keys: Arc<HashKeys>,
    identity: ServerIdentity,
    budgets: Option<Arc<Budgets>>,
    ledger: Ledger,
    connections: Option<Arc<crate::connect::Connections>>,
    tasks: crate::task::TaskStore,
    task_starter: Option<Arc<dyn crate::task::TaskStarter>>,
    /// `WWW-Authenticate` `resource_metadata` URL, from the configured resource URL.
    metadata_url: Option<String>,
    served_any: AtomicBool,
}

/// How long clients may cache `tools/list` (per authorization context).
const TOOLS_LIST_TTL_MS: u64 = 60_000;
/// How long clients may cache `server/discover`.
const DISCOVER_TTL_MS: u64 = 3_600_000;

struct CallFacts<'a> {
    inv: &'a Invocation,
    trace: &'a TraceContext,
    started: Instant,
    version: &'a str,
    principal: Option<&'a Principal>,
    denied_agent: Option<String>,
    tool: Option<&'a RegisteredTool>,
    args: &'a Value,
    /// Whether the arguments passed schema validation (only then are `Safe` fields raw).
    validated: bool,
    budget_layer: Option<&'static str>,
    /// Set when the call was admitted on the local bucket (fail open).
    budget_note: Option<&'static str>,
    /// The call's idempotency key as the audit record shows it (hashed, or summarised).
    idempotency_key: Option<Value>,
    /// The task the call created or ran.
    task_id: Option<String>,
}

impl Server {
    /// Assembles a server. Built once per process at cold start.
    pub fn new(
        catalog: Catalog,
        dispatch: Dispatch,
        auth: Authenticator,
        clients: Arc<Clients>,
        audit: Arc<dyn AuditSink>,
        hash_key: Option<HashKey>,
        identity: ServerIdentity,
    ) -> Self {
        let metadata_url = clients
            .config
            .resource_url
            .as_deref()
            .and_then(metadata_url_for);
        let ledger = Ledger::new(
            clients.dynamodb.clone(),
            clients.config.table.clone(),
            clients.config.idempotency_ttl,
            clients.config.idempotency_max_outcome_bytes,
        );
        let tasks =
            crate::task::TaskStore::new(clients.dynamodb.clone(), clients.config.table.clone());
        Self {
            catalog,
            dispatch,
            auth,
            tasks,
            task_starter: None,
            metadata_url,
            config: clients.config.clone(),
            clients,
            audit,
            hash_keys: Arc::new(hash_key.map_or_else(HashKeys::none, HashKeys::fixed)),
            identity,
            budgets: None,
            ledger,
            connections: None,
            served_any: AtomicBool::new(false),
        }
    }

    /// Takes the argument-hashing key from `keys` (Secrets Manager on Lambda).
    pub fn with_hash_keys(mut self, keys: Arc<HashKeys>) -> Self {
        self.hash_keys = keys;
        self
    }

    /// Enforces budgets on `tools/call` (tool functions; the gateway leaves it to them).
    pub fn with_budgets(mut self, budgets: Arc<Budgets>) -> Self {
        self.budgets = Some(budgets);
        self
    }

    /// The budgets this server enforces, if any.
    pub fn budgets(&self) -> Option<&Arc<Budgets>> {
        self.budgets.as_ref()
    }

    /// Starts task runs with `starter` (tool functions whose tools allow tasks).
    pub fn with_task_starter(mut self, starter: Arc<dyn crate::task::TaskStarter>) -> Self {
        self.task_starter = Some(starter);
        self
    }

    /// Serves tools that act on third-party accounts (the connection vault).
    pub fn with_connections(mut self, connections: Arc<crate::connect::Connections>) -> Self {
        self.connections = Some(connections);
        self
    }

    /// The connect pages (`/connect/start`, `/connect/login`) and `GET /connect/callback`:
    /// the user's browser establishing who it is, then returning from the provider. Plain text
    /// or a small form for a person; nothing internal in it.
    async fn connect_page(&self, req: &Request<'_>) -> Response {
        use crate::connect::{CALLBACK_PATH, LOGIN_PATH, Page, START_PATH};
        let text = |status: u16, message: &str| {
            let mut r = Response::empty(status);
            r.body = Some(message.to_owned());
            r.with_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .with_header(http::header::CACHE_CONTROL, "no-store")
        };
        let post_ok = req.path() == START_PATH;
        let method = req.method();
        if !(method == http::Method::GET || (post_ok && method == http::Method::POST)) {
            let allow = if post_ok { "GET, POST" } else { "GET" };
            return Response::empty(405).with_header(http::header::ALLOW, allow);
        }
        let Some(connections) = &self.connections else {
            return text(404, "Not found.");
        };
        let oauth = self.auth.oauth().map(AsRef::as_ref);
        let page = match req.path() {
            START_PATH if method == http::Method::POST => {
                // A form post from this origin only: a cross-site page must not be able to
                // sign a victim's browser in with the attacker's key.
                let own = crate::http::origin_of(&connections.callback_url());
                if req.header("origin").map(str::to_owned) != own {
                    return text(403, "This form must be sent from this site.");
                }
                let (Some(id), Some(key)) = (req.form("id"), req.form("key")) else {
                    return text(400, "This form is incomplete.");
                };
                connections.start_with_key(&id, &key, &self.auth).await
            }
            START_PATH => match req.query("id") {
                Some(id) => connections.start(&id, oauth).await,
                None => Page::Message(
                    400,
                    "This link is incomplete. Ask the agent for a new one.".to_owned(),
                ),
            },
            LOGIN_PATH => {
                if req.query("error").is_some() {
                    return text(400, "The sign-in was not completed. Nothing was connected.");
                }
                match (req.query("state"), req.query("code")) {
                    (Some(state), Some(code)) if code.len() <= 2048 => {
                        let cookie = req.cookie(crate::connect::COOKIE);
                        connections
                            .login(&state, &code, cookie.as_deref(), oauth)
                            .await
                    }
                    _ => Page::Message(
                        400,
                        "This sign-in is incomplete. Nothing was connected.".to_owned(),
                    ),
                }
            }
            CALLBACK_PATH => {
                if let Some(error) = req.query("error") {
                    let shown = if error == "access_denied" {
                        "The authorization was declined. Nothing was connected."
                    } else {
                        "The provider did not authorize the connection. Nothing was connected."
                    };
                    return text(400, shown);
                }
                let (Some(state), Some(code)) = (req.query("state"), req.query("code")) else {
                    return text(400, "This link is incomplete. Ask the agent for a new one.");
                };
                let iss = req.query("iss");
                if state.len() > 128
                    || code.len() > 2048
                    || iss.as_ref().is_some_and(|i| i.len() > 2048)
                {
                    return text(400, "This link is not valid. Ask the agent for a new one.");
                }
                let cookie = req.cookie(crate::connect::COOKIE);
                match connections
                    .callback(&state, &code, iss.as_deref(), cookie.as_deref())
                    .await
                {
                    Ok(message) => Page::Message(200, message),
                    Err(message) => Page::Message(400, message.to_owned()),
                }
            }
            _ => Page::Message(404, "Not found.".to_owned()),
        };
        match page {
            Page::Redirect { location, cookie } => {
                let mut r = Response::empty(303)
                    .with_header(http::header::LOCATION, &location)
                    .with_header(http::header::CACHE_CONTROL, "no-store");
                if let Some(c) = cookie {
                    r = r.with_header(http::header::SET_COOKIE, &c);
                }
                r
            }
            Page::Html(body) => {
                let mut r = Response::empty(200);
                r.body = Some(body);
                r.with_header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
                    .with_header(http::header::CACHE_CONTROL, "no-store")
                    // No `form-action`: browsers apply it to the redirect after the post (to
                    // the provider). `same-origin`, not `no-referrer`: the latter makes the
                    // form's own post carry `Origin: null`, which the post check refuses.
                    .with_header(
                        http::header::CONTENT_SECURITY_POLICY,
                        "default-src 'none'; frame-ancestors 'none'",
                    )
                    .with_header(http::header::REFERRER_POLICY, "same-origin")
            }
            Page::Message(status, message) => text(status, &message),
        }
    }

    /// The tools this server serves.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Handles one API Gateway v2 event.
    pub async fn handle(
        &self,
        event: ApiGatewayV2httpRequest,
        inv: Invocation,
    ) -> ApiGatewayV2httpResponse {
        self.respond(&event, &inv).await.into_event_response()
    }

    /// Handles one event, returning the response before conversion (tests, local stack).
    pub async fn respond(&self, event: &ApiGatewayV2httpRequest, inv: &Invocation) -> Response {
        let started = Instant::now();
        let req = Request::new(event);
        if let Some(suffix) = req.path().strip_prefix(WELL_KNOWN_PRM) {
            return self.protected_resource_metadata(&req, suffix);
        }
        if [
            crate::connect::CALLBACK_PATH,
            crate::connect::START_PATH,
            crate::connect::LOGIN_PATH,
        ]
        .contains(&req.path())
        {
            return Box::pin(self.connect_page(&req)).await;
        }
        if let Err(r) = transport::check(&req, &self.config) {
            let id = match r {
                Rejection::MethodNotAllowed | Rejection::PayloadTooLarge { .. } => None,
                _ => self.peek_id(&req),
            };
            return self.reject(r, id.as_ref());
        }
        let Ok(body) = req.body() else {
            return self.reject(Rejection::Parse(jsonrpc::ParseError::NotJson), None);
        };
        let rpc = match jsonrpc::parse(&body) {
            Ok(Message::Request(rpc)) => rpc,
            Ok(Message::Notification { .. } | Message::Response) => {
                return match Box::pin(self.auth.authenticate(&req)).await {
                    Ok(_) => Response::empty(202),
                    Err(d) => self.deny(&req, d.error.into(), None),
                };
            }
            Err((e, id)) => return self.reject(Rejection::Parse(e), id.as_ref()),
        };
        // One trace per agent request: the server span continues the caller's context.
        let trace = TraceContext::extract(rpc.meta(), req.headers(), inv.trace_id.as_deref());
        let tool = (rpc.method == "tools/call")
            .then(|| rpc.params.get("name").and_then(Value::as_str))
            .flatten()
            .and_then(|n| self.catalog.get(n))
            .map(|t| t.spec().name);
        let span = telemetry::server_span(
            span_method(&rpc.method),
            tool,
            &span_request_id(&rpc.id),
            &trace,
        );
        // Boxed: `respond`'s own future stays small. Every caller (the Lambda handler, the local
        // stack's HTTP front) moves it a few times before its first poll, and inlined, the
        // pipeline's state machine (about 17 KB) was copied each time: about 100 KB of memory
        // copies per call.
        let served = Box::pin(self.serve(&req, event, &rpc, &trace, inv, started));
        telemetry::with_invocation_trace(trace.clone(), served.instrument(span)).await
    }

    /// A parsed JSON-RPC request, inside its server span.
    async fn serve(
        &self,
        req: &Request<'_>,
        event: &ApiGatewayV2httpRequest,
        rpc: &RpcRequest,
        trace: &TraceContext,
        inv: &Invocation,
        started: Instant,
    ) -> Response {
        let negotiated = match negotiate::negotiate(req, rpc) {
            Ok(n) => n,
            Err(r) => return self.reject(r, Some(&rpc.id)),
        };
        tracing::Span::current().record("mcp.protocol.version", negotiated.version.as_str());
        let tasks_served = self.catalog.has_tasks()
            && match negotiated.era {
                Era::Legacy => {
                    negotiated.version == crate::task::TASKS_VERSION
                        && matches!(
                            rpc.method.as_str(),
                            "tasks/get" | "tasks/result" | "tasks/list" | "tasks/cancel"
                        )
                }
                Era::Modern => matches!(
                    rpc.method.as_str(),
                    "tasks/get" | "tasks/update" | "tasks/cancel"
                ),
            };
        let known = is_known_method(negotiated.era, &rpc.method) || tasks_served;
        if !known {
            let http_404 = negotiated.era == Era::Modern;
            return self.reject(Rejection::MethodNotFound { http_404 }, Some(&rpc.id));
        }
        if rpc.method == "tools/call" {
            return self
                .tools_call(req, event, rpc, &negotiated, trace, inv, started)
                .await;
        }
        let principal = match self.auth.authenticate(req).await {
            Ok(p) => p,
            Err(d) => return self.deny(req, d.error.into(), Some(&rpc.id)),
        };
        tracing::Span::current().record("enduser.id", principal.agent_id.as_str());
        if tasks_served {
            return self.tasks_method(rpc, &principal, inv, &negotiated).await;
        }
        let result = match rpc.method.as_str() {
            "initialize" => self.initialize_result(&negotiated.version),
            "ping" => json!({}),
            "server/discover" => self.discover_result(),
            "tools/list" => self.tools_list_result(&principal, &negotiated),
            _ => return self.reject(Rejection::MethodNotFound { http_404: true }, Some(&rpc.id)),
        };
        self.ok(&rpc.id, result, negotiated.era)
    }

    /// The request id of a body refused by a transport check, so its error can echo it.
    fn peek_id(&self, req: &Request<'_>) -> Option<RequestId> {
        if req.body_len_hint() > self.config.max_body_bytes {
            return None;
        }
        match jsonrpc::parse(&req.body().ok()?) {
            Ok(Message::Request(rpc)) => Some(rpc.id),
            Ok(_) => None,
            Err((_, id)) => id,
        }
    }

    /// An error response; its reason is the server span's `error.type` (recorded here only,
    /// so a span holds one).
    fn reject(&self, r: Rejection, id: Option<&RequestId>) -> Response {
        record_rejection(&r);
        r.into_response(id, self.metadata_url.as_deref())
    }

    /// An authentication or scope refusal: its `WWW-Authenticate` names the metadata of the
    /// resource the request addressed (a direct tool route is a resource of its own). A 401 on
    /// a tool route also names the scope that route needs, as the MCP authorization spec
    /// recommends; on `/mcp` clients take the scopes from the metadata.
    fn deny(&self, req: &Request<'_>, r: Rejection, id: Option<&RequestId>) -> Response {
        let tool = self.tool_route(req.path());
        let own = tool
            .and(self.config.resource_url.as_deref())
            .and_then(origin_of)
            .map(|origin| {
                format!(
                    "{origin}{WELL_KNOWN_PRM}{}",
                    req.path().trim_end_matches('/')
                )
            });
        record_rejection(&r);
        let mut resp = r.into_response(id, own.as_deref().or(self.metadata_url.as_deref()));
        if resp.status == 401
            && let Some(tool) = tool
            && let Some(challenge) = resp
                .headers
                .get(http::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
            && let Ok(with_scope) = http::HeaderValue::from_str(&format!(
                "{challenge}, scope=\"{}\"",
                tool.spec().scope
            ))
        {
            resp.headers
                .insert(http::header::WWW_AUTHENTICATE, with_scope);
        }
        resp
    }

    /// The tool a `/tools/{tool}/mcp` path names, when this server serves it.
    fn tool_route(&self, path: &str) -> Option<&RegisteredTool> {
        let name = path
            .trim_end_matches('/')
            .strip_prefix("/tools/")?
            .strip_suffix("/mcp")?;
        self.catalog.get(name).map(AsRef::as_ref)
    }

    /// RFC 9728 protected-resource metadata: the resource URI (the MCP endpoint the path
    /// names), the authorization servers, the scopes tools require and how to send tokens.
    fn protected_resource_metadata(&self, req: &Request<'_>, suffix: &str) -> Response {
        if req.method() != http::Method::GET {
            return Response::empty(405).with_header(http::header::ALLOW, "GET");
        }
        let Some(origin) = self.config.resource_url.as_deref().and_then(origin_of) else {
            return Response::json(404, &json!({"error": "not_found"}));
        };
        let canonical = self.config.resource_url.clone().unwrap_or_default();
        let canonical_path = canonical[origin.len()..].trim_end_matches('/');
        let (resource, scopes) =
            if suffix.is_empty() || suffix.trim_end_matches('/') == canonical_path {
                (canonical, self.catalog.scopes())
            } else if let Some(tool) = self.tool_route(suffix) {
                (
                    format!("{origin}{}", suffix.trim_end_matches('/')),
                    vec![tool.spec().scope],
                )
            } else {
                return Response::json(404, &json!({"error": "not_found"}));
            };
        let mut body = json!({
            "resource": resource,
            "resource_name": self.identity.name,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
        });
        if let Some(issuer) = &self.config.oauth_issuer {
            body["authorization_servers"] = json!([issuer]);
        }
        let mut resp = Response::json(200, &body);
        resp.headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, max-age=3600"),
        );
        resp
    }

    fn ok(&self, id: &RequestId, mut result: Value, era: Era) -> Response {
        if let Value::Object(obj) = &mut result {
            match era {
                Era::Modern => {
                    obj.insert("resultType".to_owned(), json!("complete"));
                    if let Some(meta) = obj
                        .entry("_meta")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                    {
                        meta.insert(
                            META_SERVER_INFO.to_owned(),
                            json!({"name": self.identity.name, "version": self.identity.version}),
                        );
                    }
                }
                Era::Legacy => {
                    obj.remove("resultType");
                }
            }
        }
        Response::json_text(200, jsonrpc::result_text(id, &result))
    }

    fn initialize_result(&self, version: &str) -> Value {
        let mut capabilities = json!({"tools": {}});
        if self.catalog.has_tasks() && version == crate::task::TASKS_VERSION {
            capabilities["tasks"] = json!({
                "list": {},
                "cancel": {},
                "requests": {"tools": {"call": {}}},
            });
        }
        json!({
            "protocolVersion": version,
            "capabilities": capabilities,
            "serverInfo": {"name": self.identity.name, "version": self.identity.version},
            "instructions": INSTRUCTIONS,
        })
    }

    fn discover_result(&self) -> Value {
        let server_info = json!({"name": self.identity.name, "version": self.identity.version});
        let mut capabilities = json!({"tools": {}});
        if self.catalog.has_tasks() {
            capabilities["extensions"] = json!({ crate::task::TASKS_EXTENSION: {} });
        }
        json!({
            "supportedVersions": SUPPORTED_VERSIONS,
            "capabilities": capabilities,
            "serverInfo": server_info,
            "instructions": INSTRUCTIONS,
            "ttlMs": DISCOVER_TTL_MS,
            "cacheScope": "public",
        })
    }

    fn tools_list_result(&self, principal: &Principal, negotiated: &Negotiated) -> Value {
        let tasks = negotiated.version == crate::task::TASKS_VERSION;
        let tools: Vec<Value> = self
            .catalog
            .iter()
            .filter(|t| principal.has_scope(t.spec().scope))
            .filter_map(|t| {
                let mut v = serde_json::to_value(t.descriptor()).ok()?;
                // `execution.taskSupport` exists in 2025-11-25; absent means "forbidden".
                if tasks && t.task_support() != crate::task::TaskSupport::Forbidden {
                    v["execution"] = json!({"taskSupport": t.task_support().as_str()});
                }
                Some(v)
            })
            .collect();
        let mut result = json!({"tools": tools});
        if negotiated.era == Era::Modern {
            result["ttlMs"] = json!(TOOLS_LIST_TTL_MS);
            // The list depends on the caller's scopes: never share it across callers.
            result["cacheScope"] = json!("private");
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn tools_call(
        &self,
        req: &Request<'_>,
        event: &ApiGatewayV2httpRequest,
        rpc: &RpcRequest,
        negotiated: &Negotiated,
        trace: &TraceContext,
        inv: &Invocation,
        started: Instant,
    ) -> Response {
        let empty = json!({});
        let args = rpc.params.get("arguments").unwrap_or(&empty);
        let name = rpc.params.get("name").and_then(Value::as_str);
        let mut facts = CallFacts {
            inv,
            trace,
            started,
            version: &negotiated.version,
            principal: None,
            denied_agent: None,
            // Named for the audit record only; an unauthenticated caller learns nothing of it.
            tool: name.and_then(|n| self.catalog.get(n)).map(AsRef::as_ref),
            args,
            validated: false,
            budget_layer: None,
            budget_note: None,
            idempotency_key: None,
            task_id: None,
        };
        let principal = match self.auth.authenticate(req).await {
            Ok(p) => p,
            Err(d) => {
                facts.denied_agent = d.agent_id;
                self.write_audit(&facts, CallStatus::DeniedAuth, Some(d.error.reason()));
                return self.deny(req, d.error.into(), Some(&rpc.id));
            }
        };
        tracing::Span::current().record("enduser.id", principal.agent_id.as_str());
        self.hash_keys.ensure().await;
        facts.principal = Some(&principal);
        let Some(name) = name else {
            self.write_audit(&facts, CallStatus::InvalidInput, Some("invalid_params"));
            return self.reject(
                Rejection::InvalidParams("params.name must be a string".into()),
                Some(&rpc.id),
            );
        };
        let Some(tool) = self.catalog.get(name) else {
            self.write_audit(&facts, CallStatus::InvalidInput, Some("unknown_tool"));
            return self.reject(Rejection::UnknownTool(printable(name)), Some(&rpc.id));
        };
        facts.tool = Some(tool);
        if !args.is_object() {
            self.write_audit(&facts, CallStatus::InvalidInput, Some("invalid_params"));
            return self.reject(
                Rejection::InvalidParams("params.arguments must be an object".into()),
                Some(&rpc.id),
            );
        }
        let scope = tool.spec().scope;
        if !principal.has_scope(scope) {
            self.write_audit(&facts, CallStatus::DeniedScope, Some("insufficient_scope"));
            return self.deny(
                req,
                Rejection::InsufficientScope {
                    scope: scope.to_owned(),
                },
                Some(&rpc.id),
            );
        }
        // The tool's task support is checked where the capability was declared: the gateway
        // refuses a task call of a tool without it before forwarding.
        let task = match self.task_mode(rpc, negotiated, tool) {
            Ok(task) => task,
            Err((rejection, reason)) => {
                self.write_audit(&facts, CallStatus::InvalidInput, Some(reason));
                return self.reject(rejection, Some(&rpc.id));
            }
        };
        if let Dispatch::Forward(invoker) = &self.dispatch {
            let span = telemetry::invoke_span(tool.spec().name);
            let forwarded = async {
                // Inside the CLIENT span: the tool function's parent is this call.
                let forwarded = forward_event(event, trace);
                let result = invoker.invoke(tool.spec().name, &forwarded, inv).await;
                if let Err(e) = &result {
                    telemetry::record_error(e.kind(), true);
                }
                result
            }
            .instrument(span)
            .await;
            return match forwarded {
                // The tool function wrote the audit record for this call.
                Ok(resp) => resp,
                Err(e) => {
                    tracing::error!(error = %e, tool = tool.spec().name, "forward to tool function failed");
                    self.write_audit(&facts, CallStatus::SystemError, Some("forward_failed"));
                    self.reject(Rejection::Unavailable { retry_after_s: 1 }, Some(&rpc.id))
                }
            };
        }
        if let Some(ttl) = task {
            return self
                .create_task(
                    rpc, negotiated, trace, &principal, tool, args, ttl, &mut facts,
                )
                .await;
        }
        let claim = match self
            .idempotency_step(req, rpc, &principal, tool, args, negotiated, &mut facts)
            .await
        {
            Ok(claim) => claim,
            Err(resp) => return resp,
        };
        let ran = self
            .run_admitted(
                rpc, negotiated, trace, inv, &principal, tool, args, &mut facts,
            )
            .await;
        let (result, admission) = match ran {
            Ran::Outcome { result, admission } => (result, admission),
            Ran::Answer(resp) => {
                if let Some(claim) = &claim {
                    self.release(claim, inv).await;
                }
                return resp;
            }
        };
        let mut value = serde_json::to_value(&result)
            .unwrap_or_else(|_| json!({"content": [], "isError": true}));
        if let Some(claim) = &claim {
            let status = if result.is_error == Some(true) {
                "business_error"
            } else {
                "success"
            };
            let stored_len = value.to_string().len();
            let replayable = self.ledger.keeps(stored_len);
            if let Err(e) = self.ledger.complete(claim, &value, status).await {
                tracing::error!(error = %e, request_id = %inv.request_id, "idempotency record: outcome not stored");
            }
            if let Some(obj) = value.as_object_mut() {
                let meta = obj.entry("_meta").or_insert_with(|| json!({}));
                if let Some(meta) = meta.as_object_mut() {
                    let mut note = json!({"replayed": false, "replayable": replayable});
                    if !replayable {
                        note["note"] = json!(
                            "The result is too large to keep: a retry with the same key will \
                             not repeat the call, and will not return this result either."
                        );
                    }
                    meta.insert(idempotency::META_RESULT.to_owned(), note);
                }
            }
        }
        with_rate_limit(self.ok(&rpc.id, value, negotiated.era), admission.as_ref())
    }

    /// The idempotency step, after authentication and scope, before the budget: `Ok(None)`
    /// for an unkeyed call, `Ok(Some(claim))` when this call runs the tool, `Err(answer)`
    /// when the call is answered here (key missing or invalid, replay, in progress, reused).
    #[allow(clippy::too_many_arguments)]
    async fn idempotency_step(
        &self,
        req: &Request<'_>,
        rpc: &RpcRequest,
        principal: &Principal,
        tool: &RegisteredTool,
        args: &Value,
        negotiated: &Negotiated,
        facts: &mut CallFacts<'_>,
    ) -> Result<Option<Claim>, Response> {
        let mode = tool.idempotency();
        if mode == Idempotency::Ignored {
            return Ok(None);
        }
        let header = req.header(idempotency::HEADER);
        let key = match idempotency::key_from(header, rpc.params.get("_meta")) {
            Ok(k) => k,
            Err(message) => {
                self.write_audit(
                    facts,
                    CallStatus::InvalidInput,
                    Some("invalid_idempotency_key"),
                );
                return Err(self.reject(Rejection::InvalidParams(message), Some(&rpc.id)));
            }
        };
        let Some(key) = key else {
            if mode == Idempotency::Required {
                self.write_audit(
                    facts,
                    CallStatus::InvalidInput,
                    Some("idempotency_key_required"),
                );
                telemetry::record_error("idempotency_key_required", false);
                let result = CallToolResult::error(vec![Content::text(format!(
                    "This tool requires an idempotency key and none was given; nothing was run. \
                     Call it again with a new random key (a UUID) in params._meta[\"{}\"] (or \
                     the Idempotency-Key header), and reuse that key if you retry this operation.",
                    idempotency::META_KEY
                ))]);
                return Err(self.call_result(&rpc.id, &result, negotiated.era));
            }
            return Ok(None);
        };
        let logged = Value::String(key.clone());
        facts.idempotency_key = Some(match self.hash_keys.current() {
            Some(k) => Value::String(k.hash(&logged)),
            None => crate::audit::summarise(&logged),
        });
        let begun = self
            .ledger
            .begin(
                &principal.agent_id,
                tool.spec().name,
                &key,
                &idempotency::arguments_hash(args),
                &facts.inv.request_id,
                facts.inv.deadline,
            )
            .await;
        match begun {
            Ok(Begin::Run(claim)) => Ok(Some(claim)),
            Ok(Begin::Replay(stored)) => {
                self.write_audit(facts, CallStatus::Replayed, None);
                let mut value = stored.result.unwrap_or_else(|| {
                    let text = format!(
                        "This operation already ran with this idempotency key (request {}), \
                         and it was not run again. Its result was too large to keep, so it \
                         cannot be shown again.",
                        stored.request_id
                    );
                    serde_json::to_value(CallToolResult::error(vec![Content::text(text)]))
                        .unwrap_or_else(|_| json!({"content": [], "isError": true}))
                });
                if let Some(obj) = value.as_object_mut() {
                    let meta = obj.entry("_meta").or_insert_with(|| json!({}));
                    if let Some(meta) = meta.as_object_mut() {
                        meta.insert(
                            idempotency::META_RESULT.to_owned(),
                            json!({
                                "replayed": true,
                                "originalRequestId": stored.request_id,
                                "completedAtMs": stored.completed_at_ms,
                                "originalStatus": stored.status,
                            }),
                        );
                    }
                }
                Err(self
                    .ok(&rpc.id, value, negotiated.era)
                    .with_header(http::HeaderName::from_static("idempotent-replayed"), "true"))
            }
            Ok(Begin::InProgress { retry_after_s }) => {
                self.write_audit(
                    facts,
                    CallStatus::InvalidInput,
                    Some("idempotency_in_progress"),
                );
                Err(self.reject(
                    Rejection::IdempotencyInProgress { retry_after_s },
                    Some(&rpc.id),
                ))
            }
            Ok(Begin::Mismatch) => {
                self.write_audit(
                    facts,
                    CallStatus::InvalidInput,
                    Some("idempotency_key_reused"),
                );
                Err(self.reject(Rejection::IdempotencyKeyReused, Some(&rpc.id)))
            }
            Err(e) => {
                tracing::error!(error = %e, request_id = %facts.inv.request_id, "idempotency record unavailable");
                self.write_audit(
                    facts,
                    CallStatus::SystemError,
                    Some("idempotency_store_unavailable"),
                );
                Err(self.reject(Rejection::Unavailable { retry_after_s: 1 }, Some(&rpc.id)))
            }
        }
    }

    /// Frees a claim when the call did nothing a retry must not repeat (awaited before the
    /// response: a Lambda instance freezes after it). A failure only delays a retry until the
    /// lease ends.
    async fn release(&self, claim: &Claim, inv: &Invocation) {
        if let Err(e) = self.ledger.release(claim).await {
            tracing::warn!(error = %e, request_id = %inv.request_id, "idempotency record not released; a retry waits for the lease");
        }
    }

    /// Budgets, validation, the provider token and the run: the part of a call that a
    /// keyed call's record covers.
    #[allow(clippy::too_many_arguments)]
    async fn run_admitted(
        &self,
        rpc: &RpcRequest,
        negotiated: &Negotiated,
        trace: &TraceContext,
        inv: &Invocation,
        principal: &Principal,
        tool: &RegisteredTool,
        args: &Value,
        facts: &mut CallFacts<'_>,
    ) -> Ran {
        let admission = match self.admit(principal, tool, facts).await {
            Ok(a) => a,
            Err(r) => return Ran::Answer(self.reject(r, Some(&rpc.id))),
        };
        if let Err(message) = tool.validate(args) {
            self.write_audit(facts, CallStatus::InvalidInput, Some("schema_validation"));
            telemetry::record_error("schema_validation", false);
            let result = CallToolResult::error(vec![Content::text(message)]);
            return Ran::Answer(with_rate_limit(
                self.call_result(&rpc.id, &result, negotiated.era),
                admission.as_ref(),
            ));
        }
        facts.validated = true;
        let deadline = inv
            .deadline
            .checked_sub(self.config.deadline_margin)
            .unwrap_or(inv.deadline);
        let mut ctx = ToolContext {
            principal: Arc::new(principal.clone()),
            request_id: inv.request_id.clone(),
            deadline,
            clients: self.clients.clone(),
            trace: trace.clone(),
            provider_token: None,
            task: None,
        };
        if let Some(provider) = tool.provider() {
            let token = match &self.connections {
                Some(c) => c.access_token(principal, provider, deadline).await,
                None => Err(crate::connect::ConnectError::Unavailable),
            };
            match token {
                Ok(t) => ctx.provider_token = Some(t),
                Err(e) => {
                    let status = match e {
                        crate::connect::ConnectError::NotConnected { .. }
                        | crate::connect::ConnectError::Reconsent { .. } => {
                            CallStatus::BusinessError
                        }
                        _ => CallStatus::SystemError,
                    };
                    self.write_audit(facts, status, Some(e.reason()));
                    telemetry::record_error(e.reason(), status == CallStatus::SystemError);
                    return Ran::Answer(with_rate_limit(
                        self.connect_answer(rpc, negotiated, provider, &e),
                        admission.as_ref(),
                    ));
                }
            }
        }
        let (status, reason, result) = self.execute(tool, ctx, args, deadline, inv).await;
        self.write_audit(facts, status, reason);
        if status != CallStatus::Success {
            // MCP semantic conventions: a result with `isError` is a `tool_error`.
            telemetry::record_error(
                reason.unwrap_or("tool_error"),
                status == CallStatus::SystemError,
            );
        }
        if status == CallStatus::SystemError {
            // Nothing a retry must not repeat: the record is released.
            return Ran::Answer(with_rate_limit(
                self.call_result(&rpc.id, &result, negotiated.era),
                admission.as_ref(),
            ));
        }
        Ran::Outcome { result, admission }
    }

    /// Runs the tool's handler until `deadline`, panics caught: the audit status, the reason
    /// of a system error, and the result the agent sees.
    async fn execute(
        &self,
        tool: &RegisteredTool,
        ctx: ToolContext,
        args: &Value,
        deadline: Instant,
        inv: &Invocation,
    ) -> (CallStatus, Option<&'static str>, CallToolResult) {
        let handler = telemetry::handler_span(tool.spec().name);
        let run = AssertUnwindSafe(tool.call(ctx, args.clone()).instrument(handler)).catch_unwind();
        match tokio::time::timeout_at(deadline.into(), run).await {
            Ok(Ok(Ok(result))) => (CallStatus::Success, None, result),
            Ok(Ok(Err(ToolError::Business(message)))) => (
                CallStatus::BusinessError,
                None,
                CallToolResult::error(vec![Content::text(message)]),
            ),
            Ok(Ok(Err(ToolError::System(err)))) => {
                tracing::error!(error = %err, tool = tool.spec().name, request_id = %inv.request_id, "tool system error");
                (
                    CallStatus::SystemError,
                    Some("tool_error"),
                    self.system_error_result(inv),
                )
            }
            Ok(Err(_panic)) => {
                tracing::error!(tool = tool.spec().name, request_id = %inv.request_id, "tool panicked");
                (
                    CallStatus::SystemError,
                    Some("tool_panic"),
                    self.system_error_result(inv),
                )
            }
            Err(_elapsed) => {
                tracing::error!(tool = tool.spec().name, request_id = %inv.request_id, "tool timed out");
                (
                    CallStatus::SystemError,
                    Some("deadline_exceeded"),
                    self.system_error_result(inv),
                )
            }
        }
    }

    /// The budget step: `Ok(None)` when this server enforces no budgets.
    async fn admit(
        &self,
        principal: &Principal,
        tool: &RegisteredTool,
        facts: &mut CallFacts<'_>,
    ) -> Result<Option<Admission>, Rejection> {
        let Some(budgets) = &self.budgets else {
            return Ok(None);
        };
        match budgets.admit(principal, tool.spec()).await {
            Ok(a) => {
                if a.fail_open {
                    tracing::warn!(
                        request_id = %facts.inv.request_id,
                        tool = tool.spec().name,
                        agent_id = %principal.agent_id,
                        "admitted on the per-instance bucket: budget store unavailable (fail open)"
                    );
                    facts.budget_note = Some("budget_fail_open");
                }
                Ok(Some(a))
            }
            Err(Refusal::OverBudget {
                bucket,
                retry_after_ms,
                policies,
                ..
            }) => {
                let layer = match bucket.layer {
                    Layer::Agent => "agent",
                    Layer::Tool => "tool",
                };
                facts.budget_layer = Some(layer);
                self.write_audit(facts, CallStatus::RateLimited, Some(bucket.policy.as_str()));
                Err(Rejection::RateLimited(Box::new(RateLimited {
                    layer,
                    policy: bucket.policy.as_str(),
                    limit: bucket.limit,
                    window_s: bucket.window_s,
                    retry_after_ms,
                    policies: policies
                        .iter()
                        .map(|(p, q, w)| (p.as_str(), *q, *w))
                        .collect(),
                })))
            }
            Err(Refusal::Denied { bucket }) => {
                let layer = match bucket.layer {
                    Layer::Agent => "agent",
                    Layer::Tool => "tool",
                };
                facts.budget_layer = Some(layer);
                self.write_audit(facts, CallStatus::RateLimited, Some("budget_zero"));
                Err(Rejection::BudgetDenied {
                    layer,
                    policy: bucket.policy.as_str(),
                })
            }
            Err(_) => {
                self.write_audit(
                    facts,
                    CallStatus::SystemError,
                    Some("budget_store_unavailable"),
                );
                Err(Rejection::Unavailable { retry_after_s: 1 })
            }
        }
    }

    fn system_error_result(&self, inv: &Invocation) -> CallToolResult {
        CallToolResult::error(vec![Content::text(format!(
            "The tool failed because of an internal error (reference {}). \
             Retrying later may succeed; the arguments were not at fault.",
            inv.request_id
        ))])
    }

    /// The answer when the user must connect (or reconnect) a provider, in the form the
    /// caller's protocol version defines for URL-mode elicitation when the request itself
    /// declares the capability (`params._meta["io.modelcontextprotocol/clientCapabilities"]
    /// .elicitation.url`): 2026-07-28 gets an `InputRequiredResult` with an
    /// `elicitation/create` request (`mode: "url"`); 2025-11-25 gets the
    /// `URLElicitationRequiredError` (-32042). Every other request (no declaration on it, a
    /// version without URL mode, or a retry whose user declined or cancelled) gets the
    /// `isError` result with `connect_url`. A stateless server cannot know what a legacy
    /// `initialize` declared, and the spec forbids elicitations of modes the client did not
    /// declare, so the declaration must come with the request.
    fn connect_answer(
        &self,
        rpc: &RpcRequest,
        negotiated: &Negotiated,
        provider: &str,
        e: &crate::connect::ConnectError,
    ) -> Response {
        let fallback = || self.call_result(&rpc.id, &e.to_result(provider), negotiated.era);
        let Some((url, elicitation_id)) = e.link() else {
            return fallback();
        };
        let declared = rpc
            .params
            .get("_meta")
            .and_then(|m| m.get(crate::protocol::META_CLIENT_CAPABILITIES))
            .and_then(|c| c.get("elicitation"))
            .and_then(|c| c.get("url"))
            .is_some_and(Value::is_object);
        let key = format!("connect_{provider}");
        let declined = rpc
            .params
            .get("inputResponses")
            .and_then(|r| r.get(&key))
            .and_then(|r| r.get("action"))
            .and_then(Value::as_str)
            .is_some_and(|a| a == "decline" || a == "cancel");
        let message = e.elicitation_message(provider);
        match negotiated.era {
            Era::Modern if declared && !declined => {
                let result = json!({
                    "resultType": "input_required",
                    "inputRequests": {
                        key: {
                            "method": "elicitation/create",
                            "params": {"mode": "url", "url": url, "message": message},
                        },
                    },
                    "_meta": {
                        META_SERVER_INFO: {"name": self.identity.name, "version": self.identity.version},
                    },
                });
                Response::json_text(200, jsonrpc::result_text(&rpc.id, &result))
            }
            Era::Legacy if declared && negotiated.version == URL_ELICITATION_LEGACY_VERSION => {
                let body = jsonrpc::error_body(
                    Some(&rpc.id),
                    URL_ELICITATION_REQUIRED,
                    "This request requires the user to connect an account first.",
                    Some(json!({
                        "reason": e.reason(),
                        "retry": "after_user_connects",
                        "elicitations": [{
                            "mode": "url",
                            "elicitationId": elicitation_id,
                            "url": url,
                            "message": message,
                        }],
                    })),
                );
                Response::json(200, &body)
            }
            _ => fallback(),
        }
    }

    fn call_result(&self, id: &RequestId, result: &CallToolResult, era: Era) -> Response {
        let value = serde_json::to_value(result)
            .unwrap_or_else(|_| json!({"content": [], "isError": true}));
        self.ok(id, value, era)
    }

    fn write_audit(&self, facts: &CallFacts<'_>, status: CallStatus, reason: Option<&str>) {
        let record = AuditRecord {
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            level: if status == CallStatus::SystemError {
                "ERROR"
            } else {
                "INFO"
            },
            kind: "audit",
            service: self.config.service.clone(),
            function: self.identity.function.clone(),
            cold_start: !self.served_any.swap(true, Ordering::Relaxed),
            request_id: facts.inv.request_id.clone(),
            trace_id: Some(facts.trace.xray_trace_id()),
            agent_id: facts
                .principal
                .map(|p| p.agent_id.clone())
                .or_else(|| facts.denied_agent.clone()),
            auth_method: facts.principal.map(|p| p.method.as_str()),
            tool: facts.tool.map(|t| t.spec().name.to_owned()),
            protocol_version: Some(facts.version.to_owned()),
            latency_ms: u64::try_from(facts.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            status,
            reason: reason.or(facts.budget_note).map(str::to_owned),
            budget_layer: facts.budget_layer.map(str::to_owned),
            idempotency_key: facts.idempotency_key.clone(),
            task_id: facts.task_id.clone(),
            arguments: facts.principal.map(|_| {
                redact_arguments(
                    facts.tool,
                    facts.args,
                    self.hash_keys.current().as_ref(),
                    facts.validated,
                )
            }),
        };
        self.audit.write(&record);
    }
}

/// The event the gateway forwards: the caller's, with this invocation's span as the trace
/// parent (in the headers and, when the caller used it, in `params._meta`).
fn forward_event(event: &ApiGatewayV2httpRequest, trace: &TraceContext) -> ApiGatewayV2httpRequest {
    let mut out = event.clone();
    for (name, value) in trace.outgoing_headers() {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            out.headers.insert(http::HeaderName::from_static(name), v);
        }
    }
    if trace.source == crate::telemetry::trace::TraceSource::Meta
        && !out.is_base64_encoded
        && let Some(body) = &out.body
        && let Ok(mut v) = serde_json::from_str::<Value>(body)
        && let Some(meta) = v
            .pointer_mut("/params/_meta")
            .and_then(Value::as_object_mut)
    {
        let tp = trace.outgoing_headers().swap_remove(0).1;
        meta.insert("traceparent".to_owned(), Value::String(tp));
        out.body = Some(v.to_string());
    }
    out
}

/// How the part of a call after the idempotency step ended.
enum Ran {
    /// Answered without an outcome to keep (refused, invalid, system error): a keyed call's
    /// record is released.
    Answer(Response),
    /// The tool ran and answered (a result or a business error): kept for replays.
    Outcome {
        result: CallToolResult,
        admission: Option<Admission>,
    },
}

/// Marks the server span with the refusal (`error.type`; an error status for server faults).
fn record_rejection(r: &Rejection) {
    let server_fault = match r {
        Rejection::Unavailable { .. } | Rejection::Internal => true,
        Rejection::Auth(a) => a.is_unavailable(),
        _ => false,
    };
    telemetry::record_error(r.reason(), server_fault);
}

/// JSON-RPC code of 2025-11-25's `URLElicitationRequiredError`.
pub const URL_ELICITATION_REQUIRED: i32 = -32042;
/// The one legacy version with URL-mode elicitation.
const URL_ELICITATION_LEGACY_VERSION: &str = "2025-11-25";

/// The RFC 9728 well-known prefix.
pub const WELL_KNOWN_PRM: &str = "/.well-known/oauth-protected-resource";

/// The path-specific metadata URL of a resource (RFC 9728 section 3.1): the well-known prefix
/// inserted between the origin and the resource's path.
pub fn metadata_url_for(resource: &str) -> Option<String> {
    let origin = origin_of(resource)?;
    let path = resource[origin.len()..].trim_end_matches('/');
    Some(format!("{origin}{WELL_KNOWN_PRM}{path}"))
}

/// Adds `RateLimit-Policy` and `RateLimit` to an admitted call's response.
fn with_rate_limit(resp: Response, admission: Option<&Admission>) -> Response {
    let Some(a) = admission else {
        return resp;
    };
    let policies: Vec<_> = a
        .policies
        .iter()
        .map(|(p, q, w)| (p.as_str(), *q, *w))
        .collect();
    let resp = resp.with_header(
        http::HeaderName::from_static("ratelimit-policy"),
        &rate_limit_policy_header(&policies),
    );
    match a.tightest {
        Some((policy, remaining, reset_s)) => resp.with_header(
            http::HeaderName::from_static("ratelimit"),
            &rate_limit_header(policy.as_str(), remaining, reset_s),
        ),
        None => resp,
    }
}

/// Methods served in each era; anything else is "method not found".
fn is_known_method(era: Era, method: &str) -> bool {
    match era {
        Era::Legacy => matches!(method, "initialize" | "ping" | "tools/list" | "tools/call"),
        Era::Modern => matches!(method, "server/discover" | "tools/list" | "tools/call"),
    }
}

/// The method as a span names it: a method MCP defines, else `_OTHER` (the caller's string
/// never becomes a span name).
fn span_method(method: &str) -> &str {
    match method {
        "initialize" | "ping" | "tools/list" | "tools/call" | "server/discover" | "tasks/get"
        | "tasks/result" | "tasks/list" | "tasks/cancel" | "tasks/update" => method,
        _ => "_OTHER",
    }
}

/// The JSON-RPC id as a span attribute: numbers as they are, strings printable and bounded.
fn span_request_id(id: &RequestId) -> String {
    match id {
        RequestId::Number(n) => n.to_string(),
        RequestId::String(s) => printable(s),
    }
}

const INSTRUCTIONS: &str = "Tools served by tollgate. Every call is authenticated, rate limited \
and audited. A result with isError explains what to change; HTTP 429 means wait for Retry-After; \
HTTP 403 with a permanently-denied code means do not retry.";

pub mod forward;
#[cfg(feature = "test-util")]
pub mod in_process;
mod negotiate;
mod tasks;
#[cfg(test)]
mod tests;
mod transport;
