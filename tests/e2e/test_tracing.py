"""Trace context through the local stack: the caller's trace continues through the gateway
and the tool function to the downstream carrier API, which never sees the agent's token; the
audit record names the same trace in X-Ray form; the spans the stack exports (to a real OTLP
receiver and an X-Ray daemon socket on loopback) form that one trace with correct parents."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from helpers import ALL_SCOPES, modern_headers, modern_meta, post, rpc_result, tool_call
from span_sinks import Span

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


# --- exported spans ---------------------------------------------------------------------------


def _one(spans: list[Span], what: str, **match: object) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one {what} span {match}, got {len(found)}: {[(s.name, s.parent_span_id) for s in spans]}"
    return found[0]


def _children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_span_id == parent.span_id]


def _traced_call(stack, http, number: str, route: str = "gateway") -> tuple[str, str, str, list[Span]]:
    """One tools/call of track_shipment with a caller traceparent: (agent, trace id, request id,
    the trace's exported spans once the gateway's server span and the HTTP client span arrived)."""
    agent, key = stack.agent_with_key(ALL_SCOPES, prefix="span")
    trace_id = secrets.token_hex(16)
    request_id = f"span-{secrets.token_hex(4)}"
    url = stack.gateway_url if route == "gateway" else stack.tool_url("track_shipment")
    resp = tool_call(http, url, key["token"], "track_shipment", {"tracking_number": number},
                     id=request_id, traceparent=traceparent(trace_id))
    assert resp.status_code == 200, resp.text

    def complete(spans: list[Span]) -> bool:
        ours = [s for s in spans if s.trace_id == trace_id]
        return any(s.parent_span_id == CALLER_SPAN for s in ours) and any(s.name == "GET" for s in ours)

    spans = [s for s in stack.spans.wait_for(complete) if s.trace_id == trace_id]
    return agent, trace_id, request_id, spans


def test_exported_spans_form_one_trace_from_the_caller_to_dynamodb_and_the_carrier(stack, http) -> None:
    number = tracking_number()
    agent, trace_id, request_id, spans = _traced_call(stack, http, number)
    # Every span of this request, wherever it ran, is in the caller's trace.
    tagged = [s for s in stack.spans.otlp.spans if s.attributes.get("jsonrpc.request.id") == request_id]
    assert len(tagged) == 2 and {s.trace_id for s in tagged} == {trace_id}, tagged

    gateway = _one(spans, "gateway server", parent_span_id=CALLER_SPAN)
    invoke = _one(spans, "forward", parent_span_id=gateway.span_id, name="Lambda.Invoke")
    tool = _one(spans, "tool server", parent_span_id=invoke.span_id)
    for server in (gateway, tool):
        assert server.kind == "SERVER" and server.name == "tools/call track_shipment", server
        assert server.attributes["mcp.method.name"] == "tools/call"
        assert server.attributes["gen_ai.tool.name"] == "track_shipment"
        assert server.attributes["gen_ai.operation.name"] == "execute_tool"
        assert server.attributes["jsonrpc.request.id"] == request_id
        assert server.attributes["mcp.protocol.version"] == "2025-11-25"
        assert server.attributes["enduser.id"] == agent
        assert "error.type" not in server.attributes, server.attributes
        _one(_children(spans, server), "authentication", name="authenticate")
    assert invoke.kind == "CLIENT" and invoke.attributes["rpc.service"] == "Lambda", invoke

    budget = _one(_children(spans, tool), "budget decision", name="budget")
    dynamo = _children(spans, budget)
    for call in dynamo:
        assert call.kind == "CLIENT" and call.attributes["rpc.system"] == "aws-api", call
        assert call.attributes["rpc.service"] == "DynamoDB", call
        assert call.name == f"DynamoDB.{call.attributes['rpc.method']}", call
    # One conditional update per item (the agent's, holding its per-minute and per-day buckets,
    # and the tool's); a GetItem of the tool's budget override joins them when its cache (1 s
    # here) has expired. A new agent's first call is decided by the store (no lease yet); the
    # tool's token may come from this instance's lease on the tool bucket (earlier tests).
    takes = [c for c in dynamo if c.name == "DynamoDB.UpdateItem"]
    assert 1 <= len(takes) <= 2, [c.name for c in dynamo]
    assert {c.name for c in dynamo} <= {"DynamoDB.UpdateItem", "DynamoDB.GetItem"}, dynamo
    handler = _one(_children(spans, tool), "handler", name="handler track_shipment")
    downstream = _one(_children(spans, handler), "downstream HTTP", name="GET")
    assert downstream.kind == "CLIENT", downstream
    assert downstream.attributes["http.request.method"] == "GET"
    assert downstream.attributes["server.address"] == "127.0.0.1"
    assert downstream.attributes["http.response.status_code"] == 200

    # The carrier was told exactly that span as its parent, in both header forms.
    seen = seen_by_carrier(stack, http, number)
    assert seen["traceparent"] == f"00-{trace_id}-{downstream.span_id}-01", seen
    assert seen["x-amzn-trace-id"] == f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={downstream.span_id};Sampled=1", seen

    # No attribute holds the argument.
    for s in spans:
        assert not any(number in str(v) for v in s.attributes.values()), s


def _xray_ids(doc: dict) -> list[tuple[str, str]]:
    """(trace id, id) of a segment document and every subsegment nested in it."""
    out = [(doc.get("trace_id"), doc.get("id"))]
    for sub in doc.get("subsegments", []):
        sub.setdefault("trace_id", doc.get("trace_id"))
        out += _xray_ids(sub)
    return out


def test_xray_daemon_receives_the_same_trace(stack, http) -> None:
    _, trace_id, _, spans = _traced_call(stack, http, tracking_number())
    xray_trace = f"1-{trace_id[:8]}-{trace_id[8:]}"
    gateway = _one(spans, "gateway server", parent_span_id=CALLER_SPAN)
    deadline = time.monotonic() + 10
    while True:
        ids = [i for doc in stack.spans.xray.segments() for i in _xray_ids(doc)]
        ours = {span_id for t, span_id in ids if t == xray_trace}
        if gateway.span_id in ours or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert gateway.span_id in ours, f"no X-Ray segment {gateway.span_id} in trace {xray_trace}"
    segment = next(doc for doc in stack.spans.xray.segments() if doc.get("id") == gateway.span_id)
    assert segment.get("parent_id") == CALLER_SPAN, segment
    assert {s.span_id for s in spans} <= ours | {gateway.span_id}, "every span became a segment or subsegment"


def test_failures_carry_error_type(stack, http) -> None:
    # A tracking number the carrier does not know: its 404 becomes a business error (isError).
    _, _, _, spans = _traced_call(stack, http, "TR" + secrets.token_hex(3).upper() + "0000")
    tool = _one(spans, "tool server", name="tools/call track_shipment", parent_span_id=next(
        s.span_id for s in spans if s.name == "Lambda.Invoke"))
    assert tool.attributes["error.type"] == "tool_error", tool.attributes
    downstream = _one(spans, "downstream HTTP", name="GET")
    assert downstream.attributes["error.type"] == "404", downstream.attributes
