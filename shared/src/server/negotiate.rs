//! Protocol-version negotiation and the 2026-07-28 standard-header rules.
//!
//! A request is served in the *modern* era (2026-07-28: no handshake, per-request `_meta`,
//! `Mcp-Method` / `Mcp-Name` headers) when its `MCP-Protocol-Version` header says 2026-07-28 or
//! its `_meta` carries a protocol version; otherwise in the *legacy* era (2025-06-18 and
//! 2025-11-25, with `initialize`). The checks run in the order the spec's conformance suite
//! relies on: header against `_meta` first, then required `_meta`, then version support, then
//! the method and name headers.

use serde_json::Value;

use crate::error::Rejection;
use crate::http::Request;
use crate::protocol::jsonrpc::RpcRequest;
use crate::protocol::version::{ASSUMED_WITHOUT_HEADER, Era, Negotiated, decode_header_value};
use crate::protocol::{
    LATEST_LEGACY_VERSION, META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION, MODERN_VERSION,
    SUPPORTED_VERSIONS, printable,
};

fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// Negotiates the version for a request, enforcing the 2026-07-28 header rules.
pub fn negotiate(req: &Request<'_>, rpc: &RpcRequest) -> Result<Negotiated, Rejection> {
    let header = req.header("mcp-protocol-version").map(str::trim);
    let meta = rpc.meta();
    let meta_version = meta.and_then(|m| m.get(META_PROTOCOL_VERSION));
    let modern = header == Some(MODERN_VERSION) || meta_version.is_some();
    if !modern {
        return negotiate_legacy(header, rpc);
    }
    let meta_version = match meta_version {
        None => {
            return Err(Rejection::InvalidParams(format!(
                "params._meta must carry \"{META_PROTOCOL_VERSION}\""
            )));
        }
        Some(Value::String(v)) => v.as_str(),
        Some(_) => {
            return Err(Rejection::InvalidParams(format!(
                "\"{META_PROTOCOL_VERSION}\" must be a string"
            )));
        }
    };
    match header {
        None => {
            return Err(Rejection::HeaderMismatch(
                "MCP-Protocol-Version header is required".into(),
            ));
        }
        Some(h) if h != meta_version => {
            return Err(Rejection::HeaderMismatch(
                "MCP-Protocol-Version header does not match params._meta protocol version".into(),
            ));
        }
        Some(_) => {}
    }
    if !is_supported(meta_version) {
        return Err(Rejection::UnsupportedVersion {
            requested: printable(meta_version),
        });
    }
    if meta_version != MODERN_VERSION {
        // A legacy version that also sent `_meta`: legacy semantics.
        return negotiate_legacy(Some(meta_version), rpc);
    }
    if !meta
        .and_then(|m| m.get(META_CLIENT_CAPABILITIES))
        .is_some_and(Value::is_object)
    {
        return Err(Rejection::InvalidParams(format!(
            "params._meta must carry \"{META_CLIENT_CAPABILITIES}\" (an object; {{}} for none)"
        )));
    }
    check_standard_headers(req, rpc)?;
    Ok(Negotiated {
        version: MODERN_VERSION.to_owned(),
        era: Era::Modern,
    })
}

fn negotiate_legacy(header: Option<&str>, rpc: &RpcRequest) -> Result<Negotiated, Rejection> {
    if rpc.method == "initialize" {
        let requested = rpc.params.get("protocolVersion").and_then(Value::as_str);
        let version = match requested {
            Some(v) if is_supported(v) && v != MODERN_VERSION => v,
            _ => LATEST_LEGACY_VERSION,
        };
        return Ok(Negotiated {
            version: version.to_owned(),
            era: Era::Legacy,
        });
    }
    match header {
        None => Ok(Negotiated {
            version: ASSUMED_WITHOUT_HEADER.to_owned(),
            era: Era::Legacy,
        }),
        Some(v) if is_supported(v) => Ok(Negotiated {
            version: v.to_owned(),
            era: Era::Legacy,
        }),
        Some(v) => Err(Rejection::UnsupportedVersion {
            requested: printable(v),
        }),
    }
}

/// `Mcp-Method` must equal the body's method; on `tools/call`, `Mcp-Name` must equal
/// `params.name` (after trimming and decoding the `=?base64?…?=` form); on the tasks
/// extension's `tasks/get`, `tasks/update` and `tasks/cancel`, an `Mcp-Name` that is sent must
/// equal `params.taskId` (SEP-2663 routing header; a missing one is tolerated: clients that
/// predate the rule send none).
fn check_standard_headers(req: &Request<'_>, rpc: &RpcRequest) -> Result<(), Rejection> {
    match req.header("mcp-method").map(str::trim) {
        None => {
            return Err(Rejection::HeaderMismatch(
                "Mcp-Method header is required".into(),
            ));
        }
        Some(m) if m != rpc.method => {
            return Err(Rejection::HeaderMismatch(
                "Mcp-Method header does not match the body's method".into(),
            ));
        }
        Some(_) => {}
    }
    if rpc.method == "tools/call" {
        let body_name = rpc.params.get("name").and_then(Value::as_str);
        let header = req
            .header("mcp-name")
            .ok_or_else(|| Rejection::HeaderMismatch("Mcp-Name header is required".into()))?;
        let header_name = decode_header_value(header.trim())
            .ok_or_else(|| Rejection::HeaderMismatch("Mcp-Name header is not valid".into()))?;
        if body_name != Some(header_name.as_str()) {
            return Err(Rejection::HeaderMismatch(
                "Mcp-Name header does not match params.name".into(),
            ));
        }
    }
    if matches!(
        rpc.method.as_str(),
        "tasks/get" | "tasks/update" | "tasks/cancel"
    ) && let Some(header) = req.header("mcp-name")
    {
        let task_id = rpc.params.get("taskId").and_then(Value::as_str);
        if task_id.is_none() || decode_header_value(header.trim()).as_deref() != task_id {
            return Err(Rejection::HeaderMismatch(
                "Mcp-Name header does not match params.taskId".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::event_from_parts;
    use crate::protocol::jsonrpc::{Message, parse};

    fn run(headers: &[(&str, &str)], body: &str) -> Result<Negotiated, Rejection> {
        let ev = event_from_parts(
            "POST",
            "/mcp",
            headers.iter().copied(),
            Some(body.as_bytes()),
            "r",
            "127.0.0.1",
        );
        let Ok(Message::Request(rpc)) = parse(body.as_bytes()) else {
            panic!("test body must be a request");
        };
        negotiate(&Request::new(&ev), &rpc)
    }

    const META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

    #[test]
    fn initialize_echoes_supported_and_falls_back_to_latest_legacy() {
        let n = run(&[], r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#).expect("ok");
        assert_eq!((n.version.as_str(), n.era), ("2025-06-18", Era::Legacy));
        let n = run(&[], r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1999-01-01"}}"#).expect("ok");
        assert_eq!(n.version, LATEST_LEGACY_VERSION);
    }

    #[test]
    fn legacy_header_rules() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert_eq!(
            run(&[("mcp-protocol-version", "2025-11-25")], body)
                .expect("ok")
                .version,
            "2025-11-25"
        );
        assert_eq!(run(&[], body).expect("ok").version, ASSUMED_WITHOUT_HEADER);
        assert_eq!(
            run(&[("mcp-protocol-version", "2024-01-01")], body),
            Err(Rejection::UnsupportedVersion {
                requested: "2024-01-01".into()
            })
        );
    }

    /// An unsupported version is echoed bounded (printable ASCII, 64 characters at most), from
    /// the header and from `_meta` alike.
    #[test]
    fn unsupported_versions_are_echoed_bounded() {
        let long = format!("v{} <script>", "9".repeat(10_000));
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        let Err(Rejection::UnsupportedVersion { requested }) =
            run(&[("mcp-protocol-version", long.as_str())], body)
        else {
            panic!("refused");
        };
        assert_eq!(requested.len(), 64);
        assert!(requested.bytes().all(|b| b.is_ascii_graphic()));
        let version = format!("{} x", "8".repeat(5_000));
        let modern = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"{version}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
        );
        let Err(Rejection::UnsupportedVersion { requested }) = run(
            &[
                ("mcp-protocol-version", version.as_str()),
                ("mcp-method", "tools/list"),
            ],
            &modern,
        ) else {
            panic!("refused");
        };
        assert_eq!(requested, "8".repeat(64));
    }

    #[test]
    fn modern_happy_path() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t",{META}}}}}"#
        );
        let h = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", " t "),
        ];
        assert_eq!(run(&h, &body).expect("ok").era, Era::Modern);
        let h = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?dA==?="),
        ];
        assert!(run(&h, &body).is_ok());
    }

    #[test]
    fn modern_rejections_in_spec_order() {
        let tl = |meta: &str| {
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{{meta}}}}}"#)
        };
        let std = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ];
        // Header present, _meta absent: invalid params.
        assert!(matches!(
            run(&std, &tl(r#""x":1"#)),
            Err(Rejection::InvalidParams(_))
        ));
        // _meta without capabilities: invalid params.
        assert!(matches!(
            run(
                &std,
                &tl(r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#)
            ),
            Err(Rejection::InvalidParams(_))
        ));
        // _meta version differs from header: header mismatch, even when unsupported.
        let v999 = tl(
            r#""_meta":{"io.modelcontextprotocol/protocolVersion":"v999.0.0","io.modelcontextprotocol/clientCapabilities":{}}"#,
        );
        assert!(matches!(
            run(&std, &v999),
            Err(Rejection::HeaderMismatch(_))
        ));
        // Both say v999: unsupported version.
        assert_eq!(
            run(
                &[
                    ("mcp-protocol-version", "v999.0.0"),
                    ("mcp-method", "tools/list")
                ],
                &v999
            ),
            Err(Rejection::UnsupportedVersion {
                requested: "v999.0.0".into()
            })
        );
        // Missing header with modern _meta.
        assert!(matches!(
            run(&[("mcp-method", "tools/list")], &tl(META)),
            Err(Rejection::HeaderMismatch(_))
        ));
        // Method header missing, wrong, or wrong case.
        assert!(matches!(
            run(&std[..1], &tl(META)),
            Err(Rejection::HeaderMismatch(_))
        ));
        let wrong = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "TOOLS/LIST"),
        ];
        assert!(matches!(
            run(&wrong, &tl(META)),
            Err(Rejection::HeaderMismatch(_))
        ));
    }

    #[test]
    fn mcp_name_rules() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t",{META}}}}}"#
        );
        let base = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
        ];
        assert!(matches!(
            run(&base, &body),
            Err(Rejection::HeaderMismatch(_))
        ));
        let mut h = base.to_vec();
        h.push(("mcp-name", "other"));
        assert!(matches!(run(&h, &body), Err(Rejection::HeaderMismatch(_))));
        let mut h = base.to_vec();
        h.push(("mcp-name", "=?base64?dA?=")); // bad padding
        assert!(matches!(run(&h, &body), Err(Rejection::HeaderMismatch(_))));
    }

    #[test]
    fn mcp_name_on_task_methods_must_match_the_task_id() {
        for method in ["tasks/get", "tasks/update", "tasks/cancel"] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"taskId":"t-1",{META}}}}}"#
            );
            let base = [
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", method),
            ];
            // Absent: tolerated.
            assert!(run(&base, &body).is_ok(), "{method}");
            for (value, ok) in [
                ("t-1", true),
                (" t-1 ", true),
                ("=?base64?dC0x?=", true),
                ("t-2", false),
                ("", false),
                ("=?base64?dC0x?", false),
            ] {
                let mut h = base.to_vec();
                h.push(("mcp-name", value));
                assert_eq!(
                    !matches!(run(&h, &body), Err(Rejection::HeaderMismatch(_))),
                    ok,
                    "{method} with Mcp-Name {value:?}"
                );
            }
        }
        // Without a string taskId, any Mcp-Name mismatches.
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{{"taskId":7,{META}}}}}"#
        );
        let h = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tasks/get"),
            ("mcp-name", "7"),
        ];
        assert!(matches!(run(&h, &body), Err(Rejection::HeaderMismatch(_))));
    }
}
