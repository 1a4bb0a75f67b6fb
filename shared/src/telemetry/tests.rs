use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt as _;

use super::*;
use crate::telemetry::trace::parse_traceparent;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[derive(Debug, Clone, Default)]
struct Capture(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Capture {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().expect("lock").extend(batch);
        Ok(())
    }
}

/// Runs `f` under a subscriber exporting to memory, as `install` wires it; returns the spans.
fn spans_of(sampling: Sampling, f: impl FnOnce()) -> Vec<SpanData> {
    let capture = Capture::default();
    let provider = SdkTracerProvider::builder()
        .with_id_generator(PinnedIds::default())
        .with_sampler(sampling.sampler())
        .with_batch_exporter(capture.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(span_targets()),
    );
    tracing::subscriber::with_default(subscriber, f);
    provider.force_flush().expect("flush");
    capture.0.lock().expect("lock").clone()
}

fn caller(flags: &str) -> TraceContext {
    let mut h = http::HeaderMap::new();
    h.insert(
        "traceparent",
        http::HeaderValue::from_str(&format!("00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}"))
            .expect("hv"),
    );
    TraceContext::extract(None, &h, None)
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name}"))
}

#[test]
fn server_span_continues_the_callers_trace_and_downstream_names_the_client_span() {
    let trace = caller("01");
    let mut sent = Vec::new();
    let spans = spans_of(Sampling::ParentBased(Root::AlwaysOn), || {
        let server = server_span("tools/call", Some("track_shipment"), "7", &trace);
        let _in_server = server.enter();
        tracing::Span::current().record("enduser.id", "billing-bot");
        invoke_span("track_shipment").in_scope(|| sent = trace.outgoing_headers());
    });
    let server = named(&spans, "tools/call track_shipment");
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(server.span_context.trace_id().to_string(), CALLER_TRACE);
    assert_eq!(server.parent_span_id.to_string(), CALLER_SPAN);
    assert!(server.parent_span_is_remote);
    assert_eq!(server.span_context.span_id().to_string(), trace.span_id);
    for (key, value) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "track_shipment"),
        ("gen_ai.operation.name", "execute_tool"),
        ("jsonrpc.request.id", "7"),
        ("enduser.id", "billing-bot"),
    ] {
        assert_eq!(attr(server, key).as_deref(), Some(value), "{key}");
    }
    let invoke = named(&spans, "Lambda.Invoke");
    assert_eq!(invoke.span_kind, SpanKind::Client);
    assert_eq!(invoke.parent_span_id, server.span_context.span_id());
    let (trace_id, parent, sampled) = parse_traceparent(&sent[0].1).expect("traceparent");
    assert_eq!(trace_id, CALLER_TRACE);
    assert_eq!(parent, invoke.span_context.span_id().to_string());
    assert!(sampled);
    assert!(
        sent[1].1.contains(&format!(";Parent={parent};")),
        "{:?}",
        sent[1]
    );
}

#[test]
fn a_new_trace_keeps_the_ids_the_trace_context_chose() {
    let trace = TraceContext::new_root();
    let spans = spans_of(Sampling::ParentBased(Root::AlwaysOn), || {
        let server = server_span("tools/list", None, "1", &trace);
        let _in_server = server.enter();
        tracing::info_span!("child").in_scope(|| {});
    });
    let server = named(&spans, "tools/list");
    assert_eq!(server.span_context.trace_id().to_string(), trace.trace_id);
    assert_eq!(server.span_context.span_id().to_string(), trace.span_id);
    assert_eq!(server.parent_span_id, SpanId::INVALID);
    assert_eq!(attr(server, "gen_ai.operation.name"), None);
    // Ids were pinned for that one span only.
    let child = named(&spans, "child");
    assert_eq!(child.span_context.trace_id().to_string(), trace.trace_id);
    assert_ne!(child.span_context.span_id().to_string(), trace.span_id);
}

#[test]
fn an_unsampled_caller_is_followed_and_told_downstream() {
    let trace = caller("00");
    let mut sent = Vec::new();
    let spans = spans_of(Sampling::ParentBased(Root::AlwaysOn), || {
        let server = server_span("tools/call", None, "1", &trace);
        server.in_scope(|| sent = trace.outgoing_headers());
    });
    assert!(spans.is_empty(), "{spans:?}");
    let (trace_id, _, sampled) = parse_traceparent(&sent[0].1).expect("traceparent");
    assert_eq!((trace_id.as_str(), sampled), (CALLER_TRACE, false));
    let spans = spans_of(Sampling::AlwaysOn, || {
        server_span("tools/call", None, "1", &trace).in_scope(|| {});
    });
    assert_eq!(spans.len(), 1, "always_on ignores the caller's flag");
}

#[test]
fn an_unsampled_caller_without_a_parent_span_is_followed_too() {
    let mut h = http::HeaderMap::new();
    h.insert(
        "x-amzn-trace-id",
        http::HeaderValue::from_static("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0"),
    );
    let trace = TraceContext::extract(None, &h, None);
    assert_eq!(
        (trace.parent_span_id.as_deref(), trace.sampled),
        (None, false)
    );
    let mut sent = Vec::new();
    let spans = spans_of(Sampling::ParentBased(Root::AlwaysOn), || {
        let server = server_span("tools/call", None, "1", &trace);
        let _in_server = server.enter();
        invoke_span("t").in_scope(|| sent = trace.outgoing_headers());
    });
    assert!(spans.is_empty(), "{spans:?}");
    assert!(sent[1].1.ends_with(";Sampled=0"), "{:?}", sent[1]);
    let spans = spans_of(Sampling::AlwaysOn, || {
        server_span("tools/call", None, "1", &trace).in_scope(|| {});
    });
    assert_eq!(spans.len(), 1);
    assert_eq!(
        spans[0].span_context.trace_id().to_string(),
        "5759e988bd862e3fe1be46a994272793"
    );
}

#[test]
fn without_span_export_outgoing_headers_name_the_invocation_span() {
    let trace = caller("01");
    let server = server_span("ping", None, "1", &trace);
    let sent = server.in_scope(|| trace.outgoing_headers());
    let (_, parent, _) = parse_traceparent(&sent[0].1).expect("traceparent");
    assert_eq!(parent, trace.span_id);
}

#[test]
fn sampler_names_and_ratios() {
    assert_eq!(
        Sampling::parse(None, None),
        Some(Sampling::ParentBased(Root::AlwaysOn))
    );
    assert_eq!(
        Sampling::parse(Some("parentbased_traceidratio"), Some("0.25")),
        Some(Sampling::ParentBased(Root::Ratio(0.25)))
    );
    assert_eq!(
        Sampling::parse(Some("traceidratio"), Some("7")),
        Some(Sampling::Ratio(1.0)),
        "an out-of-range ratio falls back to 1"
    );
    assert_eq!(
        Sampling::parse(Some("always_off"), None),
        Some(Sampling::AlwaysOff)
    );
    assert_eq!(Sampling::parse(Some("jaeger_remote"), None), None);
}

fn config(pairs: &[(&str, &str)]) -> TelemetryConfig {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    TelemetryConfig::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn exporters_follow_the_standard_variables() {
    let none = config(&[]);
    assert!(!none.exports());
    let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")]);
    assert_eq!(
        c.otlp_traces_endpoint.as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
    let c = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://other:4318/custom",
        ),
    ]);
    assert_eq!(
        c.otlp_traces_endpoint.as_deref(),
        Some("http://other:4318/custom"),
        "the per-signal URL is used as is"
    );
    let c = config(&[("AWS_XRAY_DAEMON_ADDRESS", "169.254.79.129:2000")]);
    assert_eq!(
        c.xray_daemon,
        Some("169.254.79.129:2000".parse().expect("addr"))
    );
    let c = config(&[
        ("AWS_XRAY_DAEMON_ADDRESS", "127.0.0.1:2000"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ]);
    assert!(!c.exports(), "OTEL_TRACES_EXPORTER=none turns export off");
    let c = config(&[
        ("AWS_XRAY_DAEMON_ADDRESS", "not an address"),
        ("OTEL_TRACES_SAMPLER", "bogus"),
    ]);
    assert!(!c.exports());
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert_eq!(c.sampling, Sampling::ParentBased(Root::AlwaysOn));
}

#[test]
fn daemon_addresses() {
    let addr: SocketAddr = "127.0.0.1:2000".parse().expect("addr");
    assert_eq!(parse_daemon_address("127.0.0.1:2000"), Some(addr));
    assert_eq!(
        parse_daemon_address("tcp:127.0.0.1:2001 udp:127.0.0.1:2000"),
        Some(addr)
    );
    assert_eq!(parse_daemon_address("localhost:2000"), Some(addr));
    assert_eq!(parse_daemon_address("tcp:127.0.0.1:2000"), None);
    assert_eq!(parse_daemon_address("2000"), None);
}

/// A span processor that counts the `force_flush` calls it gets.
#[derive(Debug, Default, Clone)]
struct Flushes(Arc<std::sync::atomic::AtomicUsize>);

impl opentelemetry_sdk::trace::SpanProcessor for Flushes {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, _: SpanData) {}

    fn force_flush(&self) -> OTelSdkResult {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// One server span under `provider`, continuing a caller whose trace flags are `flags`.
fn serve_one(provider: &SdkTracerProvider, flags: &str) {
    let trace = caller(flags);
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(span_targets()),
    );
    tracing::subscriber::with_default(subscriber, || {
        drop(server_span(
            "tools/call",
            Some("lookup_customer"),
            "1",
            &trace,
        ));
    });
}

#[tokio::test]
async fn a_flush_wakes_the_exporters_only_when_a_sampled_span_finished_since_the_last_one() {
    let flushes = Flushes::default();
    let ended = Arc::new(AtomicU64::new(0));
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampling::ParentBased(Root::AlwaysOn).sampler())
        .with_span_processor(Counted {
            inner: flushes.clone(),
            ended: ended.clone(),
        })
        .build();
    let export = Export {
        provider: provider.clone(),
        ended,
    };
    let count = || flushes.0.load(Ordering::SeqCst);

    export.flush().await;
    assert_eq!(count(), 0, "nothing finished yet");
    serve_one(&provider, "00");
    export.flush().await;
    assert_eq!(count(), 0, "an unsampled span is not exported: no flush");
    serve_one(&provider, "01");
    export.flush().await;
    assert_eq!(count(), 1, "a sampled span finished: one flush");
    export.flush().await;
    assert_eq!(count(), 1, "nothing new since: no flush");
    serve_one(&provider, "01");
    serve_one(&provider, "01");
    export.flush().await;
    assert_eq!(count(), 2, "two spans, one flush");
}
