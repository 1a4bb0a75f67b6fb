"""Constants and raw JSON-RPC/HTTP helpers shared by the end-to-end tests."""

from __future__ import annotations

import hashlib

import json
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

# Stack configuration the tests rely on.
KEY_CACHE_TTL_SECS = 1
MAX_BODY_BYTES = 65536
TABLE = "tollgate-e2e"
APP_TABLE = "tollgate-e2e-app"
ALLOWED_ORIGIN = "https://console.example.com"

ACCEPT = "application/json, text/event-stream"
MODERN = "2026-07-28"
LEGACY_VERSIONS = ("2025-06-18", "2025-11-25")
SUPPORTED_VERSIONS = ["2026-07-28", "2025-11-25", "2025-06-18"]
TOOL_SCOPES = {
    "lookup_customer": "customers:read",
    "open_ticket": "tickets:write",
    "track_shipment": "shipments:read",
}
ALL_SCOPES = sorted(TOOL_SCOPES.values())
# Every tool the gateway serves: the above, plus account_profile, which acts on a user's
# third-party account and needs a configured provider (test_connections.py), and
# export_tickets, the long-running tool called as a task (test_tasks.py).
CATALOG_SCOPES = {**TOOL_SCOPES, "account_profile": "account:read", "export_tickets": "tickets:read"}



def unique(prefix: str) -> str:
    """A unique, valid agent id (lowercase letters, digits, '-')."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- raw JSON-RPC helpers ------------------------------------------------------------------


def base_headers(token: str | None = None, version: str | None = None, **extra: str) -> dict[str, str]:
    h = {"Content-Type": "application/json", "Accept": ACCEPT}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if version:
        h["MCP-Protocol-Version"] = version
    h.update(extra)
    return h


def modern_meta(version: str = MODERN, capabilities: dict | None = None) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientCapabilities": capabilities if capabilities is not None else {},
        "io.modelcontextprotocol/clientInfo": {"name": "tollgate-e2e", "version": "1.0.0"},
    }


def modern_request(
    method: str,
    params: dict[str, Any] | None = None,
    *,
    id: int | str = 1,
    meta: dict[str, Any] | None | bool = True,
) -> dict[str, Any]:
    p = dict(params or {})
    if meta is True:
        p["_meta"] = modern_meta()
    elif isinstance(meta, dict):
        p["_meta"] = meta
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": p}


def modern_headers(token: str | None, method: str, name: str | None = None, version: str = MODERN, **extra: str) -> dict[str, str]:
    h = base_headers(token, version, **{"Mcp-Method": method})
    if name is not None:
        h["Mcp-Name"] = name
    h.update(extra)
    return h


def legacy_request(method: str, params: dict[str, Any] | None = None, *, id: int | str = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def call_params(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"name": tool, "arguments": arguments}


def rpc_error(resp: httpx2.Response, status: int, code: int, id: Any = ..., ) -> dict[str, Any]:
    """Asserts a JSON-RPC error response and returns its `error` object."""
    assert resp.status_code == status, f"expected HTTP {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert body.get("jsonrpc") == "2.0", body
    assert "result" not in body, body
    err = body["error"]
    assert err["code"] == code, f"expected code {code}: {body}"
    assert isinstance(err.get("message"), str) and err["message"], body
    if id is not ...:
        assert "id" in body, f"error body lacks the request id {id!r}: {body}"
        assert body["id"] == id and type(body["id"]) is type(id), f"id {body.get('id')!r} != {id!r}"
    assert "mcp-session-id" not in resp.headers
    return err


def rpc_result(resp: httpx2.Response, id: Any = 1) -> dict[str, Any]:
    assert resp.status_code == 200, f"HTTP {resp.status_code}: {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    assert "mcp-session-id" not in resp.headers, resp.headers
    body = resp.json()
    assert "error" not in body, body
    assert body["id"] == id and type(body["id"]) is type(id), body
    return body["result"]


def post(client: httpx2.Client, url: str, body: Any, headers: dict[str, str]) -> httpx2.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(url, content=content, headers=headers)


def tool_call(
    client: httpx2.Client,
    url: str,
    token: str | None,
    tool: str,
    arguments: dict[str, Any],
    *,
    id: int | str = 1,
    modern: bool = False,
    **extra_headers: str,
) -> httpx2.Response:
    """One raw tools/call, legacy 2025-11-25 or modern 2026-07-28 framing."""
    if modern:
        body = modern_request("tools/call", call_params(tool, arguments), id=id)
        headers = modern_headers(token, "tools/call", tool, **extra_headers)
    else:
        body = legacy_request("tools/call", call_params(tool, arguments), id=id)
        headers = base_headers(token, "2025-11-25", **extra_headers)
    return post(client, url, body, headers)


def tools_list(client: httpx2.Client, url: str, token: str | None, *, id: int | str = 1) -> httpx2.Response:
    return post(client, url, legacy_request("tools/list", id=id), base_headers(token, "2025-11-25"))


@asynccontextmanager
async def mcp_session(
    url: str, token: str | None, exchanges: list[tuple[httpx2.Request, httpx2.Response]] | None = None
) -> AsyncIterator[ClientSession]:
    """An official-SDK client session (not yet initialized / discovered) for `url`.

    When `exchanges` is given, every HTTP request the SDK makes and its response are appended.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    hooks: dict[str, list[Any]] = {}
    if exchanges is not None:

        async def record(resp: httpx2.Response) -> None:
            exchanges.append((resp.request, resp))

        hooks["response"] = [record]
    async with httpx2.AsyncClient(headers=headers, timeout=30, event_hooks=hooks, trust_env=False) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                yield session


# --- budgets (429 contract) ------------------------------------------------------------------


def assert_rate_limited(resp: httpx2.Response, *, id: Any = ..., layer: str, policy: str,
                        limit: int | None = None, window_s: int | None = None) -> dict[str, Any]:
    """Asserts a 429 budget refusal of `layer`/`policy` (body and headers); returns `error.data`."""
    import math

    err = rpc_error(resp, 429, -31029, id=id)
    data = err["data"]
    assert data["reason"] == "rate_limited" and data["retry"] == "after_retry_after", data
    assert data["layer"] == layer and data["policy"] == policy, data
    if limit is not None:
        assert data["limit"] == limit, data
    if window_s is not None:
        assert data["window_s"] == window_s, data
    assert isinstance(data["retry_after_ms"], int) and data["retry_after_ms"] > 0, data
    retry_after = resp.headers.get("retry-after", "")
    assert retry_after.isdigit(), f"Retry-After must be whole seconds: {retry_after!r}"
    assert int(retry_after) == max(1, math.ceil(data["retry_after_ms"] / 1000)), (retry_after, data)
    assert f'"{policy}";q={data["limit"]};w={data["window_s"]}' in resp.headers.get("ratelimit-policy", ""), resp.headers
    assert resp.headers.get("ratelimit", "").startswith(f'"{policy}";r=0;t='), resp.headers
    return data


KEY_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def with_checksum(body: str) -> str:
    """A bearer key body (`tg_<id>_<secret>`) with its check characters: 30 bits of its SHA-256,
    5 per character of the key id's alphabet (`shared/src/auth/keys.rs`)."""
    bits = int.from_bytes(hashlib.sha256(body.encode()).digest()[:4], "big") >> 2
    return body + "".join(KEY_ID_ALPHABET[(bits >> (5 * i)) & 31] for i in reversed(range(6)))
