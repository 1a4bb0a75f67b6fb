"""Trace context through the local stack: the caller's trace continues through the gateway
and the tool function to the downstream carrier API, which never sees the agent's token; the
audit record names the same trace in X-Ray form."""

from __future__ import annotations

import json
import secrets

import pytest

from helpers import modern_headers, modern_meta, post, rpc_result, tool_call

CALLER_SPAN = "00f067aa0ba902b7"


def traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{CALLER_SPAN}-01"


def seen_by_carrier(stack, http, number: str) -> dict:
    resp = http.get(f"http://127.0.0.1:{stack.carrier_port}/_seen/{number}")
    assert resp.status_code == 200, f"carrier never saw {number}"
    return resp.json()


def tracking_number() -> str:
    return "TR" + secrets.token_hex(6).upper()


@pytest.mark.parametrize("route", ["gateway", "tool"])
def test_caller_traceparent_header_reaches_the_downstream_api(stack, http, token, route) -> None:
    trace_id = secrets.token_hex(16)
    number = tracking_number()
    url = stack.gateway_url if route == "gateway" else stack.tool_url("track_shipment")
    offset = stack.stdout_offset()
    resp = tool_call(http, url, token, "track_shipment", {"tracking_number": number}, traceparent=traceparent(trace_id))
    rpc_result(resp)
    seen = seen_by_carrier(stack, http, number)
    assert seen["traceparent"].split("-")[1] == trace_id, seen
    assert seen["traceparent"].split("-")[2] != CALLER_SPAN, "the tool's own span is the parent downstream"
    assert seen["x-amzn-trace-id"].startswith(f"Root=1-{trace_id[:8]}-{trace_id[8:]};"), seen
    assert seen["credentials_sent"] is False, "the agent's token is never passed downstream"
    audits = [json.loads(l) for l in stack.stdout_lines_since(offset) if '"kind":"audit"' in l]
    assert [a["trace_id"] for a in audits] == [f"1-{trace_id[:8]}-{trace_id[8:]}"]


def test_meta_traceparent_wins_over_the_header(stack, http, token) -> None:
    meta_trace, header_trace = secrets.token_hex(16), secrets.token_hex(16)
    number = tracking_number()
    meta = modern_meta() | {"traceparent": traceparent(meta_trace)}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "track_shipment", "arguments": {"tracking_number": number}, "_meta": meta}}
    headers = modern_headers(token, "tools/call", "track_shipment", traceparent=traceparent(header_trace))
    rpc_result(post(http, stack.gateway_url, body, headers))
    assert seen_by_carrier(stack, http, number)["traceparent"].split("-")[1] == meta_trace


def test_amzn_trace_header_is_accepted_and_malformed_context_is_ignored(stack, http, token) -> None:
    root = f"1-{secrets.token_hex(4)}-{secrets.token_hex(12)}"
    number = tracking_number()
    resp = tool_call(http, stack.gateway_url, token, "track_shipment", {"tracking_number": number},
                     **{"X-Amzn-Trace-Id": f"Root={root};Parent=53995c3f42cd8ad8;Sampled=1"})
    rpc_result(resp)
    assert seen_by_carrier(stack, http, number)["x-amzn-trace-id"].startswith(f"Root={root};")
    number = tracking_number()
    resp = tool_call(http, stack.gateway_url, token, "track_shipment", {"tracking_number": number},
                     traceparent="00-not-a-trace-01")
    rpc_result(resp)  # never fatal: a new trace is started
    assert len(seen_by_carrier(stack, http, number)["traceparent"].split("-")[1]) == 32
