//! The tool authoring API: what a tool declares and what its handler gets and returns.
//!
//! A tool is a type implementing [`Tool`]: typed input (`Deserialize + JsonSchema`, every field
//! documented: the doc comments become the schema the agent reads), an output ([`Json`] for
//! structured output with a generated output schema, or `String` for text), and a [`ToolSpec`]
//! with its name, annotations, required scope, default budget and how each input field may
//! appear in logs. The input schema is generated from the type, never written by hand.

mod task;

use crate::protocol::META_IDEMPOTENCY_KEY;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
pub use task::{TaskHandle, TaskRecordLink, TaskState, TaskSupport};

use rmcp::model::{CallToolResult, ContentBlock as Content};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::Principal;
use crate::config::Config;

/// MCP tool annotations (hints to clients; see the MCP `ToolAnnotations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Annotations {
    /// The tool does not modify its environment.
    pub read_only: bool,
    /// The tool may perform destructive or irreversible updates.
    pub destructive: bool,
    /// Calling it again with the same arguments has no additional effect.
    pub idempotent: bool,
    /// The tool interacts with an open world of external entities.
    pub open_world: bool,
}

/// What a tool does when the budget store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StoreFailure {
    /// Refuse the call with 503 and `Retry-After` (the default for tools with side effects).
    FailClosed,
    /// Admit on a per-instance local bucket (documented, logged, counted).
    FailOpen,
}

/// A tool's default budget (calls per minute with a burst), overridable as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DefaultBudget {
    /// Sustained calls per minute across every caller.
    pub per_minute: u32,
    /// Calls that may arrive at once on an idle bucket.
    pub burst: u32,
    /// Behaviour when the budget store fails.
    pub on_store_failure: StoreFailure,
}

impl DefaultBudget {
    /// A budget of `per_minute` calls with a burst of `burst`, failing closed.
    pub const fn per_minute(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute,
            burst,
            on_store_failure: StoreFailure::FailClosed,
        }
    }

    /// The same budget, failing open on a local bucket when the store is down.
    pub const fn fail_open(mut self) -> Self {
        self.on_store_failure = StoreFailure::FailOpen;
        self
    }
}

/// How an input field may appear in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LogAs {
    /// Keyed hash (HMAC-SHA256) of the value: joinable across records, not reversible.
    Hashed,
    /// Type and size only. The default for every field not declared otherwise.
    Summarised,
    /// The raw value (for enums, flags, small numbers: nothing personal).
    Safe,
}

/// Everything a tool declares besides its types.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    /// Tool name as agents call it (`[A-Za-z0-9_.-]`, 1 to 64 characters).
    pub name: &'static str,
    /// Human-readable title.
    pub title: &'static str,
    /// What the tool does, written for the model.
    pub description: &'static str,
    /// The scope a principal must hold to list or call the tool.
    pub scope: &'static str,
    /// MCP annotations.
    pub annotations: Annotations,
    /// Default budget.
    pub budget: DefaultBudget,
    /// How input fields may be logged; fields not named here are [`LogAs::Summarised`].
    pub log_fields: &'static [(&'static str, LogAs)],
}

/// Clients built once per process (at cold start) and borrowed by every call.
#[derive(Debug, Clone)]
pub struct Clients {
    /// DynamoDB client (honours `AWS_ENDPOINT_URL_DYNAMODB`).
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// HTTP client for downstream APIs (connection pool shared across calls).
    pub http: reqwest::Client,
    /// Secrets Manager client, made by the first call that needs it ([`crate::aws::Lazy`]).
    pub secretsmanager: crate::aws::Lazy<aws_sdk_secretsmanager::Client>,
    /// KMS client (the connection vault's encryption), made by the first call that needs it.
    pub kms: crate::aws::Lazy<aws_sdk_kms::Client>,
    /// The process configuration.
    pub config: Arc<Config>,
}

/// What a tool handler gets besides its input.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// Who is calling.
    pub principal: Arc<Principal>,
    /// The invocation's request id (Lambda request id, or the local stack's).
    pub request_id: String,
    /// When the tool must have answered; the runtime cancels it at this instant.
    pub deadline: Instant,
    /// Shared AWS and HTTP clients.
    pub clients: Arc<Clients>,
    /// The trace this call belongs to; pass [`ToolContext::trace_headers`] on downstream calls.
    pub trace: crate::telemetry::trace::TraceContext,
    /// The user's access token at the tool's provider, when the tool declares one.
    pub provider_token: Option<ProviderToken>,
    /// The task this run belongs to, when the call was task-augmented (see [`crate::task`]).
    pub task: Option<Arc<TaskHandle>>,
}

impl ToolContext {
    /// Headers that carry the trace to a downstream HTTP call (`traceparent`,
    /// `X-Amzn-Trace-Id`, `tracestate`). Never credentials: the agent's token stays here.
    pub fn trace_headers(&self) -> Vec<(&'static str, String)> {
        self.trace.outgoing_headers()
    }

    /// Sends a downstream HTTP request in its own CLIENT span, carrying the trace headers
    /// (that span as the parent). Never adds credentials: the agent's token stays here.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        use tracing::Instrument as _;
        let (client, request) = request.build_split();
        let mut request = request?;
        let span = crate::telemetry::http_client_span(request.method(), request.url());
        async {
            for (name, value) in self.trace_headers() {
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    request.headers_mut().insert(name, v);
                }
            }
            let result = client.execute(request).await;
            crate::telemetry::record_http_outcome(&tracing::Span::current(), &result);
            result
        }
        .instrument(span)
        .await
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Reports progress (`progress` of `total`, and a status message the agent sees) on the
    /// call's task; written at a bounded rate, a no-op for a call that is not a task.
    pub async fn report_progress(&self, progress: f64, total: Option<f64>, message: Option<&str>) {
        if let Some(task) = &self.task {
            task.report(progress, total, message).await;
        }
    }

    /// Whether the call's task was cancelled: the handler should stop (the task stays
    /// `cancelled` whatever it returns). Always `false` for a call that is not a task.
    pub fn is_cancelled(&self) -> bool {
        self.task.as_ref().is_some_and(|t| t.is_cancelled())
    }

    /// Resolves when the call's task is cancelled (never for a call that is not a task): a
    /// handler may `select!` its work against it.
    pub async fn cancelled(&self) {
        match &self.task {
            Some(t) => t.cancelled().await,
            None => std::future::pending().await,
        }
    }
}

/// A tool call did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The agent's fault (not found, not allowed by business rules...): the message is shown to
    /// the model as an `isError` result, so it must say what to change and hold nothing secret.
    #[error("{0}")]
    Business(String),
    /// The system's fault: logged with the request id; the model sees a generic message.
    #[error("system error: {0}")]
    System(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ToolError {
    /// A business error with a message for the model.
    pub fn business(message: impl Into<String>) -> Self {
        Self::Business(message.into())
    }

    /// A system error from any error value.
    pub fn system(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::System(err.into())
    }
}

/// A tool's successful result type.
pub trait ToolOutput: Send + 'static {
    /// The output schema advertised in `tools/list`, when the output is structured.
    fn output_schema() -> Option<serde_json::Map<String, serde_json::Value>>;
    /// Into the MCP result.
    fn into_result(self) -> CallToolResult;
}

impl ToolOutput for String {
    fn output_schema() -> Option<serde_json::Map<String, serde_json::Value>> {
        None
    }

    fn into_result(self) -> CallToolResult {
        CallToolResult::success(vec![Content::text(self)])
    }
}

/// A raw MCP result, for tools that return images, audio or embedded resources.
impl ToolOutput for CallToolResult {
    fn output_schema() -> Option<serde_json::Map<String, serde_json::Value>> {
        None
    }

    fn into_result(mut self) -> CallToolResult {
        self.result_type = None;
        self
    }
}

/// Structured output: serialised as `structuredContent` (and, for older clients, as JSON text).
#[derive(Debug, Clone, PartialEq)]
pub struct Json<T>(pub T);

impl<T: Serialize + JsonSchema + Send + 'static> ToolOutput for Json<T> {
    fn output_schema() -> Option<serde_json::Map<String, serde_json::Value>> {
        Some(schema_object::<T>())
    }

    fn into_result(self) -> CallToolResult {
        match serde_json::to_value(&self.0) {
            Ok(value) => {
                let mut result = CallToolResult::structured(value);
                result.result_type = None;
                result
            }
            Err(_) => CallToolResult::error(vec![Content::text(
                "The tool produced a result that could not be encoded.",
            )]),
        }
    }
}

/// A tool: typed input, typed output, declared behaviour.
pub trait Tool: Send + Sync + 'static {
    /// Arguments, deserialised after they validate against the generated schema.
    type Input: DeserializeOwned + JsonSchema + Send + 'static;
    /// Successful result.
    type Output: ToolOutput;

    /// Name, scope, annotations, budget and log plan.
    fn spec(&self) -> ToolSpec;

    /// The third-party provider (`TOLLGATE_PROVIDERS`) this tool acts on for the user. The
    /// handler then receives a ready access token in [`ToolContext::provider_token`]; when the
    /// user has not connected (or must consent again), the framework answers with the connect
    /// link and the handler does not run.
    fn provider(&self) -> Option<&'static str> {
        None
    }

    /// Whether the tool takes an idempotency key (see [`crate::idempotency`]): by default
    /// ignored for read-only or idempotent tools, optional (and honoured) for the others.
    /// Override to require one (payments, emails, deploys).
    fn idempotency(&self) -> Idempotency {
        Idempotency::from_annotations(&self.spec().annotations)
    }

    /// Whether the tool may or must be called as a task (`execution.taskSupport` in
    /// `tools/list`); by default it may not. A tool that allows tasks gets a
    /// [`ToolContext::task`] on task runs: progress reports and cancellation.
    fn task_support(&self) -> TaskSupport {
        TaskSupport::Forbidden
    }

    /// The longest a task run of this tool may take (capped by `TOLLGATE_TASK_MAX_RUN_SECS`
    /// and, on Lambda, the function's timeout); `None` for the cap itself. Calls that are not
    /// tasks keep the invocation's deadline.
    fn task_time_limit(&self) -> Option<std::time::Duration> {
        None
    }

    /// Runs the tool. Cancelled at `ctx.deadline`; a panic is caught and becomes a system error.
    fn call(
        &self,
        ctx: ToolContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, ToolError>> + Send;
}

/// An access token for a provider, ready for a downstream call. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ProviderToken {
    /// The provider.
    pub provider: String,
    access_token: String,
    /// Expiry, Unix ms.
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderToken")
            .field("provider", &self.provider)
            .field("access_token", &"[redacted]")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl ProviderToken {
    /// A token for `provider`, valid until `expires_at_ms` (Unix ms).
    pub fn new(
        provider: impl Into<String>,
        access_token: impl Into<String>,
        expires_at_ms: u64,
    ) -> Self {
        Self {
            provider: provider.into(),
            access_token: access_token.into(),
            expires_at_ms,
        }
    }

    /// The value of an `Authorization` header for the provider's API.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.access_token)
    }
}

/// A JSON object.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The JSON Schema (draft 2020-12) of `T`, as an object.
pub fn schema_object<T: JsonSchema>() -> JsonObject {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<T>();
    match schema.to_value() {
        serde_json::Value::Object(map) => map,
        // `true` / `false` schemas: any object.
        _ => JsonObject::from_iter([("type".to_owned(), "object".into())]),
    }
}

/// Whether a tool takes an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Idempotency {
    /// A call without a key is answered with an `isError` result asking for one.
    Required,
    /// A key is honoured when given.
    Optional,
    /// Keys are not looked at (read-only or idempotent tools: a retry is harmless).
    Ignored,
}

impl Idempotency {
    /// The default for a tool: ignored for read-only or idempotent tools, otherwise optional
    /// (and honoured).
    pub fn from_annotations(a: &Annotations) -> Self {
        if a.read_only || a.idempotent {
            Self::Ignored
        } else {
            Self::Optional
        }
    }

    /// The sentence appended to the tool's description in `tools/list`.
    pub fn description(self) -> Option<String> {
        match self {
            Self::Required => Some(format!(
                " Requires an idempotency key: pass a new random key (e.g. a UUID) for each \
                 distinct operation in params._meta[\"{META_IDEMPOTENCY_KEY}\"] (or the Idempotency-Key \
                 header), and the same key when retrying it; a retry then returns the first \
                 outcome instead of acting twice."
            )),
            Self::Optional => Some(format!(
                " Accepts an idempotency key in params._meta[\"{META_IDEMPOTENCY_KEY}\"] (or the \
                 Idempotency-Key header): a retry with the same key returns the first outcome \
                 instead of acting twice."
            )),
            Self::Ignored => None,
        }
    }
}
