//! A carrier tracking API for the local stack: the downstream HTTP service `track_shipment`
//! calls. Its answers follow fixed rules so tests can reach every branch:
//! - `ERR…` -> HTTP 500; `…0000` -> 404 (unknown parcel);
//! - `DLV…` -> delivered; anything else -> in transit.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

async fn shipment(Path(number): Path<String>) -> axum::response::Response {
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

/// The carrier API app.
pub fn app() -> axum::Router {
    axum::Router::new().route("/v1/shipments/{number}", axum::routing::get(shipment))
}
