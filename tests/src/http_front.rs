//! An HTTP front door that does what API Gateway does for tollgate's routes: build a payload
//! 2.0 event from the HTTP request, pick the function by route, return its response.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as AxumResponse};
use tollgate::Server;
use tollgate::server::Invocation;

/// The routed functions.
#[derive(Debug, Clone)]
pub struct Routes {
    /// `POST /mcp`.
    pub gateway: Arc<Server>,
    /// `POST /tools/{tool}/mcp`, by tool name.
    pub tools: HashMap<String, Arc<Server>>,
    /// Deadline given to each invocation (a Lambda timeout).
    pub timeout: Duration,
}

/// The axum app serving every route.
pub fn app(routes: Routes) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(Arc::new(routes))
}

async fn handle(
    State(routes): State<Arc<Routes>>,
    peer: Option<axum::Extension<Option<crate::tls_front::PeerCert>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> AxumResponse {
    let path = uri.path();
    let server = if path == "/mcp"
        || path.starts_with(tollgate::server::WELL_KNOWN_PRM)
        || path == tollgate::connect::CALLBACK_PATH
        || path == tollgate::connect::START_PATH
        || path == tollgate::connect::LOGIN_PATH
    {
        Some(routes.gateway.clone())
    } else {
        path.strip_prefix("/tools/")
            .and_then(|rest| rest.strip_suffix("/mcp"))
            .and_then(|tool| routes.tools.get(tool).cloned())
    };
    let Some(server) = server else {
        return (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            r#"{"message":"Not Found"}"#,
        )
            .into_response();
    };
    let header_pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut event = tollgate::http::event_from_parts(
        method.as_str(),
        uri.path_and_query().map_or(path, |p| p.as_str()),
        header_pairs,
        Some(&body),
        &request_id,
        "127.0.0.1",
    );
    // Over mutual TLS, the verified client certificate, as API Gateway passes it.
    if let Some(axum::Extension(Some(peer))) = peer {
        event.request_context.authentication = Some(peer.0);
    }
    let inv = Invocation::new(request_id, routes.timeout);
    let resp = server.respond(&event, &inv).await;
    // As on Lambda: spans are exported after the response, never on its path.
    tokio::spawn(tollgate::telemetry::flush());
    let mut out = AxumResponse::new(axum::body::Body::from(resp.body.unwrap_or_default()));
    *out.status_mut() = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
    *out.headers_mut() = resp.headers;
    out
}
