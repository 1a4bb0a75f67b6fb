"""infra/openapi.yaml: a valid OpenAPI 3 document, the same routes as the deployed HTTP API,
and every status of the error contract with its headers."""

from __future__ import annotations

import pytest
from conftest import definition_body, integration_target, routes
from openapi_spec_validator import validate


def test_openapi_document_is_valid(openapi):
    validate(openapi)
    assert openapi["openapi"].startswith("3.0.")  # API Gateway HTTP APIs import OpenAPI 3.0


def test_openapi_routes_equal_the_http_api_routes(openapi, resources):
    assert routes(openapi) == routes(definition_body(resources))


def test_each_route_invokes_the_function_the_openapi_names(openapi, resources):
    body = definition_body(resources)
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            deployed = body["paths"][path][method]
            assert integration_target(deployed) == op["x-tollgate-function"], (method, path)
            integration = deployed["x-amazon-apigateway-integration"]
            assert integration["type"] == "aws_proxy"
            assert integration["payloadFormatVersion"] == "2.0"
            assert integration["timeoutInMillis"] <= 30_000


def test_definition_body_leaves_authentication_to_the_functions(resources):
    body = definition_body(resources)
    assert "security" not in body and "securitySchemes" not in body.get("components", {})
    for item in body["paths"].values():
        for op in item.values():
            assert "security" not in op
            assert not [k for k in op if k.startswith("x-tollgate")]


def test_required_routes(openapi, tool_folders):
    expected = {
        ("POST", "/mcp"),
        ("GET", "/mcp"),
        ("DELETE", "/mcp"),
        ("GET", "/.well-known/oauth-protected-resource"),
        ("GET", "/.well-known/oauth-protected-resource/{proxy+}"),
        ("GET", "/connect/callback"),
        ("GET", "/connect/start"),
        ("POST", "/connect/start"),
        ("GET", "/connect/login"),
    }
    for tool in tool_folders:
        expected |= {(m, f"/tools/{tool}/mcp") for m in ("POST", "GET", "DELETE")}
    assert routes(openapi) == expected


def test_tool_routes_document_the_scope_from_the_toolspec(openapi, functions):
    for fn in functions:
        if fn.is_tool:
            op = openapi["paths"][f"/tools/{fn.name}/mcp"]["post"]
            assert op["x-tollgate-scope"] == fn.scope
            assert fn.scope in op["description"]


def resolve(openapi, node):
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = openapi["components"][kind][name]
    return node


ERROR_CONTRACT = {
    "400": set(),
    "401": {"WWW-Authenticate"},
    "403": {"WWW-Authenticate"},
    "404": set(),
    "406": set(),
    "413": set(),
    "415": set(),
    "429": {"Retry-After", "RateLimit-Policy", "RateLimit"},
    "500": set(),
    "503": {"Retry-After"},
}


@pytest.mark.parametrize("path", ["/mcp", "/tools/{tool}/mcp"])
def test_post_declares_every_status_of_the_error_contract_with_its_headers(openapi, tool_folders, path):
    paths = [path] if "{tool}" not in path else [f"/tools/{t}/mcp" for t in tool_folders]
    for p in paths:
        responses = openapi["paths"][p]["post"]["responses"]
        assert {"200", "202"} <= set(responses)
        for status, headers in ERROR_CONTRACT.items():
            response = resolve(openapi, responses[status])
            assert headers <= set(response.get("headers", {})), (p, status)
            if status != "202":
                schema = response["content"]["application/json"]["schema"]["$ref"]
                assert schema.endswith("/JsonRpcErrorResponse"), (p, status)


def test_get_and_delete_answer_405_with_allow(openapi):
    for path, item in openapi["paths"].items():
        if path.startswith("/.well-known") or path.startswith("/connect/"):
            continue
        for method in ("get", "delete"):
            (status,) = item[method]["responses"]
            assert status == "405"
            assert "Allow" in resolve(openapi, item[method]["responses"]["405"])["headers"]
            assert item[method]["security"] == []  # refused before authentication


def test_metadata_routes_need_no_token(openapi):
    for path, item in openapi["paths"].items():
        if path.startswith("/.well-known"):
            assert item["get"]["security"] == []
            assert item["get"]["x-tollgate-function"] == "gateway"
