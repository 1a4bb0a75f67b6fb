//! JSON-RPC 2.0 message parsing: one message per body, no batches.

use serde_json::Value;

/// A request id: a string or an integer, echoed back unchanged (a string stays a string).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum RequestId {
    /// Numeric id.
    Number(serde_json::Number),
    /// String id.
    String(String),
}

/// A JSON-RPC request (has an id).
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// The id to echo.
    pub id: RequestId,
    /// Method name.
    pub method: String,
    /// Params object (empty when absent).
    pub params: serde_json::Map<String, Value>,
}

impl RpcRequest {
    /// `params._meta`, when present and an object.
    pub fn meta(&self) -> Option<&serde_json::Map<String, Value>> {
        self.params.get("_meta").and_then(Value::as_object)
    }
}

/// One parsed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request expecting a response.
    Request(RpcRequest),
    /// A notification (no id): answered with 202 and no body.
    Notification {
        /// Method name.
        method: String,
        /// Params object (empty when absent).
        params: serde_json::Map<String, Value>,
    },
    /// A response from the client (tollgate never sends requests): accepted with 202.
    Response,
}

/// Why a body is not one JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not JSON (or not UTF-8).
    #[error("Parse error: the body is not valid JSON")]
    NotJson,
    /// A JSON array: batches are not supported.
    #[error("Invalid Request: batches are not supported; send one JSON-RPC message per request")]
    Batch,
    /// JSON, but not a JSON-RPC 2.0 message.
    #[error("Invalid Request: {0}")]
    Invalid(&'static str),
}

/// Parses a body into one message. On an invalid message, the id is returned too when it could
/// be read, so the error response can echo it.
pub fn parse(body: &[u8]) -> Result<Message, (ParseError, Option<RequestId>)> {
    let value: Value = serde_json::from_slice(body).map_err(|_| (ParseError::NotJson, None))?;
    let mut obj = match value {
        Value::Object(o) => o,
        Value::Array(_) => return Err((ParseError::Batch, None)),
        _ => return Err((ParseError::Invalid("the body must be a JSON object"), None)),
    };
    let id = match obj.get("id") {
        None => None,
        Some(Value::String(s)) => Some(RequestId::String(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(RequestId::Number(n.clone())),
        Some(_) => {
            return Err((
                ParseError::Invalid("id must be a string or an integer"),
                None,
            ));
        }
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((ParseError::Invalid("jsonrpc must be \"2.0\""), id));
    }
    // Taken out of the parsed object, not copied: it is dropped at the end anyway.
    let params = match obj.remove("params") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err((ParseError::Invalid("params must be an object"), id)),
    };
    match (obj.remove("method"), id) {
        (Some(Value::String(method)), Some(id)) => {
            Ok(Message::Request(RpcRequest { id, method, params }))
        }
        (Some(Value::String(method)), None) => Ok(Message::Notification { method, params }),
        (Some(_), id) => Err((ParseError::Invalid("method must be a string"), id)),
        (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
            Ok(Message::Response)
        }
        (None, id) => Err((ParseError::Invalid("a request needs a method"), id)),
    }
}

/// A JSON-RPC success response body.
pub fn result_body(id: &RequestId, result: Value) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A JSON-RPC success response as text: the same members as [`result_body`], written straight
/// from the id and the result (no envelope built as a tree and dropped on every call).
pub fn result_text(id: &RequestId, result: &Value) -> String {
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        id: &'a RequestId,
        jsonrpc: &'static str,
        result: &'a Value,
    }
    let envelope = Envelope {
        id,
        jsonrpc: "2.0",
        result,
    };
    // Neither an id nor a `Value` can fail to serialize; the tree form is the fallback anyway.
    serde_json::to_string(&envelope).unwrap_or_else(|_| result_body(id, result.clone()).to_string())
}

/// A JSON-RPC error response body; `id` is omitted when it could not be read.
pub fn error_body(id: Option<&RequestId>, code: i32, message: &str, data: Option<Value>) -> Value {
    let mut error = serde_json::json!({"code": code, "message": message});
    if let Some(d) = data {
        error["data"] = d;
    }
    let mut body = serde_json::json!({"jsonrpc": "2.0", "error": error});
    if let Some(id) = id {
        body["id"] = serde_json::to_value(id).unwrap_or(Value::Null);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_notification_response() {
        let m = parse(br#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#).expect("ok");
        assert!(matches!(m, Message::Request(r) if r.id == RequestId::String("a".into())));
        let m = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).expect("ok");
        assert!(matches!(m, Message::Notification { .. }));
        let m = parse(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).expect("ok");
        assert_eq!(m, Message::Response);
    }

    #[test]
    fn string_ids_stay_strings() {
        let Ok(Message::Request(r)) = parse(br#"{"jsonrpc":"2.0","id":"7","method":"x"}"#) else {
            panic!("request expected");
        };
        assert_eq!(
            result_body(&r.id, Value::Null)["id"],
            Value::String("7".into())
        );
    }

    proptest! {
        #[test]
        fn result_text_is_the_result_body(
            id in prop_oneof![
                any::<i64>().prop_map(|n| RequestId::Number(n.into())),
                any::<u64>().prop_map(|n| RequestId::Number(n.into())),
                ".{0,12}".prop_map(RequestId::String),
            ],
            text in ".{0,40}",
            n in any::<i64>(),
            flag in any::<bool>(),
        ) {
            let result = serde_json::json!({
                "content": [{"type": "text", "text": text}],
                "isError": flag,
                "structuredContent": {"n": n, "nested": {"s": text, "list": [n, null]}},
            });
            let from_text: Value = serde_json::from_str(&result_text(&id, &result)).expect("JSON");
            prop_assert_eq!(from_text, result_body(&id, result));
        }
    }

    #[test]
    fn result_text_puts_id_and_version_before_the_result() {
        assert_eq!(
            result_text(
                &RequestId::String("a\"b".into()),
                &serde_json::json!({"k": [1, "x"]})
            ),
            r#"{"id":"a\"b","jsonrpc":"2.0","result":{"k":[1,"x"]}}"#
        );
        assert_eq!(
            result_text(&RequestId::Number(7.into()), &Value::Null),
            r#"{"id":7,"jsonrpc":"2.0","result":null}"#
        );
    }

    #[test]
    fn errors() {
        assert_eq!(parse(b"{nope").expect_err("json").0, ParseError::NotJson);
        assert_eq!(parse(b"[]").expect_err("batch").0, ParseError::Batch);
        assert!(matches!(
            parse(b"3").expect_err("scalar").0,
            ParseError::Invalid(_)
        ));
        let (e, id) = parse(br#"{"jsonrpc":"1.0","id":5,"method":"x"}"#).expect_err("version");
        assert!(matches!(e, ParseError::Invalid(_)));
        assert_eq!(id, Some(RequestId::Number(5.into())));
        assert!(parse(br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#).is_err());
        assert!(parse(br#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#).is_err());
        assert!(parse(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#).is_err());
        assert!(parse(br#"{"jsonrpc":"2.0","id":1}"#).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&body);
        }
    }
}
