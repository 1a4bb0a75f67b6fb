"""Audit records on the stack's stdout: exactly one `"kind":"audit"` JSON line per tools/call,
whatever the outcome, and no personal data or credentials anywhere in logs or responses."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

import pytest

from helpers import (
    base_headers,
    legacy_request,
    modern_headers,
    modern_request,
    post,
    rpc_result,
    tool_call,
    tools_list,
)

ADA = {"email": "ada@example.com"}


@pytest.fixture(params=["gateway", "tool"])
def route(request) -> str:
    return request.param


def url_for(stack, route: str, tool: str) -> str:
    return stack.gateway_url if route == "gateway" else stack.tool_url(tool)


def only_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(records) == 1, f"expected exactly one audit record, got {len(records)}: {records}"
    rec = records[0]
    assert rec["kind"] == "audit"
    assert rec.get("request_id") and rec.get("timestamp")
    return rec


def audited_call(stack, http, route, token, tool, arguments, *, modern=False):
    url = url_for(stack, route, tool)
    resp, records = stack.audit_for(
        lambda: tool_call(http, url, token, tool, arguments, modern=modern), settle=0.1
    )
    return resp, only_record(records)


def assert_names(rec: dict[str, Any], agent_id: str, tool: str, status: str) -> None:
    line = json.dumps(rec)
    assert rec["status"] == status, line
    assert rec.get("agent_id") == agent_id, f"agent_id should be {agent_id!r}: {line}"
    assert rec.get("tool") == tool, f"tool should be {tool!r}: {line}"


# --- one record per call, every outcome --------------------------------------------------------


@pytest.mark.parametrize("modern", [False, True], ids=["legacy", "modern"])
def test_success_is_audited_once(stack, http, route, modern) -> None:
    agent, key = stack.agent_with_key(["customers:read"], prefix="audit")
    resp, rec = audited_call(stack, http, route, key["token"], "lookup_customer", ADA, modern=modern)
    assert rpc_result(resp)["isError"] is False
    assert_names(rec, agent, "lookup_customer", "success")
    assert rec["protocol_version"] == ("2026-07-28" if modern else "2025-11-25")


def test_business_error_is_audited_once(stack, http, route) -> None:
    agent, key = stack.agent_with_key(["customers:read"], prefix="audit")
    resp, rec = audited_call(stack, http, route, key["token"], "lookup_customer",
                             {"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com"})
    assert rpc_result(resp)["isError"] is True
    assert_names(rec, agent, "lookup_customer", "business_error")


def test_system_error_is_audited_once(stack, http, route) -> None:
    agent, key = stack.agent_with_key(["shipments:read"], prefix="audit")
    resp, rec = audited_call(stack, http, route, key["token"], "track_shipment", {"tracking_number": "ERR99990001"})
    result = rpc_result(resp)
    assert result["isError"] is True
    assert_names(rec, agent, "track_shipment", "system_error")
    # The reference the agent is given leads an operator to this record.
    assert rec["request_id"] in result["content"][0]["text"]


def test_invalid_input_is_audited_once(stack, http, route) -> None:
    agent, key = stack.agent_with_key(["tickets:write"], prefix="audit")
    resp, rec = audited_call(stack, http, route, key["token"], "open_ticket",
                             {"customer_id": "nope", "subject": "x", "description": "", "priority": "whenever"})
    assert rpc_result(resp)["isError"] is True
    assert_names(rec, agent, "open_ticket", "invalid_input")


def test_denied_scope_is_audited_once(stack, http, route) -> None:
    agent, key = stack.agent_with_key(["customers:read"], prefix="audit")
    resp, rec = audited_call(stack, http, route, key["token"], "track_shipment", {"tracking_number": "ABC12345678"})
    assert resp.status_code == 403
    assert_names(rec, agent, "track_shipment", "denied_scope")


def test_denied_auth_without_credentials_is_audited_once(stack, http, route) -> None:
    resp, rec = audited_call(stack, http, route, None, "lookup_customer", ADA)
    assert resp.status_code == 401
    line = json.dumps(rec)
    assert rec["status"] == "denied_auth", line
    # No credentials: there is no agent to name. The tool asked for is known and recorded.
    assert rec.get("agent_id") is None, line
    assert rec.get("tool") == "lookup_customer", f"tool should be 'lookup_customer': {line}"


def test_denied_auth_with_revoked_key_is_audited_once(stack, http, route) -> None:
    agent, key = stack.agent_with_key(["customers:read"], prefix="audit")
    stack.cli("keys", "revoke", key["key_id"])
    resp, rec = audited_call(stack, http, route, key["token"], "lookup_customer", ADA)
    assert resp.status_code == 403  # never cached: refused at once
    # The key names its agent, so the record does too: who keeps using a revoked key matters.
    assert_names(rec, agent, "lookup_customer", "denied_auth")


def test_unknown_tool_is_audited_once(stack, http) -> None:
    agent, key = stack.agent_with_key(["customers:read"], prefix="audit")
    resp, records = stack.audit_for(
        lambda: tool_call(http, stack.gateway_url, key["token"], "no_such_tool", {}), settle=0.1)
    assert resp.json()["error"]["code"] == -32602
    rec = only_record(records)
    assert rec["status"] == "invalid_input" and rec.get("agent_id") == agent, rec


def test_other_requests_write_no_audit_record(stack, http, route) -> None:
    _, key = stack.agent_with_key(["customers:read"], prefix="audit")
    url = url_for(stack, route, "lookup_customer")
    token = key["token"]

    def traffic() -> None:
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}
        rpc_result(post(http, url, legacy_request("initialize", params), base_headers(token)))
        resp = post(http, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, base_headers(token, "2025-11-25"))
        assert resp.status_code == 202
        rpc_result(tools_list(http, url, token))
        rpc_result(post(http, url, modern_request("server/discover"), modern_headers(token, "server/discover")))
        rpc_result(post(http, url, modern_request("tools/list"), modern_headers(token, "tools/list")))
        assert tools_list(http, url, None).status_code == 401

    _, records = stack.audit_for(traffic, expect=0, settle=0.3)
    assert records == []


def test_a_burst_of_calls_gives_one_record_each(stack, http) -> None:
    agent, key = stack.agent_with_key(["customers:read", "shipments:read"], prefix="audit")
    calls = [
        (stack.gateway_url, "lookup_customer", ADA),
        (stack.tool_url("lookup_customer"), "lookup_customer", ADA),
        (stack.gateway_url, "track_shipment", {"tracking_number": "DLV00000001"}),
        (stack.tool_url("track_shipment"), "track_shipment", {"tracking_number": "ABCD00000000"}),
        (stack.gateway_url, "open_ticket", {}),
    ] * 4

    def burst() -> None:
        for url, tool, args in calls:
            tool_call(http, url, key["token"], tool, args)

    _, records = stack.audit_for(burst, expect=len(calls), settle=0.3)
    assert len(records) == len(calls), [r["status"] for r in records]
    assert all(r.get("agent_id") == agent for r in records)
    assert [r["tool"] for r in records] == [tool for _, tool, _ in calls]
    assert [r["status"] for r in records] == ["success", "success", "success", "business_error", "denied_scope"] * 4


# --- personal data and credentials -------------------------------------------------------------


def test_no_pii_or_credentials_in_logs_spans_or_responses(stack, http) -> None:
    agent, key = stack.agent_with_key(["customers:read", "tickets:write"], prefix="pii")
    token = key["token"]
    marker = uuid.uuid4().hex[:12]
    email = f"Pii.{marker}@Leak-Test.example"
    planted_token = f"tg_{marker}_{secrets.token_urlsafe(32)[:43]}"
    # The secret is everything after "tg_<12-char id>_"; base64url secrets may contain "_",
    # so never split on it (a short tail would match unrelated hex in the logs).
    planted_secret = planted_token[len("tg_") + 13:]
    needles = {
        "planted email": email,
        "planted email (lowercase)": email.lower(),
        "planted email local part": f"Pii.{marker}",
        "planted token": planted_token,
        "planted token secret": planted_secret,
        "caller's token": token,
        "caller's token secret": token[len("tg_") + 13:],
        "idempotency key": f"pii-{marker}",
    }

    offset = stack.stdout_offset()
    err_offset = stack.stderr_path.stat().st_size
    span_mark = stack.spans.mark()
    responses = []
    for url_tool in ("gateway", "tool"):
        for modern in (False, True):
            def call(tool: str, args: dict[str, Any], tok: str | None = token, **headers: str) -> None:
                url = stack.gateway_url if url_tool == "gateway" else stack.tool_url(tool)
                responses.append(tool_call(http, url, tok, tool, args, modern=modern, **headers))

            call("lookup_customer", {"email": email})  # business error: unknown customer
            call("lookup_customer", {"email": planted_token})  # invalid input
            call("lookup_customer", {"email": email, "note": planted_token})  # unexpected property
            call("open_ticket", {"customer_id": "C-1001", "subject": f"Mail {email}",
                                 "description": f"My password is {planted_token}", "priority": "low"},
                 **{"Idempotency-Key": f"pii-{marker}-{url_tool}-{modern}"})  # success, keyed
            call("open_ticket", {"customer_id": "C-1001", "subject": email, "description": planted_token,
                                 "priority": planted_token})  # invalid input
            call("open_ticket", {"customer_id": email, "subject": "Refund", "description": "Please.",
                                 "priority": "low"})  # invalid input
            call("track_shipment", {"tracking_number": planted_token})  # denied scope
            call("lookup_customer", {"email": email}, tok=None)  # denied auth
            if url_tool == "gateway":
                call("no_such_tool", {"email": email, "token": planted_token})  # unknown tool

    statuses = {r.status_code for r in responses}
    assert statuses == {200, 401, 403}, statuses
    for resp in responses:
        for what, value in needles.items():
            assert value not in resp.text, f"{what} echoed in a response: {resp.text}"

    logs = "\n".join(stack.stdout_lines_since(offset))
    with stack.stderr_path.open("rb") as f:
        f.seek(err_offset)
        logs += "\n" + f.read().decode("utf-8", errors="replace")
    assert '"kind":"audit"' in logs
    for what, value in needles.items():
        leaking = [line for line in logs.splitlines() if value in line]
        assert not leaking, f"{what} appears in the stack's logs, e.g.: {leaking[0][:600]}"
    # Nor in the spans the stack exported: OTLP protobuf and X-Ray segment documents.
    stack.spans.settle()
    exported = stack.spans.bytes_since(span_mark)
    assert exported, "the calls were traced and exported"
    for what, value in needles.items():
        leaking = [b for b in exported if value.encode() in b]
        assert not leaking, f"{what} appears in exported spans, e.g.: {leaking[0][:600]!r}"
    # Audit records name the agent, but only describe arguments.
    records = [json.loads(line) for line in stack.stdout_lines_since(offset) if '"kind":"audit"' in line]
    assert len(records) == len(responses)
    assert {r.get("agent_id") for r in records if r["status"] != "denied_auth"} == {agent}
    keyed = [r for r in records if r.get("idempotency_key")]
    # Hashed with the hashing key, or (without one, as here) summarised: never raw.
    assert len(keyed) == 4, keyed
    for r in keyed:
        logged = r["idempotency_key"]
        assert (isinstance(logged, str) and logged.startswith("hmac-sha256:")) or \
            (isinstance(logged, dict) and logged.get("type") == "string" and set(logged) == {"type", "len"}), logged
