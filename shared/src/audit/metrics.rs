//! Metrics for alarms: one CloudWatch Embedded Metric Format (EMF) line per tool call, written
//! beside the audit record. CloudWatch turns it into metrics with no API call on the hot path.
//!
//! Namespace `Tollgate`. Dimensions stay low-cardinality (`Service`, `Tool`, `Status`,
//! `Layer`); request and agent ids ride along as properties, searchable in Logs Insights but
//! never dimensions.
//!
//! | metric | unit | dimensions | when |
//! |---|---|---|---|
//! | `Calls` | Count | Service, Tool | every call |
//! | `Latency` | Milliseconds | Service, Tool | every call |
//! | `Errors` | Count | (Service, Status), (Service, Tool, Status) | any outcome but success |
//! | `BudgetRefusals` | Count | Service, Tool, Layer | a budget refused the call |
//! | `AuthFailures` | Count | Service | authentication failed |
//! | `StoreErrors` | Count | Service | the credential or budget store failed |
//! | `ColdStarts` | Count | Service | first call of an instance |

use std::borrow::Cow;

use serde::Serialize;

use crate::audit::{AuditRecord, CallStatus};

/// CloudWatch namespace of every tollgate metric.
pub const NAMESPACE: &str = "Tollgate";

/// One metric of a directive.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Metric {
    #[serde(rename = "Name")]
    name: &'static str,
    #[serde(rename = "Unit")]
    unit: &'static str,
}

const fn count(name: &'static str) -> Metric {
    Metric {
        name,
        unit: "Count",
    }
}

const CALLS: &[Metric] = &[
    count("Calls"),
    Metric {
        name: "Latency",
        unit: "Milliseconds",
    },
];
const ERRORS: &[Metric] = &[count("Errors")];
const REFUSALS: &[Metric] = &[count("BudgetRefusals")];

/// One `CloudWatchMetrics` directive: which members are metrics, under which dimensions.
#[derive(Debug, Serialize)]
pub struct Directive {
    #[serde(rename = "Dimensions")]
    dimensions: &'static [&'static [&'static str]],
    #[serde(rename = "Metrics")]
    metrics: Cow<'static, [Metric]>,
    #[serde(rename = "Namespace")]
    namespace: &'static str,
}

const fn directive(
    dimensions: &'static [&'static [&'static str]],
    metrics: &'static [Metric],
) -> Directive {
    Directive {
        dimensions,
        metrics: Cow::Borrowed(metrics),
        namespace: NAMESPACE,
    }
}

/// The `_aws` member.
#[derive(Debug, Serialize)]
pub struct Metadata {
    #[serde(rename = "CloudWatchMetrics")]
    cloud_watch_metrics: Vec<Directive>,
    #[serde(rename = "Timestamp")]
    timestamp: u64,
}

/// The EMF document of one audited call, serialized straight from the record (no JSON tree is
/// built per call). Members are declared in byte order of their names, the order in which a
/// `serde_json` map writes them.
#[derive(Debug, Serialize)]
pub struct Emf<'a> {
    #[serde(rename = "AuthFailures", skip_serializing_if = "Option::is_none")]
    auth_failures: Option<u8>,
    #[serde(rename = "BudgetRefusals", skip_serializing_if = "Option::is_none")]
    budget_refusals: Option<u8>,
    #[serde(rename = "Calls")]
    calls: u8,
    #[serde(rename = "ColdStarts", skip_serializing_if = "Option::is_none")]
    cold_starts: Option<u8>,
    #[serde(rename = "Errors", skip_serializing_if = "Option::is_none")]
    errors: Option<u8>,
    #[serde(rename = "Latency")]
    latency: u64,
    #[serde(rename = "Layer", skip_serializing_if = "Option::is_none")]
    layer: Option<&'a str>,
    #[serde(rename = "Service")]
    service: &'a str,
    #[serde(rename = "Status")]
    status: &'static str,
    #[serde(rename = "StoreErrors", skip_serializing_if = "Option::is_none")]
    store_errors: Option<u8>,
    #[serde(rename = "Tool")]
    tool: &'a str,
    #[serde(rename = "_aws")]
    aws: Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a str>,
    kind: &'static str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

/// The EMF document for one audited call, at `timestamp_ms`.
pub fn emf(record: &AuditRecord, timestamp_ms: u64) -> Emf<'_> {
    let mut directives = Vec::with_capacity(2);
    directives.push(directive(&[&["Service", "Tool"]], CALLS));
    let errors = !matches!(
        record.status,
        CallStatus::Success
            | CallStatus::Replayed
            | CallStatus::TaskCreated
            | CallStatus::Cancelled
    );
    if errors {
        directives.push(directive(
            &[&["Service", "Status"], &["Service", "Tool", "Status"]],
            ERRORS,
        ));
    }
    let refused = record.status == CallStatus::RateLimited;
    if refused {
        directives.push(directive(&[&["Service", "Tool", "Layer"]], REFUSALS));
    }
    let auth_failure = record.status == CallStatus::DeniedAuth;
    let store_error = record
        .reason
        .as_deref()
        .is_some_and(|r| r.ends_with("store_unavailable"));
    let service_metrics: Vec<Metric> = [
        (auth_failure, "AuthFailures"),
        (store_error, "StoreErrors"),
        (record.cold_start, "ColdStarts"),
    ]
    .into_iter()
    .filter(|&(on, _)| on)
    .map(|(_, name)| count(name))
    .collect();
    if !service_metrics.is_empty() {
        directives.push(Directive {
            dimensions: &[&["Service"]],
            metrics: Cow::Owned(service_metrics),
            namespace: NAMESPACE,
        });
    }
    let one = |on: bool| on.then_some(1);
    Emf {
        auth_failures: one(auth_failure),
        budget_refusals: one(refused),
        calls: 1,
        cold_starts: one(record.cold_start),
        errors: one(errors),
        latency: record.latency_ms,
        layer: refused.then(|| record.budget_layer.as_deref().unwrap_or("unknown")),
        service: &record.service,
        status: record.status.as_str(),
        store_errors: one(store_error),
        tool: record.tool.as_deref().unwrap_or("unknown"),
        aws: Metadata {
            cloud_watch_metrics: directives,
            timestamp: timestamp_ms,
        },
        agent_id: record.agent_id.as_deref(),
        kind: "metrics",
        request_id: &record.request_id,
        trace_id: record.trace_id.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document as JSON (what the log line carries).
    fn emf(record: &AuditRecord, timestamp_ms: u64) -> serde_json::Value {
        serde_json::to_value(super::emf(record, timestamp_ms)).expect("serializes")
    }

    fn record(status: CallStatus, reason: Option<&str>, layer: Option<&str>) -> AuditRecord {
        AuditRecord {
            timestamp: "2026-11-26T07:00:00.000Z".into(),
            level: "INFO",
            kind: "audit",
            service: "tollgate".into(),
            function: "lookup_customer".into(),
            cold_start: true,
            request_id: "req-1".into(),
            trace_id: Some("1-6926a570-d97a32ce83f556f3ed31b057".into()),
            agent_id: Some("bot".into()),
            auth_method: Some("api_key"),
            tool: Some("lookup_customer".into()),
            protocol_version: Some("2025-11-25".into()),
            latency_ms: 12,
            status,
            reason: reason.map(str::to_owned),
            budget_layer: layer.map(str::to_owned),
            arguments: None,
            idempotency_key: None,
            task_id: None,
        }
    }

    #[test]
    fn success_emits_calls_latency_and_cold_start() {
        insta::assert_json_snapshot!(emf(
            &record(CallStatus::Success, None, None),
            1_795_676_400_000
        ));
    }

    #[test]
    fn refusals_count_by_layer_and_as_errors() {
        let doc = emf(
            &record(CallStatus::RateLimited, Some("tool"), Some("tool")),
            0,
        );
        assert_eq!(doc["BudgetRefusals"], 1);
        assert_eq!(doc["Errors"], 1);
        assert_eq!(doc["Layer"], "tool");
        insta::assert_json_snapshot!(doc);
    }

    #[test]
    fn store_and_auth_failures_are_counted() {
        let doc = emf(
            &record(
                CallStatus::DeniedAuth,
                Some("credential_store_unavailable"),
                None,
            ),
            0,
        );
        assert_eq!(doc["AuthFailures"], 1);
        assert_eq!(doc["StoreErrors"], 1);
        // Every dimension a directive names is a top-level member (EMF requirement).
        for d in doc["_aws"]["CloudWatchMetrics"]
            .as_array()
            .expect("directives")
        {
            for set in d["Dimensions"].as_array().expect("sets") {
                for name in set.as_array().expect("names") {
                    assert!(
                        doc.get(name.as_str().expect("name")).is_some(),
                        "{name} missing"
                    );
                }
            }
            for m in d["Metrics"].as_array().expect("metrics") {
                assert!(doc.get(m["Name"].as_str().expect("name")).is_some());
            }
        }
    }
}
