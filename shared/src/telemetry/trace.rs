//! Trace context: accepted from the caller, carried through the call, passed downstream.
//!
//! Precedence (first valid wins), so one agent request is one trace however it arrives:
//! 1. `params._meta.traceparent` (MCP, SEP-414), with `_meta.tracestate`;
//! 2. the `traceparent` / `tracestate` HTTP headers (W3C Trace Context);
//! 3. the `X-Amzn-Trace-Id` header (`Root=1-…;Parent=…;Sampled=…`);
//! 4. the invocation's X-Ray trace id from the Lambda runtime context (never the process
//!    environment: `_X_AMZN_TRACE_ID` is not per-request in concurrent mode);
//! 5. otherwise a new trace, with an X-Ray-compatible id (first 32 bits: epoch seconds).
//!
//! Malformed values are ignored, never fatal. Outgoing calls carry both `traceparent` and
//! `X-Amzn-Trace-Id` naming this invocation's span as the parent.

use rand::RngCore as _;

/// Where the trace context came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceSource {
    /// `params._meta.traceparent`.
    Meta,
    /// The `traceparent` header.
    Traceparent,
    /// The `X-Amzn-Trace-Id` header.
    AmznHeader,
    /// The Lambda runtime's X-Ray trace id.
    Lambda,
    /// A new trace started here.
    New,
}

/// The trace this invocation belongs to, and its own span id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The caller's span (16 hex digits), when the caller named one.
    pub parent_span_id: Option<String>,
    /// This invocation's span (16 hex digits): the id of its server span when spans are
    /// exported; the parent named downstream when they are not.
    pub span_id: String,
    /// Sampling decision.
    pub sampled: bool,
    /// W3C `tracestate`, passed through unchanged.
    pub tracestate: Option<String>,
    /// Where it came from.
    pub source: TraceSource,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn new_span_id() -> String {
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    if b == [0; 8] {
        b[7] = 1;
    }
    hex::encode(b)
}

/// Parses a W3C `traceparent` (version 00 semantics; unknown versions read the same fields).
pub fn parse_traceparent(value: &str) -> Option<(String, String, bool)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if !is_hex(version, 2)
        || version == "ff"
        || !is_hex(trace, 32)
        || !is_hex(parent, 16)
        || !is_hex(flags, 2)
    {
        return None;
    }
    if (version == "00" && parts.next().is_some())
        || trace.bytes().all(|b| b == b'0')
        || parent.bytes().all(|b| b == b'0')
    {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some((trace.to_owned(), parent.to_owned(), sampled))
}

/// Parses an X-Ray header (`Root=1-xxxxxxxx-yyyy…;Parent=…;Sampled=…`).
pub fn parse_xray(value: &str) -> Option<(String, Option<String>, bool)> {
    let (mut root, mut parent, mut sampled) = (None, None, true);
    for field in value.split(';') {
        let (k, v) = field.trim().split_once('=')?;
        match k {
            "Root" => {
                let mut p = v.split('-');
                let (one, epoch, rest) = (p.next()?, p.next()?, p.next()?);
                if one != "1" || !is_hex(epoch, 8) || !is_hex(rest, 24) || p.next().is_some() {
                    return None;
                }
                root = Some(format!("{epoch}{rest}"));
            }
            "Parent" if is_hex(v, 16) => parent = Some(v.to_owned()),
            "Sampled" => sampled = v != "0",
            _ => {}
        }
    }
    Some((root?, parent, sampled))
}

impl TraceContext {
    /// Extracts the context by the precedence above.
    pub fn extract(
        meta: Option<&serde_json::Map<String, serde_json::Value>>,
        headers: &http::HeaderMap,
        lambda_trace: Option<&str>,
    ) -> Self {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let meta_str = |n: &str| meta.and_then(|m| m.get(n)).and_then(|v| v.as_str());
        let from_w3c = |tp: Option<&str>, ts: Option<&str>, source| {
            let (trace_id, parent, sampled) = parse_traceparent(tp?)?;
            Some(Self {
                trace_id,
                parent_span_id: Some(parent),
                span_id: new_span_id(),
                sampled,
                tracestate: ts.filter(|s| s.len() <= 512).map(str::to_owned),
                source,
            })
        };
        let from_xray = |v: Option<&str>, source| {
            let (trace_id, parent_span_id, sampled) = parse_xray(v?)?;
            Some(Self {
                trace_id,
                parent_span_id,
                span_id: new_span_id(),
                sampled,
                tracestate: None,
                source,
            })
        };
        from_w3c(
            meta_str("traceparent"),
            meta_str("tracestate"),
            TraceSource::Meta,
        )
        .or_else(|| {
            from_w3c(
                header("traceparent"),
                header("tracestate"),
                TraceSource::Traceparent,
            )
        })
        .or_else(|| from_xray(header("x-amzn-trace-id"), TraceSource::AmznHeader))
        .or_else(|| from_xray(lambda_trace, TraceSource::Lambda))
        .unwrap_or_else(Self::new_root)
    }

    /// A new trace with an X-Ray-compatible id.
    pub fn new_root() -> Self {
        let epoch = u32::try_from(crate::store::now_ms() / 1000).unwrap_or(u32::MAX);
        let mut rest = [0u8; 12];
        rand::rng().fill_bytes(&mut rest);
        Self {
            trace_id: format!("{epoch:08x}{}", hex::encode(rest)),
            parent_span_id: None,
            span_id: new_span_id(),
            sampled: true,
            tracestate: None,
            source: TraceSource::New,
        }
    }

    /// The trace id in X-Ray form (`1-xxxxxxxx-yyyyyyyyyyyyyyyyyyyyyyyy`).
    pub fn xray_trace_id(&self) -> String {
        format!("1-{}-{}", &self.trace_id[..8], &self.trace_id[8..])
    }

    /// Headers for an outgoing call made by this invocation. The parent they name is the
    /// enclosing span (the CLIENT span of the call) when spans are exported, else this
    /// invocation's span.
    pub fn outgoing_headers(&self) -> Vec<(&'static str, String)> {
        let (span_id, sampled) = crate::telemetry::current_span()
            .filter(|(trace, _, _)| *trace == self.trace_id)
            .map_or_else(
                || (self.span_id.clone(), self.sampled),
                |(_, s, on)| (s, on),
            );
        let flags = if sampled { "01" } else { "00" };
        let mut h = vec![
            (
                "traceparent",
                format!("00-{}-{span_id}-{flags}", self.trace_id),
            ),
            (
                "x-amzn-trace-id",
                format!(
                    "Root={};Parent={span_id};Sampled={}",
                    self.xray_trace_id(),
                    u8::from(sampled)
                ),
            ),
        ];
        if let Some(ts) = &self.tracestate {
            h.push(("tracestate", ts.clone()));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_str(v).expect("hv"),
                )
            })
            .collect()
    }

    #[test]
    fn meta_wins_over_headers_and_headers_over_lambda() {
        let meta: serde_json::Map<_, _> = serde_json::from_str(
            r#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#,
        )
        .expect("meta");
        let h = headers(&[
            ("traceparent", TP),
            (
                "x-amzn-trace-id",
                "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
            ),
        ]);
        let c = TraceContext::extract(Some(&meta), &h, None);
        assert_eq!(
            (c.source, c.trace_id.as_str()),
            (TraceSource::Meta, "0af7651916cd43dd8448eb211c80319c")
        );
        let c = TraceContext::extract(None, &h, None);
        assert_eq!(
            (c.source, c.parent_span_id.as_deref()),
            (TraceSource::Traceparent, Some("00f067aa0ba902b7"))
        );
        let h = headers(&[(
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        )]);
        let c = TraceContext::extract(None, &h, Some("Root=1-11111111-222222222222222222222222"));
        assert_eq!(c.xray_trace_id(), "1-5759e988-bd862e3fe1be46a994272793");
        let c = TraceContext::extract(
            None,
            &headers(&[]),
            Some("Root=1-11111111-222222222222222222222222;Sampled=0"),
        );
        assert_eq!((c.source, c.sampled), (TraceSource::Lambda, false));
        assert_eq!(
            TraceContext::extract(None, &headers(&[]), None).source,
            TraceSource::New
        );
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in [
            "",
            "00-xyz",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let c = TraceContext::extract(
            None,
            &headers(&[("traceparent", "garbage"), ("x-amzn-trace-id", "Root=2-x")]),
            None,
        );
        assert_eq!(c.source, TraceSource::New);
    }

    #[test]
    fn outgoing_headers_continue_the_trace_with_this_span_as_parent() {
        let c = TraceContext::extract(None, &headers(&[("traceparent", TP)]), None);
        let out = c.outgoing_headers();
        let tp = &out[0].1;
        let (trace, parent, sampled) = parse_traceparent(tp).expect("valid");
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent, c.span_id);
        assert!(sampled);
        let (root, xparent, _) = parse_xray(&out[1].1).expect("xray");
        assert_eq!(root, trace);
        assert_eq!(xparent.as_deref(), Some(c.span_id.as_str()));
    }

    #[test]
    fn new_roots_are_xray_compatible() {
        let c = TraceContext::new_root();
        let now = crate::store::now_ms() / 1000;
        let epoch = u64::from_str_radix(&c.trace_id[..8], 16).expect("hex");
        assert!(now.abs_diff(epoch) < 5);
        assert!(parse_xray(&format!("Root={}", c.xray_trace_id())).is_some());
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic(tp in ".{0,80}", amzn in ".{0,120}") {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&tp) { h.insert("traceparent", v); }
            if let Ok(v) = http::HeaderValue::from_str(&amzn) { h.insert("x-amzn-trace-id", v); }
            let c = TraceContext::extract(None, &h, Some(&amzn));
            prop_assert_eq!(c.trace_id.len(), 32);
        }
    }
}
