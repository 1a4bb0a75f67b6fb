//! Tests of the conformance fixture, driving the real pipeline in-process.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tollgate::server::Invocation;

use super::*;

const URL: &str = "http://127.0.0.1:4555/mcp";

fn fixture() -> Arc<Server> {
    let audit = Arc::new(tollgate::audit::MemorySink::default());
    server(
        config(URL, |_| None).expect("config"),
        audit,
        &offline_sdk(),
    )
    .expect("server")
}

/// The suite's `json-schema-2020-12` fixture schema, verbatim from
/// `@modelcontextprotocol/conformance` 0.2.0-alpha.12 (`src/scenarios/server/json-schema-2020-12.ts`).
fn suite_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {"address": {"$anchor": "addressDef", "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
            "contactMethod": {"type": "string", "enum": ["phone", "email"]},
            "phone": {"type": "string"}, "email": {"type": "string"}},
        "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
        "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
        "then": {"required": ["phone"]},
        "else": {"required": ["email"]},
        "additionalProperties": false
    })
}

/// POSTs `body` to the fixture as the suite would at `version`, returning (status, body).
async fn post(server: &Server, version: &str, body: Value) -> (u16, Value) {
    let method = body["method"].as_str().unwrap_or_default().to_owned();
    let name = body["params"]["name"].as_str().map(str::to_owned);
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        ("accept", "application/json, text/event-stream".to_owned()),
        ("host", "127.0.0.1:4555".to_owned()),
        ("mcp-protocol-version", version.to_owned()),
        ("mcp-method", method),
    ];
    if let Some(n) = name {
        headers.push(("mcp-name", n));
    }
    let mut body = body;
    if version == "2026-07-28" {
        body["params"]["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientCapabilities": {},
        });
    }
    let bytes = serde_json::to_vec(&body).expect("json");
    let event = tollgate::http::event_from_parts(
        "POST",
        "/mcp",
        headers.iter().map(|(k, v)| (*k, v.as_str())),
        Some(&bytes),
        "test-request",
        "127.0.0.1",
    );
    let resp = server
        .respond(
            &event,
            &Invocation::new("test-request", Duration::from_secs(5)),
        )
        .await;
    let body = resp.body.map_or(Value::Null, |b| {
        serde_json::from_str(&b).expect("json body")
    });
    (resp.status, body)
}

async fn call(server: &Server, version: &str, tool: &str) -> Value {
    let (status, body) = post(
        server,
        version,
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {}}}),
    )
    .await;
    assert_eq!(status, 200, "{tool} at {version}: {body}");
    body["result"].clone()
}

#[test]
fn json_schema_tool_lists_the_suites_schema_plus_a_title() {
    let catalog = catalog().expect("catalog");
    let tool = catalog.get("json_schema_2020_12_tool").expect("registered");
    let mut listed = Value::Object((*tool.descriptor().input_schema).clone());
    // schemars' `into_root_schema_for` always adds `title` (the type name) to a root schema;
    // it is an annotation, so the schema is otherwise the suite's, keyword for keyword.
    let title = listed.as_object_mut().and_then(|o| o.remove("title"));
    assert_eq!(title, Some(json!("ContactInput")));
    assert_eq!(listed, suite_schema());
    assert_eq!(
        tool.descriptor().description.as_deref(),
        Some("Tool with JSON Schema 2020-12 features")
    );
}

#[test]
fn json_schema_tool_validates_with_its_conditionals() {
    let catalog = catalog().expect("catalog");
    let tool = catalog.get("json_schema_2020_12_tool").expect("registered");
    assert!(
        tool.validate(&json!({"contactMethod": "phone", "phone": "+1 555 0100"}))
            .is_ok()
    );
    assert!(
        tool.validate(&json!({"email": "a@example.com", "address": {"city": "Paris"}}))
            .is_ok()
    );
    assert!(
        tool.validate(&json!({"contactMethod": "phone", "email": "a@example.com"}))
            .is_err()
    );
    assert!(tool.validate(&json!({})).is_err());
    assert!(
        tool.validate(&json!({"email": "a@example.com", "extra": 1}))
            .is_err()
    );
}

#[test]
fn every_fixture_holds_the_principals_scope() {
    let catalog = catalog().expect("catalog");
    assert_eq!(catalog.scopes(), vec![SCOPE]);
    assert!(principal().has_scope(SCOPE));
}

#[tokio::test]
async fn first_listed_tool_succeeds_with_empty_arguments() {
    let server = fixture();
    for version in ["2025-06-18", "2025-11-25", "2026-07-28"] {
        let (status, body) = post(
            &server,
            version,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let names: Vec<&str> = body["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "confirm_delete",
                "echo",
                "failing_job",
                "greet",
                "json_schema_2020_12_tool",
                "protocol_error_job",
                "slow_compute",
                "test_audio_content",
                "test_embedded_resource",
                "test_error_handling",
                "test_image_content",
                "test_logging_tool",
                "test_multiple_content_types",
                "test_simple_text",
                "test_streaming_elicitation",
            ]
        );
        let result = call(&server, version, names[0]).await;
        assert_eq!(result["isError"], json!(false), "{result}");
    }
}

#[tokio::test]
async fn fixture_results_match_the_suites_expectations() {
    let server = fixture();
    for version in ["2025-06-18", "2025-11-25", "2026-07-28"] {
        let text = call(&server, version, "test_simple_text").await;
        assert_eq!(
            text["content"],
            json!([{"type": "text", "text": "This is a simple text response for testing."}])
        );

        let image = call(&server, version, "test_image_content").await;
        assert_eq!(
            image["content"],
            json!([{"type": "image", "data": PNG_1X1_BASE64, "mimeType": "image/png"}])
        );

        let audio = call(&server, version, "test_audio_content").await;
        assert_eq!(audio["content"][0]["type"], "audio");
        assert_eq!(audio["content"][0]["mimeType"], "audio/wav");

        let embedded = call(&server, version, "test_embedded_resource").await;
        assert_eq!(
            embedded["content"],
            json!([{"type": "resource", "resource": {"uri": "test://embedded-resource",
                "mimeType": "text/plain", "text": "This is an embedded resource content."}}])
        );

        let mixed = call(&server, version, "test_multiple_content_types").await;
        assert_eq!(
            mixed["content"],
            json!([
                {"type": "text", "text": "Multiple content types test:"},
                {"type": "image", "data": PNG_1X1_BASE64, "mimeType": "image/png"},
                {"type": "resource", "resource": {"uri": "test://mixed-content-resource",
                    "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}"}}
            ])
        );

        let error = call(&server, version, "test_error_handling").await;
        assert_eq!(error["isError"], json!(true));
        assert_eq!(
            error["content"][0]["text"],
            "This tool intentionally returns an error for testing"
        );
    }
}

#[test]
fn media_fixtures_are_well_formed() {
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG_1X1_BASE64)
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let wav = silent_wav();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..16], b"WAVEfmt ");
    let riff_len = u32::from_le_bytes([wav[4], wav[5], wav[6], wav[7]]) as usize;
    assert_eq!(riff_len + 8, wav.len());
}

#[test]
fn resource_url_defaults_to_the_served_url() {
    assert_eq!(
        config(URL, |_| None)
            .expect("config")
            .resource_url
            .as_deref(),
        Some(URL)
    );
    let set = config(URL, |k| {
        (k == "TOLLGATE_RESOURCE_URL").then(|| "https://mcp.example.com/mcp".to_owned())
    });
    assert_eq!(
        set.expect("config").resource_url.as_deref(),
        Some("https://mcp.example.com/mcp")
    );
    let empty = config(URL, |k| (k == "TOLLGATE_RESOURCE_URL").then(String::new));
    assert_eq!(empty.expect("config").resource_url.as_deref(), Some(URL));
}

#[test]
fn port_comes_from_argv_then_env() {
    let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        port(argv(&["bin", "4100"]), Some("4200".into())).expect("argv"),
        4100
    );
    assert_eq!(
        port(argv(&["bin"]), Some("4200".into())).expect("env"),
        4200
    );
    assert_eq!(port(argv(&["bin"]), None).expect("default"), 0);
    assert!(port(argv(&["bin", "http"]), None).is_err());
}

#[test]
fn task_records_need_a_loopback_dynamodb_endpoint() {
    assert!(dynamodb_endpoint(None).is_err());
    assert!(dynamodb_endpoint(Some(String::new())).is_err());
    for refused in [
        "https://dynamodb.us-east-1.amazonaws.com",
        "http://dynamodb.us-east-1.amazonaws.com:80",
        "http://127.0.0.1.example.com:8000",
        "http://127.0.0.1",
    ] {
        assert!(
            dynamodb_endpoint(Some(refused.into())).is_err(),
            "{refused}"
        );
    }
    for accepted in ["http://127.0.0.1:8000", "http://localhost:4566/"] {
        assert_eq!(
            dynamodb_endpoint(Some(accepted.into())).expect(accepted),
            accepted
        );
    }
}

#[tokio::test]
async fn task_fixtures_answer_plain_calls_as_the_suite_expects() {
    let server = fixture();
    for version in ["2025-06-18", "2025-11-25", "2026-07-28"] {
        let (status, body) = post(
            &server,
            version,
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "greet", "arguments": {"name": "World"}}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["content"][0]["text"], "Hello, World!");
        let deleted = call(&server, version, "confirm_delete").await;
        assert_eq!(deleted["isError"], json!(false), "{deleted}");
        assert!(
            deleted["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("Not deleted")),
            "{deleted}"
        );
    }
    // Task support `required`, called by a client without the extension: -32021 naming it.
    let (status, body) = post(
        &server,
        "2026-07-28",
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
            "params": {"name": "failing_job", "arguments": {}}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], -32021);
    assert_eq!(
        body["error"]["data"]["requiredCapabilities"]["extensions"]["io.modelcontextprotocol/tasks"],
        json!({})
    );
}
