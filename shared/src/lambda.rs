//! The Lambda entry points: build configuration and clients once at cold start, then serve
//! API Gateway v2 events through the real `lambda_runtime` loop.
//!
//! A tool function's `main` is one line: `tollgate::lambda::run_tool(MyTool::new)`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use lambda_runtime::{LambdaEvent, service_fn};

use crate::audit::hash_key::HashKeys;
use crate::audit::{AuditSink, StdoutSink};
use crate::auth::Authenticator;
use crate::budget::{AgentDefaults, Budgets};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::server::forward::LambdaInvoker;
use crate::server::{Dispatch, Invocation, Server, ServerIdentity};
use crate::store::DynamoStore;
use crate::tool::{Clients, Tool};

/// What a function's `main` returns.
pub type Exit = Result<(), lambda_runtime::Error>;

/// Serves one tool as its own function (`POST /tools/{tool}/mcp`, and the gateway's forwards).
/// A tool that may run as a task is served by [`run_task_tool`] instead: this entry point
/// refuses it at init, and links no Lambda client.
pub fn run_tool<T: Tool>(make: impl FnOnce() -> T) -> Exit {
    run(move |_, _| Ok(tool_setup(Catalog::new().register(make())?, None)?))
}

/// Serves one tool that may run as a task (`TaskSupport::Optional` or `Required`): as
/// [`run_tool`], and a task run is started by an asynchronous `Invoke` of this function itself.
pub fn run_task_tool<T: Tool>(make: impl FnOnce() -> T) -> Exit {
    run(move |sdk, function| {
        let starter = crate::task::LambdaStarter::new(aws_sdk_lambda::Client::new(sdk), function);
        Ok(tool_setup(
            Catalog::new().register(make())?,
            Some(Arc::new(starter)),
        )?)
    })
}

/// A tool function's setup: its tasks are started by `starter`, which a tool declaring task
/// support cannot do without.
fn tool_setup(
    catalog: Catalog,
    starter: Option<Arc<dyn crate::task::TaskStarter>>,
) -> Result<Setup, SetupError> {
    if catalog.has_tasks() && starter.is_none() {
        return Err(SetupError::TasksNeedStarter);
    }
    let tasks = starter.filter(|_| catalog.has_tasks());
    Ok(Setup {
        catalog,
        dispatch: Dispatch::Local,
        tasks,
    })
}

/// Serves the aggregating gateway (`POST /mcp`): lists every tool in `catalog`, forwards calls
/// to `TOLLGATE_FUNCTION_PREFIX` + tool name by Lambda `Invoke`.
pub fn run_gateway(
    catalog: impl FnOnce() -> Result<Catalog, crate::catalog::CatalogError>,
) -> Exit {
    run(move |sdk, _| {
        let prefix = std::env::var("TOLLGATE_FUNCTION_PREFIX")
            .map_err(|_| "TOLLGATE_FUNCTION_PREFIX must be set for the gateway")?;
        let invoker = LambdaInvoker::new(aws_sdk_lambda::Client::new(sdk), prefix);
        Ok(Setup {
            catalog: catalog()?,
            dispatch: Dispatch::Forward(Arc::new(invoker)),
            tasks: None,
        })
    })
}

/// What a function serves and how.
struct Setup {
    catalog: Catalog,
    dispatch: Dispatch,
    /// How the function starts its own task runs, when its tool may run as a task.
    tasks: Option<Arc<dyn crate::task::TaskStarter>>,
}

/// Why a function's setup was refused at init.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum SetupError {
    /// A tool declaring task support served by [`run_tool`].
    #[error(
        "this tool declares task support: its function's main must call tollgate::lambda::run_task_tool"
    )]
    TasksNeedStarter,
}

fn run(
    setup: impl FnOnce(&aws_config::SdkConfig, &str) -> Result<Setup, lambda_runtime::Error>,
) -> Exit {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "tollgate".into());
    // The extra CA bundle, when one is named, is read before anything makes a client.
    let trust = crate::tls::Trust::process()?;
    crate::telemetry::install(&crate::telemetry::TelemetryConfig::from_env(), &function);
    install_panic_hook();
    let mode = Mode::from_env();
    let rt = runtime(mode)?;
    rt.block_on(async move {
        let config = Arc::new(Config::from_env()?);
        let sdk = sdk_config_from_env(&trust);
        let Setup {
            catalog,
            dispatch,
            tasks,
        } = setup(&sdk, &config.function_name)?;
        let clients = Arc::new(build_clients(&sdk, config.clone())?);
        let function = config.function_name.clone();
        let mut server = build_server(catalog, dispatch, clients, Arc::new(StdoutSink), &function);
        if let Some(starter) = tasks {
            // A tool function runs its own tasks: an `Event` invoke of itself.
            server = server.with_task_starter(starter);
        }
        let server = Arc::new(server);
        let sync_cap = sync_timeout()?;
        let handler = service_fn(move |event: LambdaEvent<Incoming>| {
            let server = server.clone();
            async move {
                let mut inv = invocation_of(&event.context);
                if let (Some(cap), Incoming::Http(_)) = (sync_cap, &event.payload) {
                    // A function whose timeout covers task runs still answers calls in time.
                    inv.deadline = inv.deadline.min(Instant::now() + cap);
                }
                let out = match event.payload {
                    Incoming::Task(task) => {
                        Box::pin(server.run_task(task.tollgate_task, inv)).await;
                        Outgoing::TaskRun(())
                    }
                    Incoming::Http(event) => {
                        Outgoing::Http(Box::pin(server.handle(*event, inv)).await)
                    }
                };
                Ok::<_, lambda_runtime::Error>(out)
            }
        });
        if let Mode::Concurrent(n) = mode {
            tracing::info!(
                max_concurrency = n,
                "managed instances: serving concurrent invocations"
            );
        }
        lambda_runtime::Runtime::new(handler)
            .layer(lambda_runtime::layers::TracingLayer::new())
            .layer(lambda_runtime::tower::layer::layer_fn(move |inner| {
                FlushAfterResponse { inner, mode }
            }))
            // One invocation at a time unless `AWS_LAMBDA_MAX_CONCURRENCY` > 1 (Lambda Managed
            // Instances): then that many workers, each polling `/next` on its own.
            .run_concurrent()
            .await
    })
}

/// The Tokio runtime. Classic Lambda serves one invocation at a time, on a current-thread
/// runtime: the Lambda runtime's poll loop, the handler and every connection's I/O task (hyper
/// spawns one per connection) run on the main thread, so a call's path has no wake-ups between
/// threads and init starts no worker thread. (A multi-thread runtime polls `block_on`'s future
/// on the main thread and spawned tasks on a worker: each HTTP exchange then hands its request
/// and its response between the two threads through futexes.) Managed Instances serve
/// invocations concurrently, on one worker per CPU. `TOKIO_WORKER_THREADS`, when set, asks
/// for a multi-thread runtime of that many workers in either mode.
fn runtime(mode: Mode) -> std::io::Result<tokio::runtime::Runtime> {
    if mode == Mode::Sequential && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// `TOLLGATE_SYNC_TIMEOUT_MS`: the longest an API Gateway event (a call, not a task run) may
/// take, for functions whose Lambda timeout is longer to cover task runs.
fn sync_timeout() -> Result<Option<Duration>, crate::config::ConfigError> {
    match std::env::var("TOLLGATE_SYNC_TIMEOUT_MS") {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(
                |e: std::num::ParseIntError| crate::config::ConfigError::Invalid {
                    name: "TOLLGATE_SYNC_TIMEOUT_MS",
                    reason: e.to_string(),
                },
            ),
    }
}

/// What a function is invoked with: an API Gateway event, or (tool functions) a task run
/// started by an asynchronous `Invoke` of itself.
#[derive(Debug)]
enum Incoming {
    Task(Box<crate::task::TaskEvent>),
    Http(Box<ApiGatewayV2httpRequest>),
}

impl<'de> serde::Deserialize<'de> for Incoming {
    /// A task run is the one payload with a `tollgate_task` member. The payload is read once as
    /// raw JSON, probed for that member (skipping every other value unparsed) and parsed as
    /// the one shape it is, with that shape's own error when it is malformed. (An untagged
    /// enum would copy every string of an API Gateway event into an intermediate tree and try
    /// the task shape on it first: about 3 % of a warm call's CPU.)
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Probe {
            tollgate_task: Option<serde::de::IgnoredAny>,
        }
        use serde::de::Error as _;
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        if !may_name_a_task(raw.get()) {
            // Cannot have the member: parsed as the API Gateway event at once, without the probe.
            return serde_json::from_str(raw.get())
                .map(Self::Http)
                .map_err(D::Error::custom);
        }
        let probe: Probe = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
        if probe.tollgate_task.is_some() {
            serde_json::from_str(raw.get())
                .map(Self::Task)
                .map_err(D::Error::custom)
        } else {
            serde_json::from_str(raw.get())
                .map(Self::Http)
                .map_err(D::Error::custom)
        }
    }
}

/// Whether a payload's JSON text can have a `tollgate_task` member: it names it, or it has a
/// `\u` escape (a member name may spell any of its letters that way). An API Gateway event
/// seldom does either, and is then parsed without the probe, one pass fewer over the event.
fn may_name_a_task(json: &str) -> bool {
    json.contains("tollgate_task") || json.contains("\\u")
}

/// What a function answers: the API Gateway response, or `null` for a task run (an
/// asynchronous invoke, whose result nobody reads).
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // one per invocation, serialized where it is made
enum Outgoing {
    Http(ApiGatewayV2httpResponse),
    TaskRun(()),
}

/// How this execution environment is served, from `AWS_LAMBDA_MAX_CONCURRENCY` (Lambda sets
/// it on Managed Instances; `lambda_runtime` reads the same variable to size its workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Classic Lambda: one invocation at a time, the environment frozen between them.
    Sequential,
    /// Lambda Managed Instances: up to this many invocations at once, never frozen.
    Concurrent(u32),
}

impl Mode {
    /// From the process environment.
    pub fn from_env() -> Self {
        Self::parse(std::env::var("AWS_LAMBDA_MAX_CONCURRENCY").ok().as_deref())
    }

    /// From the variable's value; unset, unparsable, 0 or 1 is sequential, as the runtime
    /// reads it.
    pub fn parse(value: Option<&str>) -> Self {
        // Exactly the runtime's reading (no trimming): the two must agree on the mode.
        match value.and_then(|v| v.parse::<u32>().ok()) {
            Some(n) if n > 1 => Self::Concurrent(n),
            _ => Self::Sequential,
        }
    }
}

/// Exports the invocation's spans once its response has been posted to the Runtime API.
///
/// - Sequential (classic Lambda): awaited before the next event is polled, so the environment
///   is not frozen with spans still buffered; the response never waits on the exporters.
/// - Concurrent (Managed Instances, never frozen): started and not awaited, so this worker
///   polls `/next` at once, and no in-flight invocation waits on another's export. One export
///   runs at a time ([`crate::telemetry::flush_in_background`]), covering every response posted
///   before it began.
#[derive(Clone)]
struct FlushAfterResponse<S> {
    inner: S,
    mode: Mode,
}

impl<S> lambda_runtime::tower::Service<lambda_runtime::LambdaInvocation> for FlushAfterResponse<S>
where
    S: lambda_runtime::tower::Service<lambda_runtime::LambdaInvocation, Response = ()>,
    S::Future: Send + 'static,
    S::Error: Send,
{
    type Response = ();
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, invocation: lambda_runtime::LambdaInvocation) -> Self::Future {
        let served = self.inner.call(invocation);
        let mode = self.mode;
        Box::pin(async move {
            let result = served.await;
            match mode {
                Mode::Sequential => crate::telemetry::flush().await,
                Mode::Concurrent(_) => crate::telemetry::flush_in_background(),
            }
            result
        })
    }
}

/// The AWS SDK configuration from the environment alone, with the HTTPS client of
/// [`crate::tls::Trust`]. Touches no network and reads no file: credentials resolve on the
/// first request.
///
/// A function finds what Lambda gives it in its environment: `AWS_REGION` (or
/// `AWS_DEFAULT_REGION`); the role's credentials in `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, or, where the platform serves them from a
/// container endpoint, `AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI`; endpoints from
/// `AWS_ENDPOINT_URL_<SERVICE>` then `AWS_ENDPOINT_URL` (a local DynamoDB server), unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`. The SDK's default chains (profile files, SSO,
/// web identity, IMDS and their STS client) are not linked into a function; with no
/// credentials in the environment every AWS request fails with an error saying so.
pub fn sdk_config_from_env(trust: &crate::tls::Trust) -> aws_config::SdkConfig {
    sdk_config_with(aws_types::os_shim_internal::Env::real(), trust)
}

fn sdk_config_with(
    env: aws_types::os_shim_internal::Env,
    trust: &crate::tls::Trust,
) -> aws_config::SdkConfig {
    use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
    let var = |name: &str| env.get(name).ok().filter(|v| !v.is_empty());
    let http = trust.aws_http_client();
    let ignore_endpoints =
        var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .http_client(http.clone())
        .service_config(EnvEndpoints {
            env: env.clone(),
            ignore: ignore_endpoints,
        });
    if let Some(region) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
        sdk = sdk.region(aws_config::Region::new(region));
    }
    if let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        // Lambda's credentials stay valid for the execution environment's life.
        sdk = sdk.credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            key,
            secret,
            var("AWS_SESSION_TOKEN"),
            None,
            "environment",
        )));
    } else if var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
        || var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
    {
        // The container endpoint's variables are read from the process environment.
        let provider_config =
            aws_config::provider_config::ProviderConfig::without_region().with_http_client(http);
        sdk = sdk.credentials_provider(SharedCredentialsProvider::new(
            aws_config::ecs::EcsCredentialsProvider::builder()
                .configure(&provider_config)
                .build(),
        ));
    } else {
        sdk = sdk.credentials_provider(SharedCredentialsProvider::new(NoCredentials));
    }
    if !ignore_endpoints && let Some(url) = var("AWS_ENDPOINT_URL") {
        sdk = sdk.endpoint_url(url);
    }
    sdk.build()
}

/// `AWS_ENDPOINT_URL_<SERVICE>` (the service's id, upper case, spaces as `_`: `DYNAMODB`,
/// `SECRETS_MANAGER`, `KMS`, `LAMBDA`) for each client made from the configuration; the
/// generic `AWS_ENDPOINT_URL` is the configuration's own endpoint.
#[derive(Debug)]
struct EnvEndpoints {
    env: aws_types::os_shim_internal::Env,
    ignore: bool,
}

impl aws_types::service_config::LoadServiceConfig for EnvEndpoints {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        if self.ignore && key.env() == "AWS_ENDPOINT_URL" {
            return None;
        }
        let service = key.service_id().to_uppercase().replace(' ', "_");
        self.env
            .get(&format!("{}_{service}", key.env()))
            .ok()
            .filter(|v| !v.is_empty())
    }
}

/// The credentials provider when the environment holds none: each request fails saying so.
#[derive(Debug)]
struct NoCredentials;

impl aws_credential_types::provider::ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no AWS credentials in the environment (AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or AWS_CONTAINER_CREDENTIALS_FULL_URI)",
            ),
        ))
    }
}

/// Clients shared by every call: one DynamoDB client, one pooled HTTP client (TLS from
/// [`crate::tls::Trust::process`]).
pub fn build_clients(
    sdk: &aws_config::SdkConfig,
    config: Arc<Config>,
) -> Result<Clients, reqwest::Error> {
    let trust = crate::tls::Trust::process().unwrap_or_default();
    let http = trust
        .reqwest()
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    // Every DynamoDB call made inside a traced request gets its own CLIENT span.
    let dynamodb = aws_sdk_dynamodb::config::Builder::from(sdk)
        .interceptor(crate::telemetry::AwsSdkSpans)
        .build();
    Ok(Clients {
        dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb),
        http,
        // Made by the first call that needs them: most calls never do.
        secretsmanager: {
            let sdk = sdk.clone();
            crate::aws::Lazy::new(move || aws_sdk_secretsmanager::Client::new(&sdk))
        },
        kms: {
            let sdk = sdk.clone();
            crate::aws::Lazy::new(move || aws_sdk_kms::Client::new(&sdk))
        },
        config,
    })
}

/// The OAuth verifier when OAuth tokens are accepted (introspection credentials from
/// Secrets Manager).
pub fn build_oauth(clients: &Clients) -> Option<Arc<crate::auth::oauth::OAuthVerifier>> {
    use crate::auth::oauth::{CredentialSource, OAuthVerifier, SecretsManagerCredentials};
    let oauth = clients.config.auth.oauth.clone()?;
    let credentials = oauth.introspection_secret.clone().map(|id| {
        Box::new(SecretsManagerCredentials::new(
            clients.secretsmanager.clone(),
            id,
        )) as Box<dyn CredentialSource>
    });
    Some(Arc::new(OAuthVerifier::new(
        oauth,
        clients.http.clone(),
        credentials,
    )))
}

/// A server over `catalog` with the DynamoDB-backed authenticator.
pub fn build_server(
    catalog: Catalog,
    dispatch: Dispatch,
    clients: Arc<Clients>,
    audit: Arc<dyn AuditSink>,
    function: &str,
) -> Server {
    let config = clients.config.clone();
    let store = Arc::new(DynamoStore::new(
        clients.dynamodb.clone(),
        config.table.clone(),
    ));
    let auth = Authenticator::new(store.clone(), config.key_cache_ttl).with_config(
        &config.auth,
        build_oauth(&clients),
        config.resource_url.as_deref(),
    );
    let local = matches!(dispatch, Dispatch::Local);
    let identity = ServerIdentity {
        function: function.to_owned(),
        name: clients.config.service.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let mut server = Server::new(
        catalog,
        dispatch,
        auth,
        clients.clone(),
        audit,
        None,
        identity,
    );
    if let Some(secret) = &config.hash_key_secret {
        server = server.with_hash_keys(Arc::new(HashKeys::secrets_manager(
            clients.secretsmanager.clone(),
            secret.clone(),
            config.hash_key_ttl,
        )));
    }
    if !config.connect.providers.is_empty() {
        // Tools acting on third-party accounts, and the gateway's connect callback.
        match crate::connect::Connections::new(
            &clients,
            clients.kms.clone(),
            config.connect.clone(),
        ) {
            Some(c) => server = server.with_connections(Arc::new(c)),
            None => tracing::error!(
                "providers are configured but no callback URL: set TOLLGATE_CONNECT_CALLBACK_URL or TOLLGATE_RESOURCE_URL"
            ),
        }
    }
    if !local {
        // The gateway forwards; the tool function enforces the budgets once.
        return server;
    }
    let defaults = AgentDefaults {
        per_minute: config.agent_per_minute,
        per_day: config.agent_per_day,
    };
    let budgets = Budgets::new(
        store.clone(),
        store,
        defaults,
        config.budget_timeout,
        config.policy_cache_ttl,
    )
    .with_leases(config.leases);
    server.with_budgets(Arc::new(budgets))
}

/// Deadlines below this are durations, not Unix times: some Runtime API emulators (cargo
/// lambda watch) send the timeout itself in `Lambda-Runtime-Deadline-Ms`.
const UNIX_MS_FLOOR: u64 = 1_000_000_000_000;

fn invocation_of(ctx: &lambda_runtime::Context) -> Invocation {
    let now_ms = crate::store::now_ms();
    let left = if ctx.deadline < UNIX_MS_FLOOR {
        ctx.deadline
    } else {
        ctx.deadline.saturating_sub(now_ms)
    };
    Invocation {
        request_id: ctx.request_id.clone(),
        deadline: Instant::now() + Duration::from_millis(left),
        trace_id: ctx.xray_trace_id.clone(),
    }
}

/// Panics are caught and answered as system errors; their messages may carry argument values,
/// so the hook logs only where the panic happened, never its message.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            location,
            "panic (message withheld: it may hold argument values)"
        );
    }));
}

/// JSON logs on stdout, filtered by `AWS_LAMBDA_LOG_LEVEL` (Lambda's log-level control) or
/// `RUST_LOG`, default `info`; no span export ([`crate::telemetry::install`] adds it).
pub fn init_logging() {
    crate::telemetry::install(&crate::telemetry::TelemetryConfig::off(), "tollgate");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Mode, SetupError, tool_setup};
    use crate::catalog::Catalog;
    use crate::task::TaskSupport;
    use crate::tool::{Annotations, DefaultBudget, Tool, ToolContext, ToolError, ToolSpec};

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    struct In {
        #[allow(dead_code)]
        n: u8,
    }

    struct Probe(TaskSupport);

    impl Tool for Probe {
        type Input = In;
        type Output = String;

        fn spec(&self) -> ToolSpec {
            ToolSpec {
                name: "probe",
                title: "Probe",
                description: "Test tool.",
                scope: "probe:run",
                annotations: Annotations::default(),
                budget: DefaultBudget::per_minute(10, 1),
                log_fields: &[],
            }
        }

        fn task_support(&self) -> TaskSupport {
            self.0
        }

        async fn call(&self, _ctx: ToolContext, _input: In) -> Result<String, ToolError> {
            Ok(String::new())
        }
    }

    #[derive(Debug)]
    struct Starter;

    #[async_trait::async_trait]
    impl crate::task::TaskStarter for Starter {
        async fn start(&self, _job: &crate::task::TaskJob) -> Result<(), String> {
            Ok(())
        }
    }

    fn catalog(support: TaskSupport) -> Catalog {
        Catalog::new().register(Probe(support)).expect("register")
    }

    #[test]
    fn a_tool_declaring_task_support_needs_the_task_entry_point() {
        for support in [TaskSupport::Optional, TaskSupport::Required] {
            assert_eq!(
                tool_setup(catalog(support), None).err(),
                Some(SetupError::TasksNeedStarter)
            );
            let served = tool_setup(catalog(support), Some(Arc::new(Starter))).expect("setup");
            assert!(served.tasks.is_some());
        }
        // A tool without task support starts no task, whichever entry point serves it.
        let plain = tool_setup(catalog(TaskSupport::Forbidden), None).expect("setup");
        assert!(plain.tasks.is_none());
        let plain = tool_setup(catalog(TaskSupport::Forbidden), Some(Arc::new(Starter)));
        assert!(plain.expect("setup").tasks.is_none());
    }

    #[test]
    fn concurrency_mode_reads_the_variable_as_the_runtime_does() {
        assert_eq!(Mode::parse(None), Mode::Sequential);
        for one_at_a_time in ["", "0", "1", "-4", "many", "4.5", " 64 "] {
            assert_eq!(
                Mode::parse(Some(one_at_a_time)),
                Mode::Sequential,
                "{one_at_a_time}"
            );
        }
        assert_eq!(Mode::parse(Some("2")), Mode::Concurrent(2));
        assert_eq!(Mode::parse(Some("64")), Mode::Concurrent(64));
    }
}

#[cfg(test)]
mod event_tests {
    use super::{Incoming, Outgoing};

    /// As `lambda_runtime` reads an invocation's body.
    fn read(body: &str) -> Result<Incoming, String> {
        let de = &mut serde_json::Deserializer::from_str(body);
        serde_path_to_error::deserialize(de).map_err(|e| e.to_string())
    }

    fn task_job() -> serde_json::Value {
        serde_json::json!({
            "task_id": "t-1",
            "principal": {"agent_id": "bot", "scopes": ["tickets:read"], "method": "api_key",
                          "credential_id": "k1",
                          "budget": {"per_minute": null, "per_day": null, "tools": {}}},
            "tool": "export_tickets",
            "arguments": {"since": "2026-01-01"},
            "trace": [["traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]],
            "protocol_version": "2025-11-25",
        })
    }

    #[test]
    fn an_api_gateway_fixture_is_an_http_event() {
        let body = include_str!("../../events/gateway.agent-disabled.json");
        match read(body).expect("an API Gateway event") {
            Incoming::Http(e) => {
                assert_eq!(e.raw_path.as_deref(), Some("/mcp"));
                assert!(e.body.as_deref().is_some_and(|b| b.contains("tools/call")));
            }
            Incoming::Task(_) => panic!("read as a task run"),
        }
    }

    #[test]
    fn a_tollgate_task_member_makes_a_task_run_wherever_it_stands() {
        let job = task_job();
        for body in [
            serde_json::json!({"tollgate_task": job}).to_string(),
            format!(r#"{{"version":"2.0","other":[1,{{"a":null}}],"tollgate_task":{job}}}"#),
        ] {
            match read(&body).expect("a task run") {
                Incoming::Task(t) => {
                    assert_eq!(t.tollgate_task.task_id, "t-1");
                    assert_eq!(t.tollgate_task.tool, "export_tickets");
                }
                Incoming::Http(_) => panic!("read as an HTTP event: {body}"),
            }
        }
    }

    #[test]
    fn a_member_name_spelled_with_escapes_is_still_found() {
        // `\u005f` is `_`: the text does not contain `tollgate_task`, the member is there.
        let body = format!(r#"{{"tollgate\u005ftask":{}}}"#, task_job());
        assert!(!body.contains("tollgate_task"));
        assert!(matches!(read(&body), Ok(Incoming::Task(_))), "{body}");
    }

    #[test]
    fn an_http_event_that_mentions_the_member_in_its_body_stays_an_http_event() {
        let mut event: serde_json::Value =
            serde_json::from_str(include_str!("../../events/gateway.agent-disabled.json"))
                .expect("fixture");
        event["body"] = serde_json::Value::String(r#"{"tollgate_task": "spoof"}"#.into());
        match read(&event.to_string()).expect("an API Gateway event") {
            Incoming::Http(e) => assert!(e.body.as_deref().is_some_and(|b| b.contains("spoof"))),
            Incoming::Task(_) => panic!("read as a task run"),
        }
    }

    #[test]
    fn a_malformed_payload_is_refused_with_its_shapes_reason() {
        let mut job = task_job();
        job.as_object_mut().expect("object").remove("tool");
        let e = read(&serde_json::json!({"tollgate_task": job}).to_string())
            .expect_err("a task without its tool is refused");
        assert!(e.contains("missing field `tool`"), "{e}");
        let e = read(r#"{"version": 2}"#).expect_err("a bad HTTP event is refused");
        assert!(e.contains("invalid type"), "{e}");
        for bad in ["[]", "\"x\"", "{", ""] {
            assert!(read(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_response_is_the_api_gateway_shape_and_a_task_run_answers_null() {
        let mut resp = aws_lambda_events::apigw::ApiGatewayV2httpResponse::default();
        resp.status_code = 429;
        resp.body = Some("{}".into());
        let v = serde_json::to_value(Outgoing::Http(resp.clone())).expect("serializes");
        assert_eq!(v, serde_json::to_value(resp).expect("serializes"));
        assert_eq!(v["statusCode"], 429);
        assert_eq!(
            serde_json::to_string(&Outgoing::TaskRun(())).expect("serializes"),
            "null"
        );
    }
}

#[cfg(test)]
mod sdk_config_tests {
    use aws_types::os_shim_internal::Env;
    use aws_types::service_config::{LoadServiceConfig as _, ServiceConfigKey};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::{EnvEndpoints, sdk_config_with};

    /// One HTTP exchange on loopback: answers `{}` and hands back the request's head.
    async fn one_request() -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let served = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "request cut short");
                head.extend_from_slice(&buf[..n]);
            }
            conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: 2\r\n\r\n{}",
            )
            .await
            .expect("write");
            String::from_utf8_lossy(&head).to_lowercase()
        });
        (url, served)
    }

    fn get_item(
        sdk: &aws_config::SdkConfig,
    ) -> aws_sdk_dynamodb::operation::get_item::builders::GetItemFluentBuilder {
        aws_sdk_dynamodb::Client::new(sdk)
            .get_item()
            .table_name("t")
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("k".into()))
    }

    #[tokio::test]
    async fn the_environment_names_region_credentials_and_the_service_endpoint() {
        let (url, served) = one_request().await;
        let env = Env::from_slice(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDENVTEST"),
            ("AWS_SECRET_ACCESS_KEY", "not-a-real-secret"),
            ("AWS_SESSION_TOKEN", "session-token-from-env"),
            // The service's own variable wins over the generic one (nothing listens there).
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ENDPOINT_URL_DYNAMODB", &url),
        ]);
        let sdk = sdk_config_with(env, &crate::tls::Trust::default());
        get_item(&sdk)
            .send()
            .await
            .expect("the request reaches the named endpoint");
        let head = served.await.expect("served");
        assert!(head.contains("credential=akidenvtest/"), "{head}");
        assert!(head.contains("/eu-west-1/dynamodb/aws4_request"), "{head}");
        assert!(
            head.contains("x-amz-security-token: session-token-from-env"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn without_credentials_in_the_environment_each_request_fails_saying_so() {
        let (url, served) = one_request().await;
        let env = Env::from_slice(&[("AWS_REGION", "eu-west-1"), ("AWS_ENDPOINT_URL", &url)]);
        let sdk = sdk_config_with(env, &crate::tls::Trust::default());
        let err = get_item(&sdk).send().await.expect_err("no credentials");
        let chain = format!(
            "{:?}",
            aws_smithy_types::error::display::DisplayErrorContext(&err)
        );
        assert!(
            chain.contains("no AWS credentials in the environment"),
            "{chain}"
        );
        assert!(!served.is_finished(), "nothing was sent");
        served.abort();
    }

    #[test]
    fn secrets_manager_and_kms_clients_are_made_by_their_first_use_with_the_same_configuration() {
        let env = Env::from_slice(&[("AWS_REGION", "eu-west-1")]);
        let sdk = sdk_config_with(env, &crate::tls::Trust::default());
        let config =
            std::sync::Arc::new(crate::config::Config::from_lookup(|_| None).expect("config"));
        let clients = super::build_clients(&sdk, config).expect("clients");
        assert!(!clients.secretsmanager.is_made(), "not made at init");
        assert!(!clients.kms.is_made(), "not made at init");
        let copy = clients.clone();
        let region = copy.kms.get().config().region().map(ToString::to_string);
        assert_eq!(region.as_deref(), Some("eu-west-1"));
        assert!(clients.kms.is_made(), "clones share the client made");
        assert!(!clients.secretsmanager.is_made());
        let region = clients
            .secretsmanager
            .get()
            .config()
            .region()
            .map(ToString::to_string);
        assert_eq!(region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn service_endpoints_come_from_the_environment_unless_told_to_ignore_them() {
        let key = ServiceConfigKey::builder()
            .service_id("Secrets Manager")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .expect("key");
        let env = Env::from_slice(&[("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:4566")]);
        let endpoints = EnvEndpoints {
            env: env.clone(),
            ignore: false,
        };
        assert_eq!(
            endpoints.load_config(key.clone()).as_deref(),
            Some("http://127.0.0.1:4566")
        );
        let ignored = EnvEndpoints { env, ignore: true };
        assert_eq!(ignored.load_config(key), None);
    }
}
