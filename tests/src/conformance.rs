//! The MCP conformance fixture server: a tools-only tollgate server exposing the fixture tools
//! the official conformance suite (`@modelcontextprotocol/conformance`, server scenarios)
//! calls by name, served over loopback HTTP through the same front door as the local stack.
//!
//! The suite sends no credentials, so the server admits every request as one fixed principal
//! holding the fixtures' scope ([`Authenticator::admit_all_as`]); everything else (transport
//! checks, version negotiation, header rules, validation, results) is the real pipeline.
//! Task-augmented calls (the `tasks-*` scenarios, [`crate::conformance_tasks`]) keep their
//! records in the tollgate table on a DynamoDB-protocol server (moto, started by `run.sh`) and
//! run in the background like the local stack's ([`tollgate::server::in_process::InProcessStarter`]).
//! `tests/conformance/run.sh` drives it; `tests/conformance/README.md` lists what runs.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use rmcp::model::{CallToolResult, ContentBlock, ResourceContents};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use tollgate::audit::{AuditSink, StdoutSink};
use tollgate::auth::Authenticator;
use tollgate::catalog::CatalogError;
use tollgate::server::{Dispatch, ServerIdentity};
use tollgate::{
    Annotations, AuthMethod, Catalog, Config, DefaultBudget, Principal, Server, Tool, ToolContext,
    ToolError, ToolSpec,
};

use crate::conformance_tasks as tasks;
use crate::http_front::{Routes, app};

/// The scope every fixture tool requires (and the fixed principal holds).
pub const SCOPE: &str = "conformance:call";

/// The agent id the suite's requests are attributed to.
pub const AGENT_ID: &str = "conformance-suite";

/// A 1x1 red PNG.
pub const PNG_1X1_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";

/// Arguments of the tools that take none.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

/// A fixture tool's spec: read-only, the fixture scope, no logged fields.
pub(crate) fn spec(name: &'static str, title: &'static str, description: &'static str) -> ToolSpec {
    ToolSpec {
        name,
        title,
        description,
        scope: SCOPE,
        annotations: Annotations {
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        // Declared for completeness; the fixture server enforces no budgets (see [`server`]).
        budget: DefaultBudget::per_minute(6_000, 1_000),
        log_fields: &[],
    }
}

/// Arguments of `echo`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EchoInput {
    /// Text to send back; `echo` answers with a fixed text when omitted.
    #[serde(default)]
    pub text: Option<String>,
}

/// `echo`: the first tool in `tools/list` (names sort), so it must succeed with `{}`: the
/// `http-header-validation` scenario calls the first listed tool with empty arguments.
#[derive(Debug, Clone, Copy)]
pub struct Echo;

impl Tool for Echo {
    type Input = EchoInput;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "echo",
            "Echo",
            "Returns its `text` argument unchanged, or `echo` when called without one.",
        )
    }

    async fn call(&self, _ctx: ToolContext, input: EchoInput) -> Result<String, ToolError> {
        Ok(input.text.unwrap_or_else(|| "echo".to_owned()))
    }
}

/// `test_simple_text` (scenario `tools-call-simple-text`).
#[derive(Debug, Clone, Copy)]
pub struct SimpleText;

impl Tool for SimpleText {
    type Input = NoArguments;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "test_simple_text",
            "Simple text",
            "Returns a fixed text content item.",
        )
    }

    async fn call(&self, _ctx: ToolContext, _input: NoArguments) -> Result<String, ToolError> {
        Ok("This is a simple text response for testing.".to_owned())
    }
}

/// `test_image_content` (scenario `tools-call-image`).
#[derive(Debug, Clone, Copy)]
pub struct ImageContent;

impl Tool for ImageContent {
    type Input = NoArguments;
    type Output = CallToolResult;

    fn spec(&self) -> ToolSpec {
        spec(
            "test_image_content",
            "Image content",
            "Returns a 1x1 PNG image content item.",
        )
    }

    async fn call(
        &self,
        _ctx: ToolContext,
        _input: NoArguments,
    ) -> Result<CallToolResult, ToolError> {
        Ok(CallToolResult::success(vec![ContentBlock::image(
            PNG_1X1_BASE64,
            "image/png",
        )]))
    }
}

/// `test_audio_content` (scenario `tools-call-audio`).
#[derive(Debug, Clone, Copy)]
pub struct AudioContent;

impl Tool for AudioContent {
    type Input = NoArguments;
    type Output = CallToolResult;

    fn spec(&self) -> ToolSpec {
        spec(
            "test_audio_content",
            "Audio content",
            "Returns a short silent WAV audio content item.",
        )
    }

    async fn call(
        &self,
        _ctx: ToolContext,
        _input: NoArguments,
    ) -> Result<CallToolResult, ToolError> {
        let data = base64::engine::general_purpose::STANDARD.encode(silent_wav());
        Ok(CallToolResult::success(vec![ContentBlock::audio(
            data,
            "audio/wav",
        )]))
    }
}

/// A valid 8 kHz, 8-bit mono PCM WAV file holding 8 samples of silence.
pub fn silent_wav() -> Vec<u8> {
    const SAMPLES: u32 = 8;
    const RATE: u32 = 8_000;
    let mut wav = Vec::with_capacity(44 + SAMPLES as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + SAMPLES).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&RATE.to_le_bytes()); // sample rate
    wav.extend_from_slice(&RATE.to_le_bytes()); // byte rate (1 byte per sample)
    wav.extend_from_slice(&1u16.to_le_bytes()); // block align
    wav.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&SAMPLES.to_le_bytes());
    wav.extend(std::iter::repeat_n(0x80u8, SAMPLES as usize)); // 8-bit PCM silence
    wav
}

/// `test_embedded_resource` (scenario `tools-call-embedded-resource`).
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedResource;

impl Tool for EmbeddedResource {
    type Input = NoArguments;
    type Output = CallToolResult;

    fn spec(&self) -> ToolSpec {
        spec(
            "test_embedded_resource",
            "Embedded resource",
            "Returns an embedded text resource.",
        )
    }

    async fn call(
        &self,
        _ctx: ToolContext,
        _input: NoArguments,
    ) -> Result<CallToolResult, ToolError> {
        let resource = ResourceContents::text(
            "This is an embedded resource content.",
            "test://embedded-resource",
        )
        .with_mime_type("text/plain");
        Ok(CallToolResult::success(vec![ContentBlock::resource(
            resource,
        )]))
    }
}

/// `test_multiple_content_types` (scenario `tools-call-mixed-content`).
#[derive(Debug, Clone, Copy)]
pub struct MultipleContentTypes;

impl Tool for MultipleContentTypes {
    type Input = NoArguments;
    type Output = CallToolResult;

    fn spec(&self) -> ToolSpec {
        spec(
            "test_multiple_content_types",
            "Multiple content types",
            "Returns a text, an image and an embedded JSON resource in one result.",
        )
    }

    async fn call(
        &self,
        _ctx: ToolContext,
        _input: NoArguments,
    ) -> Result<CallToolResult, ToolError> {
        let resource = ResourceContents::text(
            r#"{"test":"data","value":123}"#,
            "test://mixed-content-resource",
        )
        .with_mime_type("application/json");
        Ok(CallToolResult::success(vec![
            ContentBlock::text("Multiple content types test:"),
            ContentBlock::image(PNG_1X1_BASE64, "image/png"),
            ContentBlock::resource(resource),
        ]))
    }
}

/// `test_error_handling` (scenario `tools-call-error`): always a business error, which the
/// pipeline returns as an `isError` result.
#[derive(Debug, Clone, Copy)]
pub struct ErrorHandling;

impl Tool for ErrorHandling {
    type Input = NoArguments;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "test_error_handling",
            "Error handling",
            "Always fails with a tool error result.",
        )
    }

    async fn call(&self, _ctx: ToolContext, _input: NoArguments) -> Result<String, ToolError> {
        Err(ToolError::business(
            "This tool intentionally returns an error for testing",
        ))
    }
}

/// `test_logging_tool` (scenario `server-stateless`, check
/// `sep-2575-server-no-log-without-loglevel`): the suite calls it without a log level and
/// checks that no `notifications/message` reaches the client. tollgate never sends log
/// notifications (responses are single JSON objects), so the tool just answers.
#[derive(Debug, Clone, Copy)]
pub struct LoggingTool;

impl Tool for LoggingTool {
    type Input = NoArguments;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "test_logging_tool",
            "Logging probe",
            "Answers with a fixed text; the server sends no log notifications for it.",
        )
    }

    async fn call(&self, _ctx: ToolContext, _input: NoArguments) -> Result<String, ToolError> {
        Ok("Logging probe completed without client log notifications.".to_owned())
    }
}

/// `test_streaming_elicitation` (scenario `server-stateless`, check
/// `sep-2575-http-server-no-independent-requests-on-stream`): the suite calls it declaring the
/// elicitation capability and checks that the response carries no server-to-client request.
/// tollgate tools cannot elicit (there is no response stream), so the tool just answers.
#[derive(Debug, Clone, Copy)]
pub struct StreamingElicitation;

impl Tool for StreamingElicitation {
    type Input = NoArguments;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "test_streaming_elicitation",
            "Elicitation probe",
            "Answers with a fixed text; the server never sends requests to the client.",
        )
    }

    async fn call(&self, _ctx: ToolContext, _input: NoArguments) -> Result<String, ToolError> {
        Ok("Elicitation probe completed without server-to-client requests.".to_owned())
    }
}

/// How `json_schema_2020_12_tool` prefers to be contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactMethod {
    /// By phone.
    Phone,
    /// By email.
    Email,
}

/// A postal address (`$defs/address`).
#[derive(Debug, Clone, Deserialize)]
pub struct Address {
    /// Street and number.
    pub street: Option<String>,
    /// City.
    pub city: Option<String>,
}

/// Arguments of `json_schema_2020_12_tool`.
///
/// Its schema is the conformance suite's JSON Schema 2020-12 fixture, written out by hand
/// (the one exception to "schemas are generated"): the scenario checks that `$schema`, `$defs`
/// with `$anchor`, `allOf`/`anyOf`, `if`/`then`/`else` and `additionalProperties` survive into
/// `tools/list`, which derive output cannot express.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContactInput {
    /// Name.
    pub name: Option<String>,
    /// Postal address.
    pub address: Option<Address>,
    /// Preferred contact method.
    pub contact_method: Option<ContactMethod>,
    /// Phone number.
    pub phone: Option<String>,
    /// Email address.
    pub email: Option<String>,
}

impl JsonSchema for ContactInput {
    fn schema_name() -> Cow<'static, str> {
        "ContactInput".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {
                    "$anchor": "addressDef",
                    "type": "object",
                    "properties": {
                        "street": {"type": "string"},
                        "city": {"type": "string"}
                    }
                }
            },
            "properties": {
                "name": {"type": "string"},
                "address": {"$ref": "#/$defs/address"},
                "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                "phone": {"type": "string"},
                "email": {"type": "string"}
            },
            "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
            "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
            "then": {"required": ["phone"]},
            "else": {"required": ["email"]},
            "additionalProperties": false
        })
    }
}

/// `json_schema_2020_12_tool` (scenario `json-schema-2020-12`).
#[derive(Debug, Clone, Copy)]
pub struct JsonSchema202012;

impl Tool for JsonSchema202012 {
    type Input = ContactInput;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "json_schema_2020_12_tool",
            "JSON Schema 2020-12",
            "Tool with JSON Schema 2020-12 features",
        )
    }

    async fn call(&self, _ctx: ToolContext, input: ContactInput) -> Result<String, ToolError> {
        let method = match (input.contact_method, input.phone.is_some()) {
            (Some(ContactMethod::Phone), _) | (None, true) => "phone",
            _ => "email",
        };
        Ok(format!(
            "Contact details accepted; preferred method: {method}."
        ))
    }
}

/// Every fixture tool.
pub fn catalog() -> Result<Catalog, CatalogError> {
    Catalog::new()
        .register(Echo)?
        .register(SimpleText)?
        .register(ImageContent)?
        .register(AudioContent)?
        .register(EmbeddedResource)?
        .register(MultipleContentTypes)?
        .register(ErrorHandling)?
        .register(LoggingTool)?
        .register(StreamingElicitation)?
        .register(JsonSchema202012)?
        .register(tasks::Greet)?
        .register(tasks::SlowCompute)?
        .register(tasks::FailingJob)?
        .register(tasks::ProtocolErrorJob)?
        .register(tasks::ConfirmDelete)
}

/// The principal every request is admitted as.
pub fn principal() -> Principal {
    Principal {
        agent_id: AGENT_ID.to_owned(),
        scopes: BTreeSet::from([SCOPE.to_owned()]),
        method: AuthMethod::ApiKey,
        credential_id: "conformance-fixture".to_owned(),
        budget: Default::default(),
        user: None,
    }
}

/// The configuration: the environment, with `TOLLGATE_RESOURCE_URL` defaulting to `url`
/// (the loopback URL served, which also makes the server apply its loopback Host rules).
pub fn config(url: &str, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
    Ok(Config::from_lookup(|key| match env(key) {
        Some(v) if !v.is_empty() => Some(v),
        _ if key == "TOLLGATE_RESOURCE_URL" => Some(url.to_owned()),
        other => other,
    })?)
}

/// How long a background task run may take (a Lambda function's longest timeout).
pub const TASK_RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// An SDK configuration that reaches no service (a static region, no credentials): for a
/// fixture that creates no tasks.
pub fn offline_sdk() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::from_static("us-east-1"))
        .build()
}

/// The fixture server for `config`, writing audit records to `audit`, its AWS clients built
/// from `sdk`. It enforces no budgets (the suite is not about them) and looks up no keys; the
/// one table it uses is the tollgate table's task records, and the task runs are background
/// tasks of this process on the same server.
pub fn server(
    config: Config,
    audit: Arc<dyn AuditSink>,
    sdk: &aws_config::SdkConfig,
) -> anyhow::Result<Arc<Server>> {
    let config = Arc::new(config);
    let clients = Arc::new(tollgate::lambda::build_clients(sdk, config.clone())?);
    let identity = ServerIdentity {
        function: "conformance-server".to_owned(),
        name: config.service.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let catalog = catalog()?;
    let starter = tollgate::server::in_process::InProcessStarter::new(TASK_RUN_TIMEOUT);
    let server = Arc::new(
        Server::new(
            catalog.clone(),
            Dispatch::Local,
            Authenticator::admit_all_as(principal()),
            clients,
            audit,
            None,
            identity,
        )
        .with_task_starter(starter.clone()),
    );
    let runs_on: HashMap<String, Arc<Server>> = catalog
        .iter()
        .filter(|t| t.task_support() != tollgate::task::TaskSupport::Forbidden)
        .map(|t| (t.spec().name.to_owned(), server.clone()))
        .collect();
    starter.set_servers(&runs_on);
    Ok(server)
}

/// The DynamoDB-protocol server the task records live on: `AWS_ENDPOINT_URL_DYNAMODB`, which
/// must be a loopback `http://` URL (`run.sh` starts moto there).
pub fn dynamodb_endpoint(value: Option<String>) -> anyhow::Result<String> {
    let url = value.filter(|v| !v.is_empty()).context(
        "AWS_ENDPOINT_URL_DYNAMODB is not set: the fixture keeps task records on a local \
         DynamoDB-protocol server (tests/conformance/run.sh starts one)",
    )?;
    let authority = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    anyhow::ensure!(
        authority.starts_with("127.0.0.1:") || authority.starts_with("localhost:"),
        "AWS_ENDPOINT_URL_DYNAMODB must be a loopback http:// URL with a port, got {url:?}"
    );
    Ok(url)
}

/// The port to serve on: the first argument, else `PORT`, else 0 (any free port).
pub fn port(
    args: impl IntoIterator<Item = String>,
    env_port: Option<String>,
) -> anyhow::Result<u16> {
    match args.into_iter().nth(1).or(env_port) {
        None => Ok(0),
        Some(p) => p
            .trim()
            .parse()
            .with_context(|| format!("invalid port {p:?}")),
    }
}

/// Serves the fixture on `127.0.0.1:port` at `/mcp` until interrupted. Prints
/// `conformance-server listening on <url>` on stderr once the socket is bound.
pub async fn run(port: u16) -> anyhow::Result<()> {
    tollgate::lambda::init_logging();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("bind 127.0.0.1:{port}"))?;
    let port = listener.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let config = config(&url, |k| std::env::var(k).ok())?;
    let sdk = crate::moto::sdk_config(&dynamodb_endpoint(
        std::env::var("AWS_ENDPOINT_URL_DYNAMODB").ok(),
    )?);
    tollgate::store::DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), config.table.clone())
        .create_table()
        .await
        .context("create the tollgate table (is the DynamoDB-protocol server up?)")?;
    let server = server(config, Arc::new(StdoutSink), &sdk)?;
    let routes = Routes {
        gateway: server,
        tools: HashMap::new(),
        timeout: Duration::from_secs(30),
    };
    eprintln!("conformance-server listening on {url}");
    axum::serve(listener, app(routes))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[cfg(test)]
#[path = "conformance_tests.rs"]
mod tests;
