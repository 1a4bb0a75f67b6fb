//! A carrier tracking API for the local stack: the downstream HTTP service `track_shipment`
//! calls. Its answers follow fixed rules so tests can reach every branch:
//! - `ERR…` -> HTTP 500; `…0000` -> 404 (unknown parcel);
//! - `DLV…` -> delivered; anything else -> in transit.
//!
//! It records the trace headers each tracking number arrived with, and whether any
//! credential header came along (it must not), readable at `GET /_seen/{number}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

type Seen = Arc<Mutex<HashMap<String, Value>>>;

async fn shipment(
    State(seen): State<Seen>,
    Path(number): Path<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Ok(mut seen) = seen.lock() {
        if seen.len() > 10_000 {
            seen.clear();
        }
        seen.insert(
            number.clone(),
            json!({
                "traceparent": header("traceparent"),
                "x-amzn-trace-id": header("x-amzn-trace-id"),
                "credentials_sent": headers.contains_key("authorization") || headers.contains_key("cookie"),
            }),
        );
    }
    if number.starts_with("ERR") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "carrier backend error").into_response();
    }
    if number.ends_with("0000") {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "not_found"})),
        )
            .into_response();
    }
    let body = if number.starts_with("DLV") {
        json!({"status": "delivered", "carrier": "Tollgate Express", "estimated_delivery": null,
               "last_event": "Delivered to the front desk"})
    } else {
        json!({"status": "in_transit", "carrier": "Tollgate Express", "estimated_delivery": "2026-12-01",
               "last_event": "Departed sorting hub"})
    };
    axum::Json(body).into_response()
}

async fn seen(State(seen): State<Seen>, Path(number): Path<String>) -> axum::response::Response {
    match seen.lock().ok().and_then(|s| s.get(&number).cloned()) {
        Some(v) => axum::Json(v).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The carrier API app.
pub fn app() -> axum::Router {
    axum::Router::new()
        .route("/v1/shipments/{number}", axum::routing::get(shipment))
        .route("/_seen/{number}", axum::routing::get(seen))
        .with_state(Seen::default())
}
