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

use serde_json::{Value, json};

use crate::audit::{AuditRecord, CallStatus};

/// CloudWatch namespace of every tollgate metric.
pub const NAMESPACE: &str = "Tollgate";

fn directive(dimensions: Value, metrics: &[(&str, &str)]) -> Value {
    json!({
        "Namespace": NAMESPACE,
        "Dimensions": dimensions,
        "Metrics": metrics.iter().map(|(n, u)| json!({"Name": n, "Unit": u})).collect::<Vec<_>>(),
    })
}

/// The EMF document for one audited call, at `timestamp_ms`.
pub fn emf(record: &AuditRecord, timestamp_ms: u64) -> Value {
    let tool = record.tool.as_deref().unwrap_or("unknown");
    let mut directives = vec![directive(
        json!([["Service", "Tool"]]),
        &[("Calls", "Count"), ("Latency", "Milliseconds")],
    )];
    let mut doc = json!({
        "kind": "metrics",
        "Service": record.service,
        "Tool": tool,
        "Status": record.status.as_str(),
        "Calls": 1,
        "Latency": record.latency_ms,
        "request_id": record.request_id,
    });
    if let Some(agent) = &record.agent_id {
        doc["agent_id"] = json!(agent);
    }
    if let Some(trace) = &record.trace_id {
        doc["trace_id"] = json!(trace);
    }
    if !matches!(
        record.status,
        CallStatus::Success
            | CallStatus::Replayed
            | CallStatus::TaskCreated
            | CallStatus::Cancelled
    ) {
        directives.push(directive(
            json!([["Service", "Status"], ["Service", "Tool", "Status"]]),
            &[("Errors", "Count")],
        ));
        doc["Errors"] = json!(1);
    }
    if record.status == CallStatus::RateLimited {
        doc["Layer"] = json!(record.budget_layer.as_deref().unwrap_or("unknown"));
        directives.push(directive(
            json!([["Service", "Tool", "Layer"]]),
            &[("BudgetRefusals", "Count")],
        ));
        doc["BudgetRefusals"] = json!(1);
    }
    let mut service_metrics = Vec::new();
    if record.status == CallStatus::DeniedAuth {
        service_metrics.push(("AuthFailures", "Count"));
        doc["AuthFailures"] = json!(1);
    }
    if record
        .reason
        .as_deref()
        .is_some_and(|r| r.ends_with("store_unavailable"))
    {
        service_metrics.push(("StoreErrors", "Count"));
        doc["StoreErrors"] = json!(1);
    }
    if record.cold_start {
        service_metrics.push(("ColdStarts", "Count"));
        doc["ColdStarts"] = json!(1);
    }
    if !service_metrics.is_empty() {
        directives.push(directive(json!([["Service"]]), &service_metrics));
    }
    doc["_aws"] = json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives});
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

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
