//! Spans: OpenTelemetry with X-Ray-compatible ids, exported to X-Ray and/or OTLP, and the
//! subscriber that also writes the JSON logs.
//!
//! - **Ids.** [`XrayIdGenerator`] (first 32 bits of a trace id: epoch seconds). The request's
//!   server span continues the trace [`TraceContext`] decided: the caller's span is its remote
//!   parent, and its own trace and span ids are pinned to the context's, so the audit record,
//!   the span tree and the headers sent downstream all name the same ids.
//! - **Propagation.** Outgoing calls name the *enclosing* span (the `Lambda.Invoke` or HTTP
//!   CLIENT span) as the parent, in `traceparent` and `X-Amzn-Trace-Id` ([`current_span`]);
//!   AWS SDK calls get a CLIENT span each and carry both headers naming it ([`AwsSdkSpans`]).
//! - **Export.** X-Ray segments over UDP to the daemon when `AWS_XRAY_DAEMON_ADDRESS` is set
//!   (Lambda sets it when active tracing is on); OTLP/HTTP protobuf when
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set; both when
//!   both are. Neither: no OpenTelemetry layer at all, spans cost what `tracing` costs.
//! - **Flush.** Batch processors (export on their own thread); [`flush`] runs after the
//!   response is handed back: on Lambda by a runtime layer after the response was posted to
//!   the Runtime API (before the next event is polled, so the environment is not frozen with
//!   spans in the buffer), in the local stack after each response. On Lambda Managed Instances
//!   (concurrent invocations, never frozen) [`flush_in_background`] instead: not awaited, one
//!   export at a time. The response path itself never waits on the network for spans.
//! - **Sampling.** `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, default
//!   `parentbased_always_on`: a caller's sampled flag is followed, also when the caller named
//!   no parent span (an X-Ray header with only `Root` and `Sampled=0`).
//! - **Never** arguments, tokens or header values in span attributes: spans carry method,
//!   registered tool name, request id, protocol version, agent id, outcome codes, and for
//!   downstream HTTP only method, host and port (a path can hold personal data).

pub mod trace;

use std::cell::Cell;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextMut,
    FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_aws::trace::XrayIdGenerator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider,
    ShouldSample,
};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::telemetry::trace::TraceContext;

/// Which spans are kept (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Every trace.
    AlwaysOn,
    /// No trace.
    AlwaysOff,
    /// A fraction of traces, by trace id.
    Ratio(f64),
    /// Follow the caller's sampled flag; without a caller span, the inner decision.
    ParentBased(Root),
}

/// The decision for traces without a caller span, under [`Sampling::ParentBased`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    /// Sample.
    AlwaysOn,
    /// Drop.
    AlwaysOff,
    /// A fraction, by trace id.
    Ratio(f64),
}

impl Sampling {
    /// Parses the standard OpenTelemetry variables; `None` for an unknown sampler name.
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> Option<Self> {
        let ratio = || {
            arg.and_then(|a| a.trim().parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r))
                .unwrap_or(1.0)
        };
        Some(
            match name.map(str::trim).unwrap_or("parentbased_always_on") {
                "always_on" => Self::AlwaysOn,
                "always_off" => Self::AlwaysOff,
                "traceidratio" => Self::Ratio(ratio()),
                "parentbased_always_on" | "" => Self::ParentBased(Root::AlwaysOn),
                "parentbased_always_off" => Self::ParentBased(Root::AlwaysOff),
                "parentbased_traceidratio" => Self::ParentBased(Root::Ratio(ratio())),
                _ => return None,
            },
        )
    }

    /// The SDK sampler, wrapped so a parent-based one also follows a caller that said "not
    /// sampled" without naming a parent span.
    fn sampler(self) -> FollowCaller {
        FollowCaller {
            parent_based: matches!(self, Self::ParentBased(_)),
            inner: self.sdk_sampler(),
        }
    }

    fn sdk_sampler(self) -> Sampler {
        let root = |r| match r {
            Root::AlwaysOn => Sampler::AlwaysOn,
            Root::AlwaysOff => Sampler::AlwaysOff,
            Root::Ratio(f) => Sampler::TraceIdRatioBased(f),
        };
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(f) => Sampler::TraceIdRatioBased(f),
            Self::ParentBased(r) => Sampler::ParentBased(Box::new(root(r))),
        }
    }
}

/// Marks a caller context that asked not to be sampled but named no parent span (an X-Ray
/// header with only `Root` and `Sampled=0`): a parent-based sampler has no parent to follow.
#[derive(Debug, Clone, Copy)]
struct CallerUnsampled;

/// [`Sampling`]'s sampler, honouring [`CallerUnsampled`].
#[derive(Debug, Clone)]
struct FollowCaller {
    inner: Sampler,
    parent_based: bool,
}

impl ShouldSample for FollowCaller {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &opentelemetry::trace::SpanKind,
        attributes: &[opentelemetry::KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let caller_unsampled = parent_context
            .is_some_and(|cx| !cx.has_active_span() && cx.get::<CallerUnsampled>().is_some());
        if self.parent_based && caller_unsampled {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.inner
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// Where spans go and how many are kept. Read once at cold start.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// OTLP/HTTP traces URL (`…/v1/traces`).
    pub otlp_traces_endpoint: Option<String>,
    /// X-Ray daemon (UDP).
    pub xray_daemon: Option<SocketAddr>,
    /// Sampling.
    pub sampling: Sampling,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME`, else the function name).
    pub service_name: Option<String>,
    /// Problems found reading the variables (logged once the subscriber is up).
    pub warnings: Vec<String>,
}

impl TelemetryConfig {
    /// Logs only: no spans exported.
    pub fn off() -> Self {
        Self {
            otlp_traces_endpoint: None,
            xray_daemon: None,
            sampling: Sampling::ParentBased(Root::AlwaysOn),
            service_name: None,
            warnings: Vec::new(),
        }
    }

    /// From the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut config = Self::off();
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
        if disabled {
            return config;
        }
        config.otlp_traces_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|v| v.trim().to_owned())
            .or_else(|| {
                get("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|v| format!("{}/v1/traces", v.trim().trim_end_matches('/')))
            });
        if let Some(addr) = get("AWS_XRAY_DAEMON_ADDRESS") {
            config.xray_daemon = parse_daemon_address(&addr);
            if config.xray_daemon.is_none() {
                config
                    .warnings
                    .push("AWS_XRAY_DAEMON_ADDRESS is not host:port; X-Ray export off".into());
            }
        }
        let sampler = get("OTEL_TRACES_SAMPLER");
        config.sampling = Sampling::parse(
            sampler.as_deref(),
            get("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )
        .unwrap_or_else(|| {
            config
                .warnings
                .push("unknown OTEL_TRACES_SAMPLER; using parentbased_always_on".into());
            Sampling::ParentBased(Root::AlwaysOn)
        });
        config.service_name = get("OTEL_SERVICE_NAME");
        config
    }

    /// Whether any exporter is configured.
    pub fn exports(&self) -> bool {
        self.otlp_traces_endpoint.is_some() || self.xray_daemon.is_some()
    }
}

/// `host:port`, or the daemon's `udp:host:port tcp:host:port` form (the UDP address wins).
pub fn parse_daemon_address(value: &str) -> Option<SocketAddr> {
    let value = value.trim();
    let udp = value
        .split_whitespace()
        .find_map(|part| part.strip_prefix("udp:"))
        .unwrap_or(value);
    if udp.starts_with("tcp:") || udp.contains(' ') {
        return None;
    }
    udp.parse()
        .ok()
        .or_else(|| udp.to_socket_addrs().ok()?.find(SocketAddr::is_ipv4))
}

static EXPORT: OnceLock<Export> = OnceLock::new();
static FLUSH_PENDING: AtomicBool = AtomicBool::new(false);

/// A process's span pipeline: the provider, and the count of sampled spans its batch
/// processors were handed since a flush last took it. Most invocations sample nothing (X-Ray's
/// default rule keeps 5 %), and a flush with nothing to export wakes no thread: the SDK's
/// `force_flush` hands a message to each batch processor's thread and waits for its answer.
#[derive(Debug, Clone)]
pub struct Export {
    provider: SdkTracerProvider,
    ended: Arc<AtomicU64>,
}

/// A batch processor that counts the spans it is handed.
#[derive(Debug)]
struct Counted<P> {
    inner: P,
    ended: Arc<AtomicU64>,
}

impl<P: opentelemetry_sdk::trace::SpanProcessor> opentelemetry_sdk::trace::SpanProcessor
    for Counted<P>
{
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
        self.inner.on_end(span);
        // After the hand-over: a flush that takes this count finds the span in the queue.
        self.ended.fetch_add(1, Ordering::AcqRel);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

impl Export {
    /// The span pipeline's provider (to flush it directly, as a benchmark does).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Takes the count of spans waiting for export: whether a flush has anything to do.
    fn take_ended(&self) -> bool {
        self.ended.swap(0, Ordering::AcqRel) > 0
    }

    /// [`flush`] on this pipeline.
    async fn flush(&self) {
        if !self.take_ended() || FLUSH_PENDING.swap(true, Ordering::AcqRel) {
            return;
        }
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            FLUSH_PENDING.store(false, Ordering::Release);
            let _ = provider.force_flush();
        })
        .await;
    }
}

/// A subscriber (JSON logs plus span export) and the span pipeline behind it.
#[derive(Debug)]
pub struct Telemetry {
    /// The subscriber.
    pub dispatch: tracing::Dispatch,
    /// The span pipeline, when `config` named an exporter (flush it after each invocation).
    pub export: Option<Export>,
    problems: Vec<String>,
}

/// Builds the subscriber: JSON logs on stdout filtered by `AWS_LAMBDA_LOG_LEVEL` / `RUST_LOG`
/// (default `info`), plus the span exporters `config` names. `function` is the default
/// `service.name`.
pub fn build(config: &TelemetryConfig, function: &str) -> Telemetry {
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned())
        .to_lowercase();
    // Events only: log lines carry no span context, so the log layer never sees a span. Were
    // spans to pass its filter, it would format every span's fields as JSON on creation and on
    // each `record` for nothing (measured: ~5 % of a warm call's instructions).
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .with_filter(tracing_subscriber::EnvFilter::new(filter).and(
            tracing_subscriber::filter::filter_fn(|meta| meta.is_event()),
        ));
    let mut problems = config.warnings.clone();
    let export = if config.exports() {
        match build_export(config, function) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!("span export off: {e}"));
                None
            }
        }
    } else {
        None
    };
    let spans = export.as_ref().map(|e| {
        tracing_opentelemetry::layer()
            .with_tracer(e.provider.tracer("tollgate"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(span_targets())
    });
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(logs).with(spans));
    Telemetry {
        dispatch,
        export,
        problems,
    }
}

/// Installs [`build`]'s subscriber for the whole process; later calls are no-ops.
pub fn install(config: &TelemetryConfig, function: &str) {
    if EXPORT.get().is_some() {
        return;
    }
    let telemetry = build(config, function);
    if telemetry.dispatch.try_init().is_err() {
        return;
    }
    if let Some(e) = telemetry.export {
        let _ = EXPORT.set(e);
    }
    for problem in telemetry.problems {
        tracing::warn!(problem, "telemetry configuration");
    }
}

/// Spans worth exporting: ours and the tools' at `info` and above; not the Lambda runtime's
/// own per-invocation span (the server span continues the caller's trace instead), nor the
/// SDKs' debug spans (the AWS SDK interceptor makes one CLIENT span per call).
fn span_targets() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("lambda_runtime", LevelFilter::OFF)
        .with_target("lambda_runtime_api_client", LevelFilter::OFF)
        .with_target("aws_smithy_runtime", LevelFilter::OFF)
        .with_target("aws_config", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
}

fn build_export(config: &TelemetryConfig, function: &str) -> Result<Export, String> {
    let ended = Arc::new(AtomicU64::new(0));
    let service = config
        .service_name
        .as_deref()
        .unwrap_or(function)
        .to_owned();
    let mut builder = SdkTracerProvider::builder()
        .with_id_generator(PinnedIds::default())
        .with_sampler(config.sampling.sampler())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        );
    if let Some(endpoint) = &config.otlp_traces_endpoint {
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        // The process's TLS (compiled-in roots, one crypto library), not reqwest's default,
        // which would read the system's CA store here, at init.
        let trust = crate::tls::Trust::process().map_err(|e| e.to_string())?;
        // A blocking client owns a runtime of its own: made on a thread of its own, since
        // `install` may run inside an async context (the local stack), where creating or
        // dropping a runtime panics.
        let client = std::thread::spawn(move || {
            trust
                .reqwest_blocking()
                .timeout(Duration::from_secs(3))
                .build()
        })
        .join()
        .map_err(|_| "OTLP HTTP client: the builder thread panicked".to_owned())?
        .map_err(|e| format!("OTLP HTTP client: {e}"))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        builder = builder.with_span_processor(batch(exporter, &ended));
    }
    if let Some(addr) = config.xray_daemon {
        use opentelemetry_aws::xray_exporter::{
            SegmentTranslator, XrayExporter, daemon_client::XrayDaemonClient,
        };
        let client =
            XrayDaemonClient::new(addr).map_err(|e| format!("X-Ray daemon client: {e}"))?;
        // A caller's W3C trace id need not start with a recent epoch: send its segments anyway
        // and leave acceptance to X-Ray, rather than dropping the caller's trace here.
        let translator = SegmentTranslator::new().skip_timestamp_validation();
        builder = builder.with_span_processor(batch(
            XrayExporter::new(client).with_translator(translator),
            &ended,
        ));
    }
    Ok(Export {
        provider: builder.build(),
        ended,
    })
}

/// Spans a batch processor holds before it drops new ones, unless `OTEL_BSP_MAX_QUEUE_SIZE`
/// says otherwise. An invocation makes about a dozen and [`flush`] exports them after each
/// response, so the SDK's default (2048) only costs memory: its queue is allocated and
/// written through when the processor is made, at init.
const SPAN_QUEUE: usize = 512;

fn batch<E: opentelemetry_sdk::trace::SpanExporter + 'static>(
    exporter: E,
    ended: &Arc<AtomicU64>,
) -> Counted<opentelemetry_sdk::trace::BatchSpanProcessor> {
    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor};
    let mut config = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        config = config.with_max_queue_size(SPAN_QUEUE);
    }
    Counted {
        inner: BatchSpanProcessor::builder(exporter)
            .with_batch_config(config.build())
            .build(),
        ended: ended.clone(),
    }
}

/// Whether spans are exported by this process.
pub fn enabled() -> bool {
    EXPORT.get().is_some()
}

/// Exports every finished span now. Call after the response was handed back; returns at
/// once when nothing exports or no sampled span finished since the last flush, and coalesces
/// concurrent calls.
pub async fn flush() {
    if let Some(export) = EXPORT.get() {
        export.flush().await;
    }
}

static BACKGROUND_RUNNING: AtomicBool = AtomicBool::new(false);
static BACKGROUND_AGAIN: AtomicBool = AtomicBool::new(false);

/// Exports every span finished so far, in the background, without waiting (Lambda Managed
/// Instances: the environment is never frozen, and no invocation should wait on another's
/// export). At most one export runs at a time: calls made while one runs are served by one
/// more export after it, so under load the exports batch many responses each instead of one
/// export per response.
pub fn flush_in_background() {
    let Some(export) = EXPORT.get() else {
        return;
    };
    if !export.take_ended() {
        return;
    }
    BACKGROUND_AGAIN.store(true, Ordering::Release);
    if BACKGROUND_RUNNING.swap(true, Ordering::AcqRel) {
        return; // the running export loop sees BACKGROUND_AGAIN
    }
    let provider = export.provider.clone();
    tokio::task::spawn_blocking(move || {
        loop {
            while BACKGROUND_AGAIN.swap(false, Ordering::AcqRel) {
                let _ = provider.force_flush();
            }
            BACKGROUND_RUNNING.store(false, Ordering::Release);
            // A call may have set BACKGROUND_AGAIN after the last swap while this loop still
            // counted as running: take it, unless a new loop already did.
            if !BACKGROUND_AGAIN.load(Ordering::Acquire)
                || BACKGROUND_RUNNING.swap(true, Ordering::AcqRel)
            {
                break;
            }
        }
    });
}

/// Exports what is buffered and stops the exporters (process exit).
pub fn shutdown() {
    if let Some(e) = EXPORT.get() {
        let _ = e.provider.shutdown();
    }
}

// --- ids -------------------------------------------------------------------------------------

thread_local! {
    static PINNED: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

/// X-Ray ids, except for the one span being started under [`continue_trace`]: it takes the
/// trace and span ids its [`TraceContext`] already decided. (The SDK asks the generator for
/// ids synchronously while starting a span, on the starting thread.)
#[derive(Debug, Default)]
struct PinnedIds(XrayIdGenerator);

impl IdGenerator for PinnedIds {
    fn new_trace_id(&self) -> TraceId {
        PINNED
            .with(|p| {
                let (trace, span) = p.get();
                p.set((None, span));
                trace
            })
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        PINNED
            .with(|p| {
                let (trace, span) = p.get();
                p.set((trace, None));
                span
            })
            .unwrap_or_else(|| RandomIdGenerator::default().new_span_id())
    }
}

/// Makes `span` (not yet entered) continue `trace`: the caller's span as its remote parent,
/// its own trace and span ids those of `trace`. A no-op when spans are not exported.
pub fn continue_trace(span: &tracing::Span, trace: &TraceContext) {
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(&trace.trace_id),
        SpanId::from_hex(&trace.span_id),
    ) else {
        return;
    };
    let flags = if trace.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = trace
        .tracestate
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let parent = match trace
        .parent_span_id
        .as_deref()
        .and_then(|p| SpanId::from_hex(p).ok())
    {
        Some(parent) => opentelemetry::Context::new()
            .with_remote_span_context(SpanContext::new(trace_id, parent, flags, true, state)),
        None if !trace.sampled => opentelemetry::Context::new().with_value(CallerUnsampled),
        None => opentelemetry::Context::new(),
    };
    if span.set_parent(parent).is_err() {
        return;
    }
    PINNED.with(|p| p.set((Some(trace_id), Some(span_id))));
    // Starts the span now, while the ids are pinned on this thread.
    let _ = span.context();
    PINNED.with(|p| p.set((None, None)));
}

tokio::task_local! {
    /// The trace context of the invocation this task is serving.
    static INVOCATION_TRACE: TraceContext;
}

/// Runs `fut` (one invocation's work) with `trace` as its trace context: AWS SDK calls made
/// inside it carry headers naming this invocation when no span is exported. Task-local, never
/// process-global: on Lambda Managed Instances many invocations share the process (and the
/// runtime does not set `_X_AMZN_TRACE_ID`, which the SDK would otherwise read).
pub async fn with_invocation_trace<F: std::future::Future>(
    trace: TraceContext,
    fut: F,
) -> F::Output {
    INVOCATION_TRACE.scope(trace, fut).await
}

/// The headers an outgoing call names the current invocation with, when inside
/// [`with_invocation_trace`].
fn invocation_headers() -> Option<Vec<(&'static str, String)>> {
    INVOCATION_TRACE
        .try_with(TraceContext::outgoing_headers)
        .ok()
}

/// The current span's (trace id, span id, sampled), when spans are exported and one is open.
pub fn current_span() -> Option<(String, String, bool)> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        (
            sc.trace_id().to_string(),
            sc.span_id().to_string(),
            sc.is_sampled(),
        )
    })
}

// --- spans -----------------------------------------------------------------------------------

/// The SERVER span of one MCP request: `{mcp.method.name} {tool}` (or the method alone),
/// continuing `trace`. `tool` must be a registered tool name, never the caller's raw input.
pub fn server_span(
    method: &str,
    tool: Option<&str>,
    request_id: &str,
    trace: &TraceContext,
) -> tracing::Span {
    let name = match tool {
        Some(t) => format!("{method} {t}"),
        None => method.to_owned(),
    };
    let span = tracing::info_span!(
        "mcp.server",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        mcp.method.name = %method,
        gen_ai.tool.name = tool,
        gen_ai.operation.name = Empty,
        jsonrpc.request.id = %request_id,
        mcp.protocol.version = Empty,
        enduser.id = Empty,
        error.type = Empty,
    );
    if method == "tools/call" {
        span.record("gen_ai.operation.name", "execute_tool");
    }
    continue_trace(&span, trace);
    span
}

/// The span of the tool's own work.
pub fn handler_span(tool: &str) -> tracing::Span {
    tracing::info_span!(
        "handler",
        otel.name = %format_args!("handler {tool}"),
        gen_ai.tool.name = tool,
    )
}

/// The CLIENT span of the gateway's forward to a tool's function (a Lambda `Invoke`).
pub fn invoke_span(tool: &str) -> tracing::Span {
    tracing::info_span!(
        "Lambda.Invoke",
        otel.kind = "client",
        otel.status_code = Empty,
        rpc.system = "aws-api",
        rpc.service = "Lambda",
        rpc.method = "Invoke",
        faas.invoked_provider = "aws",
        faas.invoked_name = tool,
        error.type = Empty,
    )
}

/// The CLIENT span of a downstream HTTP call: named by its method, with the host and port
/// only (a path or query can hold personal data).
pub fn http_client_span(method: &http::Method, url: &reqwest::Url) -> tracing::Span {
    tracing::info_span!(
        "http.client",
        otel.name = %method,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = %method,
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default().map(i64::from),
        url.scheme = url.scheme(),
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// Records an HTTP call's outcome on `span` (from [`http_client_span`]).
pub fn record_http_outcome(
    span: &tracing::Span,
    result: &Result<reqwest::Response, reqwest::Error>,
) {
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            span.record("http.response.status_code", i64::from(status));
            if status >= 400 {
                span.record("error.type", status.to_string());
            }
            if status >= 500 {
                span.record("otel.status_code", "error");
            }
        }
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "request"
            };
            span.record("error.type", kind);
            span.record("otel.status_code", "error");
        }
    }
}

/// Records an error class on the current span (`error.type`), and marks server-side
/// failures as errors.
pub fn record_error(kind: &str, server_fault: bool) {
    let span = tracing::Span::current();
    span.record("error.type", kind);
    if server_fault {
        span.record("otel.status_code", "error");
    }
}

// --- AWS SDK ---------------------------------------------------------------------------------

/// An AWS SDK interceptor: one CLIENT span per operation (`DynamoDB.UpdateItem`, …) under
/// the current span, and `X-Amzn-Trace-Id` and `traceparent` naming that span on the request
/// (added after signing: SigV4 leaves `X-Amzn-Trace-Id` out, and unsigned headers are
/// allowed). With no span exported, the headers name the invocation of
/// [`with_invocation_trace`] instead; outside any invocation it does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct AwsSdkSpans;

#[derive(Debug)]
struct SdkSpan(std::sync::Mutex<Option<tracing::Span>>);

impl Storable for SdkSpan {
    type Storer = StoreReplace<Self>;
}

impl SdkSpan {
    fn span(&self) -> Option<tracing::Span> {
        self.0.lock().ok()?.clone()
    }
}

impl Intercept for AwsSdkSpans {
    fn name(&self) -> &'static str {
        "tollgate::telemetry::AwsSdkSpans"
    }

    // Not `read_before_execution`: a client interceptor runs that hook before the operation's
    // configuration (its service and operation names) is in the bag.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if !opentelemetry::Context::current().has_active_span() {
            return Ok(());
        }
        let (service, operation) = cfg
            .load::<Metadata>()
            .map_or(("AWS", "call"), |m| (m.service(), m.name()));
        let span = tracing::info_span!(
            "aws.sdk",
            otel.name = %format_args!("{service}.{operation}"),
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "aws-api",
            rpc.service = service,
            rpc.method = operation,
            http.response.status_code = Empty,
            error.type = Empty,
        );
        cfg.interceptor_state()
            .store_put(SdkSpan(std::sync::Mutex::new(Some(span))));
        Ok(())
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(span) = cfg.load::<SdkSpan>().and_then(SdkSpan::span) else {
            // No span exported: the invocation's own context, replacing whatever the SDK's
            // recursion detection copied from the process environment.
            if let Some(headers) = invocation_headers() {
                let request = context.request_mut().headers_mut();
                for (name, value) in headers {
                    request.insert(name, value);
                }
            }
            return Ok(());
        };
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            let trace = sc.trace_id().to_string();
            let header = format!(
                "Root=1-{}-{};Parent={};Sampled={}",
                &trace[..8],
                &trace[8..],
                sc.span_id(),
                u8::from(sc.is_sampled())
            );
            let flags = if sc.is_sampled() { "01" } else { "00" };
            let traceparent = format!("00-{trace}-{}-{flags}", sc.span_id());
            let headers = context.request_mut().headers_mut();
            headers.insert("x-amzn-trace-id", header);
            headers.insert("traceparent", traceparent);
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(span) = cfg.load::<SdkSpan>().and_then(|s| s.0.lock().ok()?.take()) else {
            return Ok(());
        };
        let status = context.response().map(|r| r.status().as_u16());
        if let Some(status) = status {
            span.record("http.response.status_code", i64::from(status));
        }
        if let Some(Err(err)) = context.output_or_error() {
            let kind = match status {
                Some(s) => s.to_string(),
                None if err.is_timeout_error() => "timeout".to_owned(),
                None => "transport".to_owned(),
            };
            span.record("error.type", kind.as_str());
            if status.is_none_or(|s| s >= 500) {
                span.record("otel.status_code", "error");
            }
        }
        // Dropping the last handle closes (ends) the span now.
        drop(span);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
