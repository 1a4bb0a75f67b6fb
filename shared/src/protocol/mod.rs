//! MCP over Streamable HTTP, stateless, JSON responses: the wire types (JSON-RPC messages, error
//! codes, protocol versions and `_meta` keys). The checks that use them (transport, version
//! negotiation) are request checks and live in the server.
//!
//! The protocol *model* (tool descriptors, results, capabilities, `server/discover`) comes from
//! the official `rmcp` crate. The dispatch is ours: tollgate answers every message from one
//! stateless handler that must turn authentication, scope and budget outcomes into HTTP status
//! codes (401/403/429/503) with their headers, which `rmcp`'s server transport cannot express.

pub mod jsonrpc;
pub mod version;

pub use jsonrpc::{Message, RequestId, RpcRequest};
pub use version::{Era, Negotiated};

/// The protocol versions tollgate serves, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &[MODERN_VERSION, "2025-11-25", "2025-06-18"];

/// Caller text safe to echo in a response or a log (a tool name, a protocol version, a string
/// id): printable ASCII only, at most 64 characters.
pub fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}
/// The stateless revision (no `initialize`, per-request `_meta`, standard headers).
pub const MODERN_VERSION: &str = "2026-07-28";
/// The newest version with the `initialize` handshake: the answer to an `initialize` that asks
/// for a version tollgate does not serve.
pub const LATEST_LEGACY_VERSION: &str = "2025-11-25";

/// `_meta` key carrying the protocol version on every 2026-07-28 request.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key carrying client capabilities on every 2026-07-28 request.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key carrying server identity on 2026-07-28 results.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// JSON-RPC and MCP error codes tollgate emits.
pub mod codes {
    /// Body is not JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Not a valid JSON-RPC message (or a batch).
    pub const INVALID_REQUEST: i32 = -32600;
    /// Unknown or removed method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Invalid params, unknown tool, missing required `_meta`.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Internal error.
    pub const INTERNAL_ERROR: i32 = -32603;
    /// MCP 2026-07-28: a standard header is missing or does not match the body.
    pub const HEADER_MISMATCH: i32 = -32020;
    /// MCP 2026-07-28: the requested protocol version is not supported.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i32 = -32022;
    // Application codes, outside the JSON-RPC reserved range as MCP asks.
    /// Authentication required or the token is invalid (HTTP 401).
    pub const UNAUTHENTICATED: i32 = -31001;
    /// The request's Origin or Host is not allowed (HTTP 403).
    pub const FORBIDDEN_ORIGIN: i32 = -31002;
    /// Permanently denied: revoked key or disabled agent (HTTP 403). Do not retry.
    pub const PERMANENTLY_DENIED: i32 = -31003;
    /// The principal lacks the tool's scope (HTTP 403).
    pub const INSUFFICIENT_SCOPE: i32 = -31004;
    /// `tasks/result` of a task that has not finished within the wait an HTTP exchange allows
    /// (HTTP 200). Poll `tasks/get`, then call `tasks/result` again.
    pub const TASK_NOT_FINISHED: i32 = -31008;
    /// The same idempotency key is in use by a call still running (HTTP 409). Retry after
    /// `Retry-After`.
    pub const IDEMPOTENCY_IN_PROGRESS: i32 = -31009;
    /// The idempotency key was used with other arguments (HTTP 422). Use a new key.
    pub const IDEMPOTENCY_KEY_REUSED: i32 = -31022;
    /// A budget is exhausted (HTTP 429). Retry after `Retry-After`.
    pub const RATE_LIMITED: i32 = -31029;
    /// A dependency is unavailable (HTTP 503). Retry after `Retry-After`.
    pub const UNAVAILABLE: i32 = -31050;
}

/// The protocol version whose `tasks` utility tollgate serves.
pub const TASKS_VERSION: &str = "2025-11-25";

/// The 2026-07-28 tasks extension (SEP-2663): declared in `server/discover`, opted into per
/// request in `_meta["io.modelcontextprotocol/clientCapabilities"].extensions`.
pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";

/// MCP 2026-07-28: the request needs a client capability it did not declare.
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i32 = -32021;

/// The `params._meta` key carrying the key (MCP SEP-3182's name).
pub const META_IDEMPOTENCY_KEY: &str = "io.modelcontextprotocol/idempotencyKey";
