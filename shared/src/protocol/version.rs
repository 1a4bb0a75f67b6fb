//! Protocol versions on the wire: the two eras a request can follow and the header-value
//! encoding of the 2026-07-28 standard headers. Negotiation itself is a request check and runs in
//! the server (`server::negotiate`).

use base64::Engine as _;

/// Which generation of the protocol a request follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2025-06-18 / 2025-11-25: `initialize` handshake, `ping`.
    Legacy,
    /// 2026-07-28: stateless, `server/discover`, standard headers, `resultType`.
    Modern,
}

/// The version a request is served under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Protocol version string.
    pub version: String,
    /// Its era.
    pub era: Era,
}

/// The version assumed for a legacy request without `MCP-Protocol-Version` (spec: SHOULD
/// assume 2025-03-26). Its tools semantics are those tollgate serves, so such requests are
/// answered rather than refused; see README "Protocol".
pub const ASSUMED_WITHOUT_HEADER: &str = "2025-03-26";

/// Decodes a header value that may use the `=?base64?<b64>?=` form.
pub fn decode_header_value(value: &str) -> Option<String> {
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(value.to_owned()),
    }
}
