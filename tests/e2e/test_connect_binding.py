"""The connect link binds the right person, in the form each protocol version defines.

A connect link opens tollgate's own page first. An agent's link is completed by presenting a
key of that agent; an OAuth user's link by signing in at tollgate's authorization server
(tests/stack/oauth_server.mjs; `/_test/login` plays the browser's session there) as the
token's subject. The browser that proved the user is bound by a cookie, so neither the link
nor the provider URL it leads to works for anyone else: a mismatch stores nothing. Identities
live in separate namespaces (`agent:<id>`, `oauth:<issuer>:<sub>`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx2
import pytest
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError
from mcp_types import ElicitResult

from helpers import MODERN, modern_headers, modern_meta, modern_request, post, rpc_error, rpc_result, unique
from test_connections import PROVIDER, call, item, open_link, overrides, provider
from test_oauth import audience, authz, ensure_introspection_secret, oauth_overrides  # noqa: F401

LOGIN_CLIENT = "tollgate-connect"
URL_CAPS = {"elicitation": {"url": {}}}


@pytest.fixture(scope="module")
def inst(stack, module_processes, authz):  # noqa: F811
    """One instance accepting bearer keys and OAuth tokens, with the connect sign-in."""
    ensure_introspection_secret(stack)
    stack.cli("budgets", "set-tool", "account_profile", "--per-minute", "100000", "--burst", "100000")
    env = {**overrides(stack, authz), **oauth_overrides(stack, authz),
           "TOLLGATE_CONNECT_LOGIN_CLIENT_ID": LOGIN_CLIENT,
           "TOLLGATE_PROVIDER_DEMO_ACCOUNT_ISSUER": authz.url}
    return module_processes.extra_instance(stack, **env)


def browser() -> httpx2.Client:
    return httpx2.Client(trust_env=False, timeout=30)


def agent(stack) -> tuple[str, str]:
    agent_id, key = stack.agent_with_key(["account:read"], prefix="bind")
    return agent_id, key["token"]


def oauth_token(authz, inst, sub: str | None, client: str | None = None) -> str:  # noqa: F811
    claims: dict[str, Any] = {"aud": audience(inst), "client_id": client or unique("client"), "scope": "account:read"}
    claims["sub"] = sub
    return authz.mint(claims)


def link_of(result: dict) -> str:
    assert result["isError"] is True and result["structuredContent"]["error"] == "connection_required", result
    return result["structuredContent"]["connect_url"]


def oauth_user(authz, sub: str) -> str:  # noqa: F811
    return f"oauth:{authz.url}:{sub}"


def sign_in_and_open(authz, inst, link: str, signed_in_as: str) -> tuple[httpx2.Client, httpx2.Response]:  # noqa: F811
    """A browser signed in at the authorization server as `signed_in_as` opens an OAuth
    user's link; returns the browser and the answer of the sign-in return (/connect/login)."""
    b = browser()
    assert b.get(f"{authz.url}/_test/login", params={"sub": signed_in_as}).status_code == 200
    start = b.get(link, follow_redirects=False)
    assert start.status_code == 303, start.text
    to_as = start.headers["location"]
    q = parse_qs(urlparse(to_as).query)
    assert to_as.startswith(authz.url) and q["client_id"] == [LOGIN_CLIENT] and q["code_challenge_method"] == ["S256"], q
    at_as = b.get(to_as, follow_redirects=False)
    assert at_as.status_code == 302, at_as.text
    back = at_as.headers["location"]
    assert back.startswith(f"{inst.base}/connect/login?"), back
    return b, b.get(back, follow_redirects=False)


def finish_at_provider(b: httpx2.Client, inst, to_provider: httpx2.Response) -> httpx2.Response:
    assert to_provider.status_code == 303, to_provider.text
    at_provider = b.get(to_provider.headers["location"], follow_redirects=False)
    assert at_provider.status_code == 302, at_provider.text
    return b.get(at_provider.headers["location"])


# --- section: who opens the link -----------------------------------------------------------


def test_agent_link_opened_with_another_agents_key_stores_nothing(stack, inst, authz, http) -> None:  # noqa: F811
    provider(authz, down=False, slow_ms=0, access_ttl=3600, iss=None)
    owner, owner_key = agent(stack)
    other, other_key = agent(stack)
    link = link_of(call(http, inst, owner_key, route="tool"))
    b = browser()
    assert b.get(link).status_code == 200
    handle = parse_qs(urlparse(link).query)["id"][0]
    refused = b.post(f"{inst.base}/connect/start", data={"id": handle, "key": other_key},
                     headers={"Origin": inst.base}, follow_redirects=False)
    assert refused.status_code == 403 and "another user" in refused.text, refused.text
    assert "tg_connect" not in refused.headers.get("set-cookie", "")
    assert item(stack, f"agent:{owner}") == {} and item(stack, f"agent:{other}") == {}
    # The link is dead: not even its owner can use it now.
    again = b.post(f"{inst.base}/connect/start", data={"id": handle, "key": owner_key},
                   headers={"Origin": inst.base}, follow_redirects=False)
    assert again.status_code == 400 and "already used" in again.text, again.text
    # A cross-site form post is refused whatever the key.
    fresh = link_of(call(http, inst, owner_key, route="tool"))
    fid = parse_qs(urlparse(fresh).query)["id"][0]
    cross = browser().post(f"{inst.base}/connect/start", data={"id": fid, "key": owner_key},
                           headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert cross.status_code == 403
    # The right agent connects.
    landed = open_link(fresh, inst, owner_key)
    assert landed.status_code == 200 and "connected" in landed.text, landed.text
    assert call(http, inst, owner_key, route="tool")["isError"] is False


def test_provider_url_forwarded_to_another_browser_stores_nothing(stack, inst, authz, http) -> None:  # noqa: F811
    provider(authz, down=False, slow_ms=0, access_ttl=3600, iss=None)
    owner, key = agent(stack)
    link = link_of(call(http, inst, key, route="tool"))
    handle = parse_qs(urlparse(link).query)["id"][0]
    mine = browser()
    to_provider = mine.post(f"{inst.base}/connect/start", data={"id": handle, "key": key},
                            headers={"Origin": inst.base}, follow_redirects=False)
    assert to_provider.status_code == 303
    # The verified provider URL, sent on to someone else: their browser has no binding.
    victim = browser()
    at_provider = victim.get(to_provider.headers["location"], follow_redirects=False)
    landed = victim.get(at_provider.headers["location"])
    assert landed.status_code == 400 and "did not start in this browser" in landed.text, landed.text
    assert item(stack, f"agent:{owner}") == {}


def test_oauth_link_opened_by_another_user_stores_nothing_and_the_right_user_connects(stack, inst, authz, http) -> None:  # noqa: F811
    provider(authz, down=False, slow_ms=0, access_ttl=3600, iss=None)
    alice, mallory = unique("alice"), unique("mallory")
    token = oauth_token(authz, inst, alice)
    link = link_of(call(http, inst, token, route="tool"))
    assert alice not in link, "the link names no user"
    _, answer = sign_in_and_open(authz, inst, link, signed_in_as=mallory)
    assert answer.status_code == 403 and "another user" in answer.text, answer.text
    assert item(stack, oauth_user(authz, alice)) == {} and item(stack, oauth_user(authz, mallory)) == {}
    # Alice, signed in as herself, connects with a new link.
    link = link_of(call(http, inst, token, route="tool"))
    b, answer = sign_in_and_open(authz, inst, link, signed_in_as=alice)
    landed = finish_at_provider(b, inst, answer)
    assert landed.status_code == 200 and "connected" in landed.text, landed.text
    assert item(stack, oauth_user(authz, alice))["status"]["S"] == "active"
    assert call(http, inst, token, route="tool")["isError"] is False


def test_callback_checks_the_rfc9207_issuer(stack, inst, authz, http) -> None:  # noqa: F811
    owner, key = agent(stack)
    provider(authz, down=False, slow_ms=0, access_ttl=3600, iss="https://mix-up.example")
    try:
        landed = open_link(link_of(call(http, inst, key, route="tool")), inst, key)
    finally:
        provider(authz, iss=None)
    assert landed.status_code == 400 and "unexpected issuer" in landed.text, landed.text
    assert item(stack, f"agent:{owner}") == {}
    provider(authz, iss=authz.url)
    try:
        landed = open_link(link_of(call(http, inst, key, route="tool")), inst, key)
    finally:
        provider(authz, iss=None)
    assert landed.status_code == 200, landed.text


# --- section: namespaces -------------------------------------------------------------------


def test_a_token_whose_sub_is_an_agent_id_cannot_read_that_agents_connection(stack, inst, authz, http) -> None:  # noqa: F811
    provider(authz, down=False, slow_ms=0, access_ttl=3600, iss=None)
    victim, key = agent(stack)
    assert open_link(link_of(call(http, inst, key, route="tool")), inst, key).status_code == 200
    assert call(http, inst, key, route="tool")["isError"] is False
    # Same spelling as the agent, as sub and as client_id: another user, another agent.
    token = oauth_token(authz, inst, victim, client=victim)
    result = call(http, inst, token, route="tool")
    assert result["isError"] is True and result["structuredContent"]["error"] == "connection_required", result
    assert item(stack, oauth_user(authz, victim)) == {}
    # A token without sub acts for its own (derived) agent, not the bearer agent either.
    result = call(http, inst, oauth_token(authz, inst, None, client=victim), route="tool")
    assert result["structuredContent"]["error"] == "connection_required", result


def test_an_over_long_sub_is_refused_with_401(inst, authz, http) -> None:  # noqa: F811
    from helpers import tool_call
    token = oauth_token(authz, inst, "u" * 257)
    err = rpc_error(tool_call(http, inst.tool_url("account_profile"), token, "account_profile", {}), 401, -31001)
    assert err["data"]["reason"] == "subject_not_accepted", err


def test_oauth_client_named_like_an_agent_needs_a_binding(stack, inst, authz, http) -> None:  # noqa: F811
    provider(authz, down=False, slow_ms=0, access_ttl=3600, iss=None)
    # Without a binding, a client_id equal to an agent id is not that agent.
    bot, key = agent(stack)
    assert open_link(link_of(call(http, inst, key, route="tool")), inst, key).status_code == 200
    no_sub = oauth_token(authz, inst, None, client=bot)
    assert call(http, inst, no_sub, route="tool")["structuredContent"]["error"] == "connection_required"
    # With the operator's explicit binding (made before the client's first token), it is.
    bound_agent, bound_key = agent(stack)
    assert open_link(link_of(call(http, inst, bound_key, route="tool")), inst, bound_key).status_code == 200
    bound = stack.cli("agents", "bind-oauth", bound_agent, "--client", bound_agent, "--issuer", authz.url).json()
    assert bound["agent_id"] == bound_agent and bound["binding"].startswith("oauth:")
    result = call(http, inst, oauth_token(authz, inst, None, client=bound_agent), route="tool")
    assert result["isError"] is False, result
    # Derived OAuth agent ids are reserved.
    assert stack.cli("agents", "create", "oauth-abc", check=False).returncode != 0


# --- section: the form of the connect step per protocol version ----------------------------


def raw_call(http, inst, token: str, version: str, capabilities: dict | None, id: int = 1, **params: Any) -> httpx2.Response:
    args = {"name": "account_profile", "arguments": {}, **params}
    url = inst.tool_url("account_profile")
    if version == MODERN:
        body = modern_request("tools/call", args, id=id, meta=modern_meta(capabilities=capabilities or {}))
        return post(http, url, body, modern_headers(token, "tools/call", "account_profile"))
    if capabilities is not None:
        args["_meta"] = {"io.modelcontextprotocol/clientCapabilities": capabilities}
    body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": args}
    return post(http, url, body, {"Authorization": f"Bearer {token}", "MCP-Protocol-Version": version,
                                  "Accept": "application/json, text/event-stream", "Content-Type": "application/json"})


def test_each_version_gets_its_form_of_the_connect_step(stack, inst, http) -> None:
    _, key = agent(stack)
    # 2026-07-28, URL elicitation declared on the request: an InputRequiredResult.
    r = rpc_result(raw_call(http, inst, key, MODERN, URL_CAPS))
    assert r["resultType"] == "input_required", r
    (name, req), = r["inputRequests"].items()
    assert req["method"] == "elicitation/create" and req["params"]["mode"] == "url", req
    assert req["params"]["url"].startswith(f"{inst.base}/connect/start?id=") and req["params"]["message"]
    assert "isError" not in r
    # The user declined: the retry gets the isError form, not another prompt.
    r = rpc_result(raw_call(http, inst, key, MODERN, URL_CAPS, id=2, inputResponses={name: {"action": "decline"}}), id=2)
    assert r["isError"] is True and r["resultType"] == "complete" and "connect_url" in r["structuredContent"], r
    # 2026-07-28 without URL mode (form only): the isError form.
    r = rpc_result(raw_call(http, inst, key, MODERN, {"elicitation": {}}))
    assert r["isError"] is True and r["structuredContent"]["connect_url"].startswith(f"{inst.base}/connect/start"), r
    # 2025-11-25, declared on the request: URLElicitationRequiredError.
    resp = raw_call(http, inst, key, "2025-11-25", URL_CAPS)
    body = resp.json()
    assert resp.status_code == 200 and body["error"]["code"] == -32042, body
    (e,) = body["error"]["data"]["elicitations"]
    assert e["mode"] == "url" and e["elicitationId"] and e["message"] and e["url"].startswith(f"{inst.base}/connect/start?id="), e
    # 2025-11-25 with nothing declared on the request, and 2025-06-18 (no URL mode): isError.
    for version, caps in (("2025-11-25", None), ("2025-06-18", URL_CAPS)):
        r = rpc_result(raw_call(http, inst, key, version, caps))
        assert r["isError"] is True and "resultType" not in r, (version, r)


# --- section: the official SDK client -------------------------------------------------------


@pytest.mark.anyio
async def test_sdk_client_at_2026_07_28_completes_the_url_elicitation_and_retries(stack, inst, authz) -> None:  # noqa: F811
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client
    provider(authz, down=False, slow_ms=0, access_ttl=3600, iss=None)
    owner, key = agent(stack)
    shown: list[Any] = []

    async def on_elicit(context, params) -> ElicitResult:
        # The user consents to open the URL; the browser completes the connection.
        shown.append(params)
        assert params.mode == "url"
        landed = open_link(params.url, inst, key)
        assert landed.status_code == 200, landed.text
        return ElicitResult(action="accept")

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, trust_env=False, timeout=30) as h:
        async with Client(streamable_http_client(inst.tool_url("account_profile"), http_client=h),
                          mode=MODERN, elicitation_callback=on_elicit) as client:
            result = await client.call_tool("account_profile", {})
    assert len(shown) == 1 and result.is_error is False, result
    assert result.structured_content["username"] == "johndoe"
    assert item(stack, f"agent:{owner}")["status"]["S"] == "active"


@pytest.mark.anyio
async def test_sdk_client_at_2025_11_25_gets_url_elicitation_required_and_retries(stack, inst, authz) -> None:  # noqa: F811
    from helpers import mcp_session
    provider(authz, down=False, slow_ms=0, access_ttl=3600, iss=None)
    owner, key = agent(stack)
    async with mcp_session(inst.tool_url("account_profile"), key) as session:
        await session.initialize()
        with pytest.raises(MCPError) as raised:
            await session.call_tool("account_profile", {}, meta={"io.modelcontextprotocol/clientCapabilities": URL_CAPS})
        err = UrlElicitationRequiredError.from_error(raised.value.error)
        (e,) = err.elicitations
        assert e.mode == "url" and e.elicitation_id
        assert open_link(e.url, inst, key).status_code == 200
        result = await session.call_tool("account_profile", {})
        assert result.is_error is False, result
