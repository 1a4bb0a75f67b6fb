//! The one mapping from every refusal to an HTTP status, headers and a JSON-RPC error body.
//!
//! Every error body is a JSON-RPC error object (with the request id where known) whose `data`
//! carries a machine-readable `reason` and a `retry` hint. Nothing internal leaks: messages are
//! fixed strings written here, never error chains.

use http::header::{ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use serde_json::json;

use crate::auth::AuthError;
use crate::http::Response;
use crate::protocol::jsonrpc::{ParseError, RequestId, error_body};
use crate::protocol::{SUPPORTED_VERSIONS, codes};

/// Why a request was refused before (or instead of) running a tool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Not POST.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Origin (or Host, on a loopback deployment) not allowed.
    #[error("origin not allowed")]
    ForbiddenOrigin,
    /// Content-Type is not application/json.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// Accept excludes application/json.
    #[error("not acceptable")]
    NotAcceptable,
    /// Body larger than the limit.
    #[error("payload too large")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not one JSON-RPC message.
    #[error("{0}")]
    Parse(ParseError),
    /// Params fail the request schema (e.g. missing `_meta` fields).
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// 2026-07-28 standard header missing or different from the body.
    #[error("header mismatch: {0}")]
    HeaderMismatch(String),
    /// Protocol version not served.
    #[error("unsupported protocol version")]
    UnsupportedVersion {
        /// What the client asked for.
        requested: String,
    },
    /// Unknown (or, in 2026-07-28, removed) method.
    #[error("method not found")]
    MethodNotFound {
        /// Whether to answer 404 (2026-07-28) rather than 200.
        http_404: bool,
    },
    /// tools/call names no tool served here.
    #[error("unknown tool")]
    UnknownTool(String),
    /// Authentication failed.
    #[error("{0}")]
    Auth(AuthError),
    /// The principal lacks the tool's scope.
    #[error("insufficient scope")]
    InsufficientScope {
        /// The scope the tool requires.
        scope: String,
    },
    /// A budget is exhausted.
    #[error("rate limited")]
    RateLimited(Box<RateLimited>),
    /// A budget's limit is 0: the operator denies every call; retrying does not help.
    #[error("budget denies all calls")]
    BudgetDenied {
        /// `agent` or `tool`.
        layer: &'static str,
        /// The policy whose limit is 0.
        policy: &'static str,
    },
    /// A call with the same idempotency key is still running.
    #[error("idempotency key in progress")]
    IdempotencyInProgress {
        /// Seconds until the running call's lease ends.
        retry_after_s: u64,
    },
    /// The idempotency key was used before with other arguments.
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    /// MCP 2026-07-28: the request needs the tasks extension and did not declare it.
    #[error("missing required client capability")]
    MissingTasksCapability,
    /// A dependency is unavailable; retry later.
    #[error("unavailable")]
    Unavailable {
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// An unexpected failure (details logged, never sent).
    #[error("internal error")]
    Internal,
}

/// The facts of a budget refusal, for the 429 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// `agent` or `tool`.
    pub layer: &'static str,
    /// The refusing policy (`agent_per_minute`, `agent_per_day`, `agent_tool`, `tool`).
    pub policy: &'static str,
    /// Its limit per window.
    pub limit: u64,
    /// Its window in seconds.
    pub window_s: u64,
    /// Milliseconds until a call can be admitted.
    pub retry_after_ms: u64,
    /// Every policy that applied, for `RateLimit-Policy`: `(name, limit, window_s)`.
    pub policies: Vec<(&'static str, u64, u64)>,
}

/// `RateLimit-Policy` header value (IETF httpapi ratelimit-headers draft, structured fields).
pub fn rate_limit_policy_header(policies: &[(&'static str, u64, u64)]) -> String {
    use std::fmt::Write as _;
    // One string written in place (this header is on every admitted call).
    let mut out = String::with_capacity(policies.len() * 48);
    for (i, (name, q, w)) in policies.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "\"{name}\";q={q};w={w}");
    }
    out
}

/// `RateLimit` header value: remaining quota `r` of `policy` and seconds `t` until it resets.
pub fn rate_limit_header(policy: &str, remaining: u64, reset_s: u64) -> String {
    format!("\"{policy}\";r={remaining};t={reset_s}")
}

impl From<AuthError> for Rejection {
    fn from(e: AuthError) -> Self {
        Self::Auth(e)
    }
}

impl Rejection {
    /// HTTP status for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::MethodNotAllowed => 405,
            Self::ForbiddenOrigin | Self::InsufficientScope { .. } | Self::BudgetDenied { .. } => {
                403
            }
            Self::UnsupportedMediaType => 415,
            Self::NotAcceptable => 406,
            Self::PayloadTooLarge { .. } => 413,
            Self::Parse(_)
            | Self::InvalidParams(_)
            | Self::HeaderMismatch(_)
            | Self::UnsupportedVersion { .. } => 400,
            Self::MethodNotFound { http_404: true } => 404,
            Self::MethodNotFound { http_404: false } | Self::UnknownTool(_) => 200,
            Self::Auth(a) if a.is_permanent() => 403,
            Self::Auth(a) if a.is_unavailable() => 503,
            Self::Unavailable { .. } => 503,
            Self::RateLimited(_) => 429,
            Self::IdempotencyInProgress { .. } => 409,
            Self::IdempotencyKeyReused => 422,
            Self::MissingTasksCapability => 400,
            Self::Auth(_) => 401,
            Self::Internal => 500,
        }
    }

    /// Machine-readable reason, also used in audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MethodNotAllowed => "method_not_allowed",
            Self::ForbiddenOrigin => "origin_not_allowed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotAcceptable => "not_acceptable",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Parse(ParseError::NotJson) => "parse_error",
            Self::Parse(ParseError::Batch) => "batch_not_supported",
            Self::Parse(_) => "invalid_request",
            Self::InvalidParams(_) => "invalid_params",
            Self::HeaderMismatch(_) => "header_mismatch",
            Self::UnsupportedVersion { .. } => "unsupported_protocol_version",
            Self::MethodNotFound { .. } => "method_not_found",
            Self::UnknownTool(_) => "unknown_tool",
            Self::Auth(a) => a.reason(),
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::RateLimited(_) => "rate_limited",
            Self::BudgetDenied { .. } => "budget_zero",
            Self::IdempotencyInProgress { .. } => "idempotency_in_progress",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::MissingTasksCapability => "missing_required_client_capability",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal => "internal_error",
        }
    }

    fn retry_hint(&self) -> &'static str {
        match self {
            Self::Auth(a) if a.is_permanent() => "never",
            Self::BudgetDenied { .. } => "never",
            Self::Auth(a) if a.is_unavailable() => "after_retry_after",
            Self::Unavailable { .. }
            | Self::RateLimited(_)
            | Self::IdempotencyInProgress { .. } => "after_retry_after",
            Self::IdempotencyKeyReused => "with_new_key",
            Self::Auth(_) => "with_new_credentials",
            Self::InsufficientScope { .. } => "after_scope_granted",
            Self::Internal => "later",
            _ => "no",
        }
    }

    fn code_and_message(&self) -> (i32, String) {
        match self {
            Self::MethodNotAllowed => (
                codes::INVALID_REQUEST,
                "Method not allowed: use POST".into(),
            ),
            Self::ForbiddenOrigin => (codes::FORBIDDEN_ORIGIN, "Origin not allowed".into()),
            Self::UnsupportedMediaType => (
                codes::INVALID_REQUEST,
                "Unsupported media type: send Content-Type: application/json".into(),
            ),
            Self::NotAcceptable => (
                codes::INVALID_REQUEST,
                "Not acceptable: Accept must include application/json".into(),
            ),
            Self::PayloadTooLarge { limit } => (
                codes::INVALID_REQUEST,
                format!("Request body too large: the limit is {limit} bytes"),
            ),
            Self::Parse(ParseError::NotJson) => {
                (codes::PARSE_ERROR, ParseError::NotJson.to_string())
            }
            Self::Parse(e) => (codes::INVALID_REQUEST, e.to_string()),
            Self::InvalidParams(m) => (codes::INVALID_PARAMS, format!("Invalid params: {m}")),
            Self::HeaderMismatch(m) => (codes::HEADER_MISMATCH, format!("Header mismatch: {m}")),
            Self::UnsupportedVersion { .. } => (
                codes::UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version".into(),
            ),
            Self::MethodNotFound { .. } => (codes::METHOD_NOT_FOUND, "Method not found".into()),
            Self::UnknownTool(name) => (codes::INVALID_PARAMS, format!("Unknown tool: {name}")),
            Self::Auth(a) if a.is_permanent() => (
                codes::PERMANENTLY_DENIED,
                "Permanently denied: this credential or agent has been switched off".into(),
            ),
            Self::Auth(a) if a.is_unavailable() => (
                codes::UNAVAILABLE,
                "Temporarily unavailable: retry after the Retry-After delay".into(),
            ),
            Self::Unavailable { .. } => (
                codes::UNAVAILABLE,
                "Temporarily unavailable: retry after the Retry-After delay".into(),
            ),
            Self::Auth(AuthError::Missing) => {
                (codes::UNAUTHENTICATED, "Authentication required".into())
            }
            Self::Auth(_) => (
                codes::UNAUTHENTICATED,
                "Invalid or expired credentials".into(),
            ),
            Self::InsufficientScope { scope } => (
                codes::INSUFFICIENT_SCOPE,
                format!("Insufficient scope: this tool requires scope {scope}"),
            ),
            Self::RateLimited(r) => (
                codes::RATE_LIMITED,
                format!(
                    "Rate limited: the {} budget ({} calls per {} s) is spent; retry after {} ms",
                    r.policy, r.limit, r.window_s, r.retry_after_ms
                ),
            ),
            Self::BudgetDenied { policy, .. } => (
                codes::PERMANENTLY_DENIED,
                format!(
                    "Permanently denied: the {policy} budget is set to 0 calls; retrying does \
                     not help until an operator raises it"
                ),
            ),
            Self::IdempotencyInProgress { retry_after_s } => (
                codes::IDEMPOTENCY_IN_PROGRESS,
                format!(
                    "A call with this idempotency key is still in progress; retry after \
                     {retry_after_s} s to get its outcome"
                ),
            ),
            Self::IdempotencyKeyReused => (
                codes::IDEMPOTENCY_KEY_REUSED,
                "This idempotency key was used with other arguments; nothing was run. Retry \
                 with the original arguments, or use a new key for a new operation"
                    .into(),
            ),
            Self::MissingTasksCapability => (
                crate::protocol::MISSING_REQUIRED_CLIENT_CAPABILITY,
                "Missing required client capability: this request needs the \
                 io.modelcontextprotocol/tasks extension in \
                 _meta[\"io.modelcontextprotocol/clientCapabilities\"].extensions"
                    .into(),
            ),
            Self::Internal => (codes::INTERNAL_ERROR, "Internal error".into()),
        }
    }

    /// The HTTP response, echoing `id` when it is known.
    pub fn into_response(
        self,
        id: Option<&RequestId>,
        resource_metadata: Option<&str>,
    ) -> Response {
        let (code, message) = self.code_and_message();
        let mut data = json!({"reason": self.reason(), "retry": self.retry_hint()});
        match &self {
            Self::UnsupportedVersion { requested } => {
                data["supported"] = json!(SUPPORTED_VERSIONS);
                data["requested"] = json!(requested);
            }
            Self::InsufficientScope { scope } => data["required_scope"] = json!(scope),
            Self::MissingTasksCapability => {
                data["requiredCapabilities"] =
                    json!({"extensions": {crate::protocol::TASKS_EXTENSION: {}}});
            }
            Self::PayloadTooLarge { limit } => data["limit_bytes"] = json!(limit),
            Self::IdempotencyInProgress { retry_after_s } => {
                data["retry_after_ms"] = json!(retry_after_s.saturating_mul(1000));
            }
            Self::BudgetDenied { layer, policy } => {
                data["layer"] = json!(layer);
                data["policy"] = json!(policy);
            }
            Self::RateLimited(r) => {
                data["layer"] = json!(r.layer);
                data["policy"] = json!(r.policy);
                data["limit"] = json!(r.limit);
                data["window_s"] = json!(r.window_s);
                data["retry_after_ms"] = json!(r.retry_after_ms);
            }
            _ => {}
        }
        let body = error_body(id, code, &message, Some(data));
        let mut resp = Response::json(self.status(), &body);
        let metadata_param = resource_metadata
            .map(|url| format!(", resource_metadata=\"{url}\""))
            .unwrap_or_default();
        match &self {
            Self::MethodNotAllowed => resp = resp.with_header(ALLOW, "POST"),
            Self::Auth(AuthError::Missing) => {
                resp = resp.with_header(
                    WWW_AUTHENTICATE,
                    &format!("Bearer realm=\"tollgate\"{metadata_param}"),
                );
            }
            Self::Auth(a) if !a.is_permanent() && !a.is_unavailable() => {
                resp = resp.with_header(
                    WWW_AUTHENTICATE,
                    &format!("Bearer realm=\"tollgate\", error=\"invalid_token\"{metadata_param}"),
                );
            }
            Self::InsufficientScope { scope } => {
                resp = resp.with_header(
                    WWW_AUTHENTICATE,
                    &format!(
                        "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"{scope}\"{metadata_param}"
                    ),
                );
            }
            Self::Auth(a) if a.is_unavailable() => resp = resp.with_header(RETRY_AFTER, "1"),
            Self::RateLimited(r) => {
                let secs = r.retry_after_ms.div_ceil(1000).max(1);
                resp = resp
                    .with_header(RETRY_AFTER, &secs.to_string())
                    .with_header(
                        http::HeaderName::from_static("ratelimit-policy"),
                        &rate_limit_policy_header(&r.policies),
                    )
                    .with_header(
                        http::HeaderName::from_static("ratelimit"),
                        &rate_limit_header(r.policy, 0, secs),
                    );
            }
            Self::Unavailable { retry_after_s } | Self::IdempotencyInProgress { retry_after_s } => {
                resp = resp.with_header(RETRY_AFTER, &retry_after_s.max(&1).to_string());
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_denial_is_403_with_its_own_code() {
        let r = Rejection::Auth(AuthError::Revoked).into_response(None, None);
        assert_eq!(r.status, 403);
        let body = r.body_json().expect("json");
        assert_eq!(body["error"]["code"], codes::PERMANENTLY_DENIED);
        assert_eq!(body["error"]["data"]["retry"], "never");
        assert!(r.headers.get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn a_zero_budget_is_a_permanent_denial_not_a_429() {
        let r = Rejection::BudgetDenied {
            layer: "tool",
            policy: "tool",
        }
        .into_response(None, None);
        assert_eq!(r.status, 403);
        assert!(r.headers.get(RETRY_AFTER).is_none());
        let body = r.body_json().expect("json");
        assert_eq!(body["error"]["code"], codes::PERMANENTLY_DENIED);
        assert_eq!(body["error"]["data"]["reason"], "budget_zero");
        assert_eq!(body["error"]["data"]["retry"], "never");
        assert_eq!(body["error"]["data"]["layer"], "tool");
    }

    #[test]
    fn invalid_token_challenge() {
        let r = Rejection::Auth(AuthError::UnknownToken).into_response(
            None,
            Some("https://x.example/.well-known/oauth-protected-resource/mcp"),
        );
        assert_eq!(r.status, 401);
        let h = r
            .headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .expect("header");
        assert!(h.contains("error=\"invalid_token\""));
        assert!(h.contains("resource_metadata=\"https://x.example/"));
    }

    #[test]
    fn rate_limited_is_429_with_headers_and_reasons() {
        let r = Rejection::RateLimited(Box::new(RateLimited {
            layer: "agent",
            policy: "agent_per_minute",
            limit: 60,
            window_s: 60,
            retry_after_ms: 1_500,
            policies: vec![("agent_per_minute", 60, 60), ("tool", 6, 60)],
        }))
        .into_response(None, None);
        assert_eq!(r.status, 429);
        let h = |n: &str| {
            r.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        assert_eq!(h("retry-after"), "2", "whole seconds, rounded up");
        assert_eq!(
            h("ratelimit-policy"),
            "\"agent_per_minute\";q=60;w=60, \"tool\";q=6;w=60"
        );
        assert_eq!(h("ratelimit"), "\"agent_per_minute\";r=0;t=2");
        let body = r.body_json().expect("json");
        assert_eq!(body["error"]["code"], codes::RATE_LIMITED);
        assert_eq!(body["error"]["data"]["layer"], "agent");
        assert_eq!(body["error"]["data"]["retry_after_ms"], 1_500);
        assert_eq!(body["error"]["data"]["retry"], "after_retry_after");
    }

    #[test]
    fn idempotency_conflicts_are_409_and_422() {
        let r = Rejection::IdempotencyInProgress { retry_after_s: 3 }.into_response(None, None);
        assert_eq!(r.status, 409);
        assert_eq!(
            r.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()),
            Some("3")
        );
        let body = r.body_json().expect("json");
        assert_eq!(body["error"]["code"], codes::IDEMPOTENCY_IN_PROGRESS);
        assert_eq!(body["error"]["data"]["retry"], "after_retry_after");
        let r = Rejection::IdempotencyKeyReused.into_response(None, None);
        assert_eq!(r.status, 422);
        assert!(r.headers.get(RETRY_AFTER).is_none());
        let body = r.body_json().expect("json");
        assert_eq!(body["error"]["code"], codes::IDEMPOTENCY_KEY_REUSED);
        assert_eq!(body["error"]["data"]["reason"], "idempotency_key_reused");
    }

    #[test]
    fn unsupported_version_lists_supported() {
        let r = Rejection::UnsupportedVersion {
            requested: "v9".into(),
        }
        .into_response(None, None);
        let body = r.body_json().expect("json");
        assert_eq!(body["error"]["code"], -32022);
        assert_eq!(body["error"]["data"]["requested"], "v9");
        assert_eq!(body["error"]["data"]["supported"][0], "2026-07-28");
    }
}
