//! `track_shipment`: asks the carrier's HTTP API where a parcel is.
//!
//! Calls a downstream API whose base URL is configured (`TRACK_SHIPMENT_API_URL`), with a
//! timeout inside the invocation's deadline, in a CLIENT span that the trace headers name as
//! the parent. The agent's credentials are never passed on.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tollgate::{Annotations, DefaultBudget, Json, LogAs, Tool, ToolContext, ToolError, ToolSpec};

/// Arguments of `track_shipment`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackShipmentInput {
    /// The carrier tracking number: 8 to 30 capital letters and digits.
    #[schemars(regex(pattern = r"^[A-Z0-9]{8,30}$"))]
    pub tracking_number: String,
}

/// Where a shipment is.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Shipment {
    /// `label_created`, `in_transit`, `out_for_delivery`, `delivered` or `exception`.
    pub status: String,
    /// Carrier name.
    pub carrier: String,
    /// Estimated delivery date (YYYY-MM-DD), when known.
    pub estimated_delivery: Option<String>,
    /// The most recent scan event, in the carrier's words.
    pub last_event: Option<String>,
}

/// The tool.
#[derive(Debug, Clone)]
pub struct TrackShipment {
    base_url: Option<String>,
}

/// The tool, configured from `TRACK_SHIPMENT_API_URL` (the carrier API's base URL).
pub fn tool() -> TrackShipment {
    TrackShipment {
        base_url: std::env::var("TRACK_SHIPMENT_API_URL")
            .ok()
            .map(|u| u.trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty()),
    }
}

impl TrackShipment {
    /// The tool calling the carrier API at `base_url`.
    pub fn with_base_url(base_url: impl Into<String>) -> Self {
        Self {
            base_url: Some(base_url.into().trim_end_matches('/').to_owned()),
        }
    }
}

/// Longest wait for the carrier API, whatever the deadline.
const DOWNSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

impl Tool for TrackShipment {
    type Input = TrackShipmentInput;
    type Output = Json<Shipment>;

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "track_shipment",
            title: "Track a shipment",
            description: "Get a parcel's delivery status, carrier, estimated delivery date and \
                          latest scan event from the carrier, by tracking number.",
            scope: "shipments:read",
            annotations: Annotations {
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: true,
            },
            budget: DefaultBudget::per_minute(60, 20).fail_open(),
            log_fields: &[("tracking_number", LogAs::Hashed)],
        }
    }

    async fn call(
        &self,
        ctx: ToolContext,
        input: TrackShipmentInput,
    ) -> Result<Json<Shipment>, ToolError> {
        let base = self
            .base_url
            .as_deref()
            .ok_or_else(|| ToolError::system("TRACK_SHIPMENT_API_URL is not configured"))?;
        let timeout = ctx.remaining().min(DOWNSTREAM_TIMEOUT);
        let request = ctx
            .clients
            .http
            .get(format!("{base}/v1/shipments/{}", input.tracking_number))
            .header("x-request-id", &ctx.request_id)
            .timeout(timeout);
        // In a CLIENT span, with the trace headers naming it as the parent.
        let resp = ctx
            .send(request)
            .await
            .map_err(|e| ToolError::system(e.without_url()))?;
        match resp.status().as_u16() {
            200 => resp
                .json::<Shipment>()
                .await
                .map(Json)
                .map_err(|e| ToolError::system(e.without_url())),
            404 => Err(ToolError::business(
                "The carrier has no shipment with that tracking number. Check it against the \
                 order confirmation; new labels can take a few hours to appear.",
            )),
            status => Err(ToolError::system(format!(
                "carrier API answered HTTP {status}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::catalog::RegisteredTool;

    #[test]
    fn schema_and_declarations() {
        let t = RegisteredTool::new(tool()).expect("registers");
        assert!(
            t.validate(&serde_json::json!({"tracking_number": "1Z999AA10123456784"}))
                .is_ok()
        );
        assert!(
            t.validate(&serde_json::json!({"tracking_number": "short"}))
                .is_err()
        );
        assert!(t.descriptor().output_schema.is_some());
        assert_eq!(
            t.descriptor()
                .annotations
                .as_ref()
                .and_then(|a| a.open_world_hint),
            Some(true)
        );
    }
}
