//! The HTTP side of an API Gateway HTTP API (payload 2.0) event: a read-only view of the
//! request, and the response type every step of the pipeline builds.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// The parts of an API Gateway v2 event the pipeline reads.
#[derive(Debug)]
pub struct Request<'a> {
    event: &'a ApiGatewayV2httpRequest,
}

impl<'a> Request<'a> {
    /// Wraps an event.
    pub fn new(event: &'a ApiGatewayV2httpRequest) -> Self {
        Self { event }
    }

    /// HTTP method as API Gateway saw it.
    pub fn method(&self) -> &Method {
        &self.event.request_context.http.method
    }

    /// Request path (without the stage prefix when API Gateway strips it).
    pub fn path(&self) -> &str {
        self.event
            .raw_path
            .as_deref()
            .or(self.event.request_context.http.path.as_deref())
            .unwrap_or("/")
    }

    /// One header's value as text; `None` when absent or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.event.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.event.headers
    }

    /// API Gateway's request id (or the local stack's), for correlation.
    pub fn gateway_request_id(&self) -> Option<&str> {
        self.event.request_context.request_id.as_deref()
    }

    /// The body's length in bytes once decoded, without decoding it.
    pub fn body_len_hint(&self) -> usize {
        match &self.event.body {
            None => 0,
            Some(b) if self.event.is_base64_encoded => b.len() / 4 * 3,
            Some(b) => b.len(),
        }
    }

    /// The decoded body. A base64 body that does not decode is reported as `Err`.
    pub fn body(&self) -> Result<std::borrow::Cow<'a, [u8]>, base64::DecodeError> {
        match &self.event.body {
            None => Ok(std::borrow::Cow::Borrowed(&[])),
            Some(b) if self.event.is_base64_encoded => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(std::borrow::Cow::Owned),
            Some(b) => Ok(std::borrow::Cow::Borrowed(b.as_bytes())),
        }
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        self.event
            .raw_query_string
            .as_deref()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| percent_decode(k).as_deref() == Some(name))
            .and_then(|(_, v)| percent_decode(v))
    }

    /// The value of cookie `name`: from the event's `cookies` (API Gateway v2 moves the
    /// `Cookie` header there), else from a `Cookie` header.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let from_header = self.header("cookie").map(|h| {
            h.split(';')
                .map(|c| c.trim().to_owned())
                .collect::<Vec<_>>()
        });
        self.event
            .cookies
            .clone()
            .or(from_header)?
            .iter()
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    /// The value of field `name` of an `application/x-www-form-urlencoded` body.
    pub fn form(&self, name: &str) -> Option<String> {
        let body = self.body().ok()?;
        std::str::from_utf8(&body)
            .ok()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| percent_decode(k).as_deref() == Some(name))
            .and_then(|(_, v)| percent_decode(v))
    }

    /// The underlying event.
    pub fn event(&self) -> &'a ApiGatewayV2httpRequest {
        self.event
    }
}

/// An HTTP response under construction.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes (UTF-8 JSON for every response tollgate writes).
    pub body: Option<String>,
}

impl Response {
    /// A response with a JSON body.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        // Written through `serde_json`'s byte writer: `Value`'s `Display` goes through the
        // formatting machinery, piece by piece.
        Self::json_text(
            status,
            serde_json::to_string(body).unwrap_or_else(|_| body.to_string()),
        )
    }

    /// A response whose body is JSON text already serialized.
    pub fn json_text(status: u16, body: String) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        Self {
            status,
            headers,
            body: Some(body),
        }
    }

    /// A response with no body.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: None,
        }
    }

    /// Adds a header whose value is known to be valid (built from our own text).
    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    /// The parsed JSON body, for tests and the gateway's forward.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        self.body
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
    }

    /// Into the API Gateway v2 response shape.
    pub fn into_event_response(self) -> ApiGatewayV2httpResponse {
        let mut out = ApiGatewayV2httpResponse::default();
        out.status_code = i64::from(self.status);
        out.headers = self.headers;
        out.body = self.body.map(Body::Text);
        out.is_base64_encoded = false;
        out
    }

    /// From the API Gateway v2 response shape (what a forwarded invocation returns).
    pub fn from_event_response(resp: ApiGatewayV2httpResponse) -> Self {
        let body = match resp.body {
            None | Some(Body::Empty) => None,
            Some(Body::Text(t)) => Some(t),
            Some(Body::Binary(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
            Some(_) => None,
        };
        let body = if resp.is_base64_encoded {
            body.and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        } else {
            body
        };
        Self {
            status: u16::try_from(resp.status_code).unwrap_or(502),
            headers: resp.headers,
            body,
        }
    }
}

/// `application/x-www-form-urlencoded` decoding of one component; `None` when not UTF-8 or
/// malformed.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Builds an API Gateway HTTP API (payload 2.0) event from plain HTTP parts, as API Gateway
/// would: lowercase header names, text body, request context with method, path and source IP.
/// The local stack uses it to feed real HTTP requests to the same handler Lambda runs.
pub fn event_from_parts<'h>(
    method: &str,
    path: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    body: Option<&[u8]>,
    request_id: &str,
    source_ip: &str,
) -> ApiGatewayV2httpRequest {
    let mut header_map = serde_json::Map::new();
    let mut cookies = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if name == "cookie" {
            // API Gateway v2 passes cookies apart from the headers.
            cookies.extend(value.split(';').map(|c| c.trim().to_owned()));
            continue;
        }
        // API Gateway joins repeated headers with commas.
        let joined = match header_map.get(&name).and_then(|v| v.as_str()) {
            Some(prev) => format!("{prev},{value}"),
            None => value.to_owned(),
        };
        header_map.insert(name, serde_json::Value::String(joined));
    }
    let (body, is_base64) = match body {
        None => (serde_json::Value::Null, false),
        Some([]) => (serde_json::Value::Null, false),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => (serde_json::Value::String(text.to_owned()), false),
            Err(_) => (
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
                true,
            ),
        },
    };
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let event = serde_json::json!({
        "version": "2.0",
        "routeKey": format!("{method} {path}"),
        "rawPath": path,
        "rawQueryString": query,
        "headers": header_map,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": "127.0.0.1",
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": "",
            },
            "requestId": request_id,
            "routeKey": format!("{method} {path}"),
            "stage": "$default",
            "time": "",
            "timeEpoch": 0,
        },
        "body": body,
        "isBase64Encoded": is_base64,
        "cookies": if cookies.is_empty() { serde_json::Value::Null } else { serde_json::json!(cookies) },
    });
    serde_json::from_value(event).unwrap_or_default()
}

/// `scheme://authority` of an absolute URL (the origin of a resource URL, a callback or an
/// issuer).
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{authority}"))
}

/// The authority (`host[:port]`) of an absolute URL.
pub fn authority_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    rest.split(['/', '?', '#']).next().filter(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_come_from_the_event_as_api_gateway_passes_them() {
        let ev = event_from_parts(
            "GET",
            "/connect/login?state=s",
            [("Cookie", "a=1; tg_connect=abc=="), ("host", "x")],
            None,
            "r",
            "127.0.0.1",
        );
        assert!(ev.headers.get("cookie").is_none(), "moved to `cookies`");
        let req = Request::new(&ev);
        assert_eq!(req.cookie("tg_connect").as_deref(), Some("abc=="));
        assert_eq!(req.cookie("a").as_deref(), Some("1"));
        assert_eq!(req.cookie("tg"), None);
    }

    #[test]
    fn form_fields_are_decoded() {
        let ev = event_from_parts(
            "POST",
            "/connect/start",
            [("content-type", "application/x-www-form-urlencoded")],
            Some(b"id=h%2Fx&key=tg_a+b"),
            "r",
            "127.0.0.1",
        );
        let req = Request::new(&ev);
        assert_eq!(req.form("id").as_deref(), Some("h/x"));
        assert_eq!(req.form("key").as_deref(), Some("tg_a b"));
        assert_eq!(req.form("nope"), None);
    }
}
