"""The error contract, case by case, over raw HTTP: status, headers, JSON-RPC code and data.

Every case runs against the gateway (`POST /mcp`) and, where the check belongs to the shared
pipeline, a tool's own endpoint (`POST /tools/lookup_customer/mcp`) too.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Callable

import httpx2
import pytest

from helpers import (
    CATALOG_SCOPES,
    ALLOWED_ORIGIN,
    KEY_CACHE_TTL_SECS,
    MAX_BODY_BYTES,
    MODERN,
    SUPPORTED_VERSIONS,
    base_headers,
    call_params,
    legacy_request,
    modern_headers,
    modern_meta,
    modern_request,
    with_checksum,
    post,
    rpc_error,
    rpc_result,
    tool_call,
    tools_list,
)

LEGACY = "2025-11-25"
# How long a change made with the admin CLI may take to reach a warm server: the key cache TTL
# plus scheduling margin.
PROPAGATION_BOUND = KEY_CACHE_TTL_SECS + 1.5
ADA = {"email": "ada@example.com"}


@pytest.fixture(params=["gateway", "tool"])
def url(request, stack) -> str:
    return stack.gateway_url if request.param == "gateway" else stack.tool_url("lookup_customer")


def lookup_body(id: Any = 1) -> dict[str, Any]:
    return legacy_request("tools/call", call_params("lookup_customer", ADA), id=id)


def random_token() -> str:
    """A token with the exact tollgate shape that no key was ever issued for."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    key_id = "".join(secrets.choice(alphabet) for _ in range(12))
    return f"tg_{key_id}_{secrets.token_urlsafe(32)[:43]}"


def poll(fetch: Callable[[], httpx2.Response], done: Callable[[httpx2.Response], bool],
         allowed: Callable[[httpx2.Response], bool], timeout: float) -> tuple[httpx2.Response, float]:
    """Calls `fetch` every 0.1 s until `done(resp)`; every earlier response must be `allowed`.

    Returns the final response and the monotonic time it arrived.
    """
    deadline = time.monotonic() + timeout
    while True:
        resp = fetch()
        now = time.monotonic()
        if done(resp):
            return resp, now
        assert allowed(resp), f"unexpected response while waiting: {resp.status_code} {resp.text}"
        assert now < deadline, f"condition not reached within {timeout}s; last: {resp.status_code} {resp.text}"
        time.sleep(0.1)


def ok_call(resp: httpx2.Response) -> bool:
    return resp.status_code == 200 and "result" in resp.json() and resp.json()["result"].get("isError") is False


# --- HTTP method, Origin, Host, media types, size -------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_non_post_is_405_with_allow_post(stack, token, http, url, method) -> None:
    resp = http.request(method, url, headers=base_headers(token, LEGACY))
    assert resp.status_code == 405
    assert resp.headers.get("allow") == "POST"
    assert "mcp-session-id" not in resp.headers


def test_foreign_origin_is_403(stack, token, http, url) -> None:
    headers = base_headers(token, LEGACY, Origin="http://evil.example.com")
    err = rpc_error(post(http, url, lookup_body(), headers), 403, -31002)
    assert err["data"]["reason"] == "origin_not_allowed"


@pytest.mark.parametrize("origin", ["configured", "own"])
def test_allowed_origins_pass(stack, token, http, url, origin) -> None:
    value = ALLOWED_ORIGIN if origin == "configured" else stack.base
    headers = base_headers(token, LEGACY, Origin=value)
    assert rpc_result(post(http, url, lookup_body(), headers))["isError"] is False


def test_non_loopback_host_is_403(stack, token, http, url) -> None:
    headers = base_headers(token, LEGACY, Host="evil.example.com")
    resp = post(http, url, lookup_body(), headers)
    assert resp.status_code == 403, resp.text
    assert isinstance(resp.json()["error"]["code"], int)


def test_loopback_host_names_pass(stack, token, http, url) -> None:
    headers = base_headers(token, LEGACY, Host=f"localhost:{stack.port}")
    assert rpc_result(post(http, url, lookup_body(), headers))["isError"] is False


def test_wrong_content_type_is_415(stack, token, http, url) -> None:
    headers = base_headers(token, LEGACY, **{"Content-Type": "text/plain"})
    resp = post(http, url, lookup_body(), headers)
    assert resp.status_code == 415, resp.text
    assert isinstance(resp.json()["error"]["code"], int)


def test_content_type_with_charset_passes(stack, token, http, url) -> None:
    headers = base_headers(token, LEGACY, **{"Content-Type": "application/json; charset=utf-8"})
    assert rpc_result(post(http, url, lookup_body(), headers))["isError"] is False


def test_accept_without_json_is_406(stack, token, http, url) -> None:
    headers = base_headers(token, LEGACY, Accept="text/html")
    resp = post(http, url, lookup_body(), headers)
    assert resp.status_code == 406, resp.text
    assert isinstance(resp.json()["error"]["code"], int)


def padded(body: dict[str, Any], size: int) -> bytes:
    raw = json.dumps(body).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))  # trailing whitespace keeps it valid JSON


def test_body_at_the_limit_is_accepted(stack, token, http, url) -> None:
    resp = post(http, url, padded(lookup_body(), MAX_BODY_BYTES), base_headers(token, LEGACY))
    assert rpc_result(resp)["isError"] is False


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 1024 * 1024])
def test_body_over_the_limit_is_413(stack, token, http, url, size) -> None:
    resp = post(http, url, padded(lookup_body(), size), base_headers(token, LEGACY))
    assert resp.status_code == 413, resp.text
    assert isinstance(resp.json()["error"]["code"], int)


# --- JSON-RPC framing -------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b'{"jsonrpc":"2.0","id":1,"method":"tools/list"', b"\xff\xfe"])
def test_bad_json_is_400_parse_error(stack, token, http, url, raw) -> None:
    resp = post(http, url, raw, base_headers(token, LEGACY))
    rpc_error(resp, 400, -32700)
    assert resp.json().get("id") is None


def test_batch_is_400_invalid_request(stack, token, http, url) -> None:
    batch = [legacy_request("tools/list", id=1), legacy_request("tools/list", id=2)]
    resp = post(http, url, batch, base_headers(token, LEGACY))
    rpc_error(resp, 400, -32600)
    assert isinstance(resp.json(), dict), "a single error object, not an array"


def test_notification_is_202_without_body(stack, token, http, url) -> None:
    msg = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    resp = post(http, url, msg, base_headers(token, LEGACY))
    assert resp.status_code == 202 and resp.content == b""


# --- authentication ---------------------------------------------------------------------------


def metadata_url_of(url: str) -> str:
    """RFC 9728 path-specific metadata URL of the resource at `url` (a route is its own resource)."""
    origin, path = url.split("/", 3)[:3], url.split("/", 3)[3]
    return f"{'/'.join(origin)}/.well-known/oauth-protected-resource/{path}"


@pytest.mark.parametrize("method", ["tools/list", "tools/call"])
def test_missing_credentials_is_401(stack, http, url, method) -> None:
    body = lookup_body(id="no-auth") if method == "tools/call" else legacy_request("tools/list", id="no-auth")
    resp = post(http, url, body, base_headers(None, LEGACY))
    err = rpc_error(resp, 401, -31001, id="no-auth")
    challenge = resp.headers.get("www-authenticate", "")
    assert challenge.startswith('Bearer realm="tollgate"'), challenge
    assert "error=" not in challenge, "no error code when no credentials were sent (RFC 6750 3.1)"
    assert f'resource_metadata="{metadata_url_of(url)}"' in challenge, challenge
    # A tool route names the scope it needs; /mcp leaves scopes to the metadata.
    if "/tools/" in url:
        tool = url.split("/tools/", 1)[1].split("/", 1)[0]
        assert challenge.endswith(f'scope="{CATALOG_SCOPES[tool]}"'), challenge
    else:
        assert "scope=" not in challenge, challenge
    assert err["data"]["reason"] == "missing_credentials"


@pytest.mark.parametrize(
    "authorization",
    ["unknown", "wrong-secret", "not-a-token", "tg_short", "empty-bearer", "basic"],
)
def test_bad_credentials_are_401_invalid_token(stack, token, http, url, authorization) -> None:
    if authorization == "unknown":
        value = f"Bearer {random_token()}"
    elif authorization == "wrong-secret":
        # The real key id, another secret, a valid checksum: refused by the digest comparison.
        body = token[:-6] if len(token) == 65 else token
        body = f"{body[:-1]}{'A' if body[-1] != 'A' else 'B'}"
        value = f"Bearer {with_checksum(body) if len(token) == 65 else body}"
    elif authorization == "not-a-token":
        value = "Bearer not-a-token"
    elif authorization == "tg_short":
        value = "Bearer tg_short"
    elif authorization == "empty-bearer":
        value = "Bearer"
    else:
        value = "Basic dXNlcjpwYXNz"
    headers = base_headers(None, LEGACY, Authorization=value)
    resp = post(http, url, lookup_body(id=9), headers)
    rpc_error(resp, 401, -31001, id=9)
    challenge = resp.headers.get("www-authenticate", "")
    assert challenge.startswith('Bearer realm="tollgate"'), challenge
    if authorization not in ("empty-bearer", "basic"):  # those may count as "no credentials"
        assert 'error="invalid_token"' in challenge, challenge


def test_revoked_key_is_refused_within_cache_ttl(stack, http) -> None:
    _, key = stack.agent_with_key(["customers:read"])
    token = key["token"]
    routes = [stack.gateway_url, stack.tool_url("lookup_customer")]
    for route in routes:  # warm every cache on the path
        assert ok_call(tool_call(http, route, token, "lookup_customer", ADA))
    started = time.monotonic()
    stack.cli("keys", "revoke", key["key_id"])
    for route in routes:
        resp, at = poll(
            lambda: tool_call(http, route, token, "lookup_customer", ADA, id="rev"),
            done=lambda r: r.status_code != 200,
            allowed=ok_call,
            timeout=10,
        )
        assert at - started <= PROPAGATION_BOUND, f"revocation took {at - started:.2f}s on {route}"
        err = rpc_error(resp, 403, -31003, id="rev")
        assert err["data"]["reason"] == "key_revoked"
        assert err["data"]["retry"] == "never"
        # tools/list is refused the same way
        err = rpc_error(tools_list(http, route, token, id=5), 403, -31003, id=5)
        assert err["data"]["reason"] == "key_revoked"


def test_disabled_agent_is_refused_within_cache_ttl_and_enable_restores(stack, http) -> None:
    agent, key = stack.agent_with_key(["customers:read"])
    token = key["token"]
    assert ok_call(tool_call(http, stack.gateway_url, token, "lookup_customer", ADA))
    started = time.monotonic()
    stack.cli("agents", "disable", agent)
    resp, at = poll(
        lambda: tool_call(http, stack.gateway_url, token, "lookup_customer", ADA, id="dis"),
        done=lambda r: r.status_code != 200,
        allowed=ok_call,
        timeout=10,
    )
    assert at - started <= PROPAGATION_BOUND, f"disabling took {at - started:.2f}s"
    err = rpc_error(resp, 403, -31003, id="dis")
    assert err["data"]["reason"] == "agent_disabled"
    assert err["data"]["retry"] == "never"
    # A key created while the agent is disabled is refused too.
    fresh = stack.create_key(agent)["token"]
    err = rpc_error(tool_call(http, stack.gateway_url, fresh, "lookup_customer", ADA, id=3), 403, -31003, id=3)
    assert err["data"]["reason"] == "agent_disabled"

    started = time.monotonic()
    stack.cli("agents", "enable", agent)
    _, at = poll(
        lambda: tool_call(http, stack.gateway_url, token, "lookup_customer", ADA),
        done=ok_call,
        allowed=lambda r: r.status_code == 403,
        timeout=10,
    )
    assert at - started <= PROPAGATION_BOUND, f"enabling took {at - started:.2f}s"


def test_expired_key_is_401_invalid_token(stack, http) -> None:
    agent = stack.create_agent(scopes=["customers:read"])
    before = time.monotonic()
    token = stack.create_key(agent, expires_in="1s")["token"]
    first = tool_call(http, stack.gateway_url, token, "lookup_customer", ADA)
    if time.monotonic() - before < 0.8:  # still inside its lifetime
        assert ok_call(first), first.text
    resp, at = poll(
        lambda: tool_call(http, stack.gateway_url, token, "lookup_customer", ADA, id="exp"),
        done=lambda r: r.status_code != 200,
        allowed=ok_call,
        timeout=10,
    )
    assert at - before <= 1 + PROPAGATION_BOUND, f"expiry took {at - before:.2f}s"
    rpc_error(resp, 401, -31001, id="exp")
    assert 'error="invalid_token"' in resp.headers.get("www-authenticate", "")
    # And on the tool's own endpoint.
    resp = tool_call(http, stack.tool_url("lookup_customer"), token, "lookup_customer", ADA, id="exp2")
    rpc_error(resp, 401, -31001, id="exp2")
    assert 'error="invalid_token"' in resp.headers.get("www-authenticate", "")


# --- authorization (scopes) -------------------------------------------------------------------


INSUFFICIENT = 'Bearer realm="tollgate", error="insufficient_scope", scope="tickets:write"'
TICKET = {"customer_id": "C-1001", "subject": "Scope test", "description": "x", "priority": "low"}


@pytest.mark.parametrize("route", ["gateway", "tool"])
@pytest.mark.parametrize("modern", [False, True], ids=["legacy", "modern"])
def test_missing_scope_is_403_insufficient_scope(stack, http, route, modern) -> None:
    _, key = stack.agent_with_key(["customers:read"])
    target = stack.gateway_url if route == "gateway" else stack.tool_url("open_ticket")
    resp = tool_call(http, target, key["token"], "open_ticket", TICKET, id="scope-1", modern=modern)
    err = rpc_error(resp, 403, -31004, id="scope-1")
    challenge = resp.headers.get("www-authenticate", "")
    assert challenge.startswith(INSUFFICIENT), challenge
    # The metadata of the resource the agent called: /mcp, or the tool's own route.
    assert f'resource_metadata="{metadata_url_of(target)}"' in challenge, challenge
    assert err["data"]["reason"] == "insufficient_scope"


def test_tools_list_shows_only_permitted_tools(stack, http) -> None:
    _, key = stack.agent_with_key(["customers:read", "shipments:read"])
    listed = rpc_result(tools_list(http, stack.gateway_url, key["token"]))
    assert sorted(t["name"] for t in listed["tools"]) == ["lookup_customer", "track_shipment"]
    listed = rpc_result(tools_list(http, stack.tool_url("open_ticket"), key["token"]))
    assert listed["tools"] == []
    _, none = stack.agent_with_key([])
    assert rpc_result(tools_list(http, stack.gateway_url, none["token"]))["tools"] == []


def test_scope_changes_take_effect_within_cache_ttl(stack, http) -> None:
    agent, key = stack.agent_with_key(["customers:read"])
    token = key["token"]
    denied = tool_call(http, stack.gateway_url, token, "open_ticket", TICKET)
    rpc_error(denied, 403, -31004)

    started = time.monotonic()
    stack.cli("scopes", "add", agent, "tickets:write")
    _, at = poll(
        lambda: tool_call(http, stack.gateway_url, token, "open_ticket", TICKET),
        done=ok_call,
        allowed=lambda r: r.status_code == 403 and r.json()["error"]["code"] == -31004,
        timeout=10,
    )
    assert at - started <= PROPAGATION_BOUND, f"scope grant took {at - started:.2f}s"
    names = sorted(t["name"] for t in rpc_result(tools_list(http, stack.gateway_url, token))["tools"])
    assert names == ["lookup_customer", "open_ticket"]

    started = time.monotonic()
    stack.cli("scopes", "remove", agent, "customers:read")
    resp, at = poll(
        lambda: tool_call(http, stack.gateway_url, token, "lookup_customer", ADA, id="rm"),
        done=lambda r: r.status_code != 200,
        allowed=ok_call,
        timeout=10,
    )
    assert at - started <= PROPAGATION_BOUND, f"scope withdrawal took {at - started:.2f}s"
    rpc_error(resp, 403, -31004, id="rm")
    assert 'scope="customers:read"' in resp.headers.get("www-authenticate", "")

    started = time.monotonic()
    stack.cli("scopes", "set", agent, "shipments:read")
    _, at = poll(
        lambda: tools_list(http, stack.gateway_url, token),
        done=lambda r: [t["name"] for t in rpc_result(r)["tools"]] == ["track_shipment"],
        allowed=lambda r: r.status_code == 200,
        timeout=10,
    )
    assert at - started <= PROPAGATION_BOUND, f"scope replacement took {at - started:.2f}s"


# --- tools/call errors ------------------------------------------------------------------------


@pytest.mark.parametrize("modern", [False, True], ids=["legacy", "modern"])
def test_unknown_tool_is_200_invalid_params(stack, token, http, url, modern) -> None:
    resp = tool_call(http, url, token, "no_such_tool", {}, id="unk", modern=modern)
    rpc_error(resp, 200, -32602, id="unk")


@pytest.mark.parametrize(
    "tool,arguments,path,secret",
    [
        ("lookup_customer", {"email": "zq-not-an-email-7731"}, "/email", "zq-not-an-email-7731"),
        ("track_shipment", {"tracking_number": "lowercase-zq9182"}, "/tracking_number", "lowercase-zq9182"),
        (
            "open_ticket",
            {"customer_id": "C-1001", "subject": "ok subject", "description": "d", "priority": "zq-asap-5521"},
            "/priority",
            "zq-asap-5521",
        ),
    ],
    ids=["email", "tracking_number", "priority"],
)
@pytest.mark.parametrize("route", ["gateway", "tool"])
def test_invalid_arguments_are_an_error_result_naming_the_field(stack, token, http, tool, arguments, path, secret, route) -> None:
    target = stack.gateway_url if route == "gateway" else stack.tool_url(tool)
    resp = tool_call(http, target, token, tool, arguments, id="inv")
    result = rpc_result(resp, id="inv")
    assert result["isError"] is True
    text = " ".join(c["text"] for c in result["content"] if c["type"] == "text")
    assert path in text, text
    assert secret not in resp.text, f"the invalid value was echoed: {resp.text}"


# --- 2026-07-28 framing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "header_version,meta_version",
    [(MODERN, "v999.0.0"), (MODERN, "2025-11-25"), ("2025-11-25", MODERN)],
)
def test_modern_header_meta_version_mismatch_is_400_32020(stack, token, http, url, header_version, meta_version) -> None:
    body = modern_request("tools/list", id="mm", meta=modern_meta(meta_version))
    headers = modern_headers(token, "tools/list", version=header_version)
    rpc_error(post(http, url, body, headers), 400, -32020, id="mm")


def test_modern_missing_mcp_method_is_400_32020(stack, token, http, url) -> None:
    headers = base_headers(token, MODERN)
    rpc_error(post(http, url, modern_request("tools/list", id=21), headers), 400, -32020, id=21)


@pytest.mark.parametrize("value", ["prompts/list", "TOOLS/LIST", "tools/call"])
def test_modern_mcp_method_mismatch_is_400_32020(stack, token, http, url, value) -> None:
    headers = modern_headers(token, value)
    rpc_error(post(http, url, modern_request("tools/list", id=22), headers), 400, -32020, id=22)


def test_modern_missing_mcp_name_is_400_32020(stack, token, http, url) -> None:
    body = modern_request("tools/call", call_params("lookup_customer", ADA), id=23)
    headers = modern_headers(token, "tools/call")
    rpc_error(post(http, url, body, headers), 400, -32020, id=23)


@pytest.mark.parametrize("value", ["track_shipment", "Lookup_Customer", "wrong_tool_name"])
def test_modern_mcp_name_mismatch_is_400_32020(stack, token, http, url, value) -> None:
    body = modern_request("tools/call", call_params("lookup_customer", ADA), id=24)
    headers = modern_headers(token, "tools/call", value)
    rpc_error(post(http, url, body, headers), 400, -32020, id=24)


def test_modern_unsupported_version_is_400_32022(stack, token, http, url) -> None:
    body = modern_request("tools/list", id=301, meta=modern_meta("v999.0.0"))
    headers = modern_headers(token, "tools/list", version="v999.0.0")
    err = rpc_error(post(http, url, body, headers), 400, -32022, id=301)
    assert err["data"]["supported"] == SUPPORTED_VERSIONS
    assert err["data"]["requested"] == "v999.0.0"


@pytest.mark.parametrize("missing", ["all", "protocolVersion", "clientCapabilities"])
def test_modern_missing_meta_is_400_32602(stack, token, http, url, missing) -> None:
    if missing == "all":
        body = modern_request("tools/list", id="meta", meta=None)
    else:
        meta = modern_meta()
        del meta[f"io.modelcontextprotocol/{missing}"]
        body = modern_request("tools/list", id="meta", meta=meta)
    headers = modern_headers(token, "tools/list")
    rpc_error(post(http, url, body, headers), 400, -32602, id="meta")


@pytest.mark.parametrize("method", ["ping", "initialize", "unknown/method", "logging/setLevel", "resources/list"])
def test_modern_unknown_or_removed_method_is_404_32601(stack, token, http, url, method) -> None:
    body = modern_request(method, id="m-404")
    headers = modern_headers(token, method)
    rpc_error(post(http, url, body, headers), 404, -32601, id="m-404")


# --- legacy version header --------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2024-01-01", "1.0", "2025-13-99"])
def test_legacy_unsupported_protocol_version_header_is_400_32022(stack, token, http, url, version) -> None:
    resp = post(http, url, legacy_request("tools/list", id="v"), base_headers(token, version))
    rpc_error(resp, 400, -32022, id="v")


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
def test_legacy_supported_protocol_version_headers_pass(stack, token, http, url, version) -> None:
    resp = post(http, url, legacy_request("tools/list", id="v"), base_headers(token, version))
    assert rpc_result(resp, id="v")["tools"]


# --- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("id", ["req-42", 42, "7"], ids=["string", "int", "numeric-string"])
def test_error_bodies_echo_the_id_unchanged(stack, token, http, url, id) -> None:
    rpc_error(post(http, url, lookup_body(id=id), base_headers(None, LEGACY)), 401, -31001, id=id)
    rpc_error(tool_call(http, url, token, "no_such_tool", {}, id=id), 200, -32602, id=id)
    body = modern_request("tools/list", id=id, meta=modern_meta("v999.0.0"))
    rpc_error(post(http, url, body, modern_headers(token, "tools/list")), 400, -32020, id=id)


@pytest.mark.parametrize("case", ["origin", "host", "accept"])
def test_transport_rejections_echo_the_id(stack, token, http, url, case) -> None:
    """'Error bodies always echo the request id' also for checks that run before the body is
    parsed, when the body is a well-formed request (413 is exempt: the body is not read)."""
    extra = {
        "origin": {"Origin": "http://evil.example.com"},
        "host": {"Host": "evil.example.com"},
        "accept": {"Accept": "text/html"},
    }[case]
    resp = post(http, url, lookup_body(id="t-id"), base_headers(token, LEGACY, **extra))
    assert resp.status_code in (403, 406), resp.text
    assert resp.json().get("id") == "t-id", resp.text


# --- discovery (RFC 9728) ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["/mcp", "/tools/lookup_customer/mcp", ""])
def test_protected_resource_metadata_is_served_and_names_the_resource(stack, http, suffix) -> None:
    base = stack.gateway_url.removesuffix("/mcp")
    resp = http.get(f"{base}/.well-known/oauth-protected-resource{suffix}")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["resource"] == (f"{base}{suffix}" if suffix else stack.gateway_url)
    assert doc["bearer_methods_supported"] == ["header"]
    if suffix.startswith("/tools/"):
        assert doc["scopes_supported"] == ["customers:read"], "a tool route's own scope"
    else:
        assert sorted(doc["scopes_supported"]) == sorted(CATALOG_SCOPES.values())


@pytest.mark.parametrize("suffix", ["/tools/nope/mcp", "/other", "x"])
def test_metadata_for_an_unknown_resource_is_404(stack, http, suffix) -> None:
    base = stack.gateway_url.removesuffix("/mcp")
    assert http.get(f"{base}/.well-known/oauth-protected-resource{suffix}").status_code == 404


def test_metadata_url_from_a_bare_401_resolves(stack, http, url) -> None:
    resp = post(http, url, legacy_request("tools/list", id=1), base_headers(None, LEGACY))
    challenge = resp.headers["www-authenticate"]
    metadata = challenge.split('resource_metadata="', 1)[1].split('"', 1)[0]
    assert metadata == metadata_url_of(url)
    doc = http.get(metadata).json()
    assert doc["resource"] == url, "the metadata names the resource the 401 came from"
