"""MCP flows with the official MCP Python SDK, against the gateway and each tool's own endpoint,
in every supported protocol era: 2025-06-18 and 2025-11-25 (initialize handshake) and 2026-07-28
(stateless, server/discover)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import mcp.client.session as sdk_session
import pytest
from mcp import ClientSession
from mcp.shared.exceptions import MCPError

from helpers import (
    CATALOG_SCOPES,
    MODERN,
    SUPPORTED_VERSIONS,
    TOOL_SCOPES,
    base_headers,
    legacy_request,
    modern_headers,
    modern_request,
    mcp_session,
    post,
    rpc_result,
)

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
ERAS = ["2025-06-18", "2025-11-25", MODERN]
ADA = {"customer_id": "C-1001", "name": "Ada Lovelace", "tier": "premium", "status": "active"}
GRACE = {"customer_id": "C-1002", "name": "Grace Hopper", "tier": "enterprise", "status": "active"}
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"


async def connect(session: ClientSession, era: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs the SDK's own handshake for `era`."""
    if era == MODERN:
        result = await session.discover()
        assert result.supported_versions == SUPPORTED_VERSIONS
        assert result.capabilities.tools is not None
        assert result.result_type == "complete"
        assert (result.meta or {})[SERVER_INFO_KEY]["name"] == "tollgate"
    else:
        # The SDK offers its newest handshake version (2025-11-25); make it offer `era` instead.
        monkeypatch.setattr(sdk_session, "LATEST_HANDSHAKE_VERSION", era)
        result = await session.initialize()
        assert result.protocol_version == era
        assert result.server_info.name == "tollgate"
        assert result.capabilities.tools is not None
    assert session.protocol_version == era


def structured(result: Any) -> dict[str, Any]:
    """The structured content of a successful call; its text block carries the same JSON."""
    assert result.is_error is False, result
    assert result.structured_content is not None, result
    texts = [c.text for c in result.content if c.type == "text"]
    assert texts and json.loads(texts[0]) == result.structured_content
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error is True, result
    return " ".join(c.text for c in result.content if c.type == "text")


def assert_era_result(result: Any, era: str) -> None:
    if era == MODERN:
        assert result.result_type == "complete"
        assert (result.meta or {})[SERVER_INFO_KEY]["name"] == "tollgate"


async def exercise_lookup_customer(session: ClientSession, era: str) -> None:
    r = await session.call_tool("lookup_customer", {"email": "ada@example.com"})
    assert structured(r) == ADA
    assert_era_result(r, era)
    r = await session.call_tool("lookup_customer", {"email": "Grace@Example.COM"})
    assert structured(r) == GRACE
    r = await session.call_tool("lookup_customer", {"email": "linus@example.com"})
    assert structured(r)["status"] == "suspended"
    r = await session.call_tool("lookup_customer", {"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com"})
    text = error_text(r)
    assert "internal error" not in text and "no customer" in text.lower()


async def exercise_open_ticket(session: ClientSession, era: str) -> None:
    args = {"customer_id": "C-1001", "subject": "Printer on fire", "description": "Smoke.", "priority": "high"}
    r = await session.call_tool("open_ticket", args)
    first = structured(r)
    assert first["status"] == "open" and first["priority"] == "high"
    assert first["ticket_id"]
    assert_era_result(r, era)
    r = await session.call_tool("open_ticket", args)
    assert structured(r)["ticket_id"] != first["ticket_id"], "no idempotency key: a second ticket"
    r = await session.call_tool("open_ticket", {**args, "customer_id": "C-1003"})
    assert "suspended" in error_text(r)


async def exercise_track_shipment(session: ClientSession, era: str) -> None:
    r = await session.call_tool("track_shipment", {"tracking_number": "DLV12345678"})
    body = structured(r)
    assert body["status"] == "delivered" and body["carrier"] == "Tollgate Express"
    assert_era_result(r, era)
    r = await session.call_tool("track_shipment", {"tracking_number": "ABC123456789"})
    body = structured(r)
    assert body["status"] == "in_transit" and body["estimated_delivery"] == "2026-12-01"
    r = await session.call_tool("track_shipment", {"tracking_number": "ABCD12340000"})
    text = error_text(r)
    assert "no shipment" in text and "internal error" not in text
    r = await session.call_tool("track_shipment", {"tracking_number": "ERR123456789"})
    text = error_text(r)
    assert "internal error (reference " in text
    # The reference is a random id and may itself contain "500": look only at the rest.
    rest = re.sub(r"\(reference [^)]*\)", "", text)
    assert "carrier backend error" not in rest and "500" not in rest


EXERCISES = {
    "lookup_customer": exercise_lookup_customer,
    "open_ticket": exercise_open_ticket,
    "track_shipment": exercise_track_shipment,
}


@pytest.mark.parametrize("era", ERAS)
async def test_gateway_lists_and_calls_every_tool(stack, token, era, monkeypatch) -> None:
    exchanges: list = []
    async with mcp_session(stack.gateway_url, token, exchanges) as session:
        await connect(session, era, monkeypatch)
        listed = await session.list_tools()
        assert sorted(t.name for t in listed.tools) == sorted(TOOL_SCOPES)
        for tool in listed.tools:
            assert tool.description and tool.input_schema["type"] == "object"
            assert tool.output_schema is not None
        if era == MODERN:
            assert listed.ttl_ms is not None and listed.ttl_ms >= 0
            assert listed.cache_scope == "private"
            assert listed.result_type == "complete"
        for name in sorted(TOOL_SCOPES):
            await EXERCISES[name](session, era)
    assert_stateless_exchanges(exchanges, era)


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("tool", sorted(TOOL_SCOPES))
async def test_tool_endpoint_serves_its_own_tool(stack, token, tool, era, monkeypatch) -> None:
    exchanges: list = []
    async with mcp_session(stack.tool_url(tool), token, exchanges) as session:
        await connect(session, era, monkeypatch)
        listed = await session.list_tools()
        assert [t.name for t in listed.tools] == [tool]
        await EXERCISES[tool](session, era)
        others = sorted(set(TOOL_SCOPES) - {tool})
        with pytest.raises(MCPError) as info:
            await session.call_tool(others[0], {})
        assert info.value.code == -32602
    assert_stateless_exchanges(exchanges, era)


def assert_stateless_exchanges(exchanges: list, era: str) -> None:
    """Every request carried the negotiated version; no response ever carried a session id."""
    assert exchanges
    for request, response in exchanges:
        assert "mcp-session-id" not in response.headers, (request.url, dict(response.headers))
        if request.method != "POST":
            assert response.status_code == 405 and response.headers.get("allow") == "POST"
            continue
        body = json.loads(request.content)
        if body.get("method") == "initialize":
            continue
        assert request.headers.get("mcp-protocol-version") == era, (body, dict(request.headers))
        if body.get("id") is None:
            # (the SDK streams bodies; an empty body shows as Content-Length 0)
            assert response.status_code == 202, body
            assert response.headers.get("content-length") == "0", dict(response.headers)


@pytest.mark.parametrize("era", ERAS)
async def test_idempotent_ticket_replay(stack, token, era, monkeypatch) -> None:
    """The framework's idempotency key in `_meta`: a retry returns the first ticket, on either
    route; another key opens another ticket."""
    key = f"idem-{uuid.uuid4().hex}"
    meta_key = "io.modelcontextprotocol/idempotencyKey"
    args = {
        "customer_id": "C-1002",
        "subject": "Invoice missing",
        "description": "The March invoice never arrived.",
        "priority": "normal",
    }
    async with mcp_session(stack.gateway_url, token) as session:
        await connect(session, era, monkeypatch)
        first = await session.call_tool("open_ticket", args, meta={meta_key: key})
        again = await session.call_tool("open_ticket", args, meta={meta_key: key})
    assert (first.meta or {})["tollgate/idempotency"]["replayed"] is False
    assert (again.meta or {})["tollgate/idempotency"]["replayed"] is True
    assert structured(again) == structured(first)
    # The same key through the tool's own endpoint finds the same record.
    async with mcp_session(stack.tool_url("open_ticket"), token) as session:
        await connect(session, era, monkeypatch)
        direct = await session.call_tool("open_ticket", args, meta={meta_key: key})
        other = await session.call_tool("open_ticket", args, meta={meta_key: key[::-1]})
    assert structured(direct) == structured(first)
    assert (direct.meta or {})["tollgate/idempotency"]["replayed"] is True
    assert structured(other)["ticket_id"] != structured(first)["ticket_id"]


# --- raw protocol checks (what the SDK does not expose) ----------------------------------------


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
def test_legacy_initialize_echoes_supported_version(stack, token, http, version) -> None:
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}
    resp = post(http, stack.gateway_url, legacy_request("initialize", params, id="init-1"), base_headers(token))
    result = rpc_result(resp, id="init-1")
    assert result["protocolVersion"] == version
    assert result["serverInfo"]["name"] == "tollgate" and result["serverInfo"]["version"]
    assert "tools" in result["capabilities"]
    assert "mcp-session-id" not in resp.headers


@pytest.mark.parametrize("asked", ["2024-11-05", "1999-01-01", MODERN])
def test_legacy_initialize_counter_offers_latest_legacy_version(stack, token, http, asked) -> None:
    params = {"protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}
    resp = post(http, stack.gateway_url, legacy_request("initialize", params, id=7), base_headers(token))
    assert rpc_result(resp, id=7)["protocolVersion"] == "2025-11-25"


def test_legacy_notification_accepted_without_body(stack, token, http) -> None:
    msg = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    for url in (stack.gateway_url, stack.tool_url("lookup_customer")):
        resp = post(http, url, msg, base_headers(token, "2025-11-25"))
        assert resp.status_code == 202 and resp.content == b""
        assert "mcp-session-id" not in resp.headers


def test_legacy_ping(stack, token, http) -> None:
    resp = post(http, stack.gateway_url, legacy_request("ping", id="p"), base_headers(token, "2025-06-18"))
    assert rpc_result(resp, id="p") == {}


def test_modern_discover_raw(stack, token, http) -> None:
    resp = post(
        http,
        stack.gateway_url,
        modern_request("server/discover", id="d-1"),
        modern_headers(token, "server/discover"),
    )
    result = rpc_result(resp, id="d-1")
    assert result["supportedVersions"] == SUPPORTED_VERSIONS
    assert result["resultType"] == "complete"
    assert "tools" in result["capabilities"]
    assert result["_meta"][SERVER_INFO_KEY]["name"] == "tollgate"
    assert isinstance(result["ttlMs"], int) and result["ttlMs"] >= 0
    assert result["cacheScope"] in ("public", "private")


@pytest.mark.parametrize("route", ["gateway", "lookup_customer"])
def test_modern_results_carry_result_type_and_server_info(stack, token, http, route) -> None:
    url = stack.gateway_url if route == "gateway" else stack.tool_url(route)
    resp = post(http, url, modern_request("tools/list", id=11), modern_headers(token, "tools/list"))
    listed = rpc_result(resp, id=11)
    assert listed["resultType"] == "complete"
    assert listed["_meta"][SERVER_INFO_KEY]["name"] == "tollgate"
    assert isinstance(listed["ttlMs"], int) and listed["ttlMs"] >= 0
    assert listed["cacheScope"] == "private"
    assert listed["tools"]

    body = modern_request("tools/call", {"name": "lookup_customer", "arguments": {"email": "ada@example.com"}}, id="c-12")
    resp = post(http, url, body, modern_headers(token, "tools/call", "lookup_customer"))
    called = rpc_result(resp, id="c-12")
    assert called["resultType"] == "complete"
    assert called["_meta"][SERVER_INFO_KEY]["name"] == "tollgate"
    assert called["structuredContent"] == ADA and called["isError"] is False


def test_modern_header_names_case_insensitive(stack, token, http) -> None:
    headers = base_headers(token, MODERN)
    headers["MCP-METHOD"] = "tools/list"
    rpc_result(post(http, stack.gateway_url, modern_request("tools/list", id=1), headers), id=1)

    body = modern_request("tools/call", {"name": "lookup_customer", "arguments": {"email": "ada@example.com"}}, id=2)
    headers = base_headers(token, MODERN)
    headers.update({"mcp-method": "tools/call", "MCP-NAME": "lookup_customer"})
    assert rpc_result(post(http, stack.gateway_url, body, headers), id=2)["isError"] is False


def test_modern_base64_encoded_mcp_name_is_decoded(stack, token, http) -> None:
    # Spec 2026-07-28 (standard headers): servers MUST decode `=?base64?...?=` before comparing.
    body = modern_request("tools/call", {"name": "lookup_customer", "arguments": {"email": "ada@example.com"}}, id=3)
    headers = modern_headers(token, "tools/call", "=?base64?bG9va3VwX2N1c3RvbWVy?=")
    assert rpc_result(post(http, stack.gateway_url, body, headers), id=3)["isError"] is False


# --- the seeded demo agent and the repository's client script ---------------------------------


def test_demo_agent_token_works_with_the_client_script(stack) -> None:
    script = REPO / "tests" / "stack" / "mcp_client.py"
    base = [sys.executable, str(script), "--url", stack.gateway_url, "--token", stack.demo_token]
    listed = subprocess.run([*base, "list"], capture_output=True, text=True, timeout=60, env=stack.env)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split("\t")[0] for line in listed.stdout.splitlines()) == sorted(CATALOG_SCOPES)
    called = subprocess.run([*base, "call", "lookup_customer", json.dumps({"email": "ada@example.com"})],
                            capture_output=True, text=True, timeout=60, env=stack.env)
    assert called.returncode == 0, called.stderr
    out = json.loads(called.stdout)
    assert out.get("structuredContent", out.get("structured_content")) == ADA
