"""One function process serving 32 invocations at once, as on Lambda Managed Instances
(`AWS_LAMBDA_MAX_CONCURRENCY=32`), under a Runtime API on loopback that hands all 32 events out
together (tests/stack/runtime_api.py), against the session's DynamoDB-protocol server.

32 agents, each with its own key, each asking for one of the demo customers; half the calls
carry their own `traceparent`, the other half take their trace from their invocation's
`Lambda-Runtime-Trace-Id`. The process is started with a stale `_X_AMZN_TRACE_ID` in its
environment: nothing may come from there. Every response must be its own call's, with exactly
one audit record and one server span per invocation, each naming its own agent and trace."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helpers import TOOL_SCOPES
from span_sinks import OtlpReceiver

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "stack"))

from runtime_api import ConcurrentRuntimeApi, lambda_env  # noqa: E402

FUNCTION_BIN = Path(os.environ.get("TOLLGATE_FUNCTION_BIN", REPO / "target" / "debug" / "lookup_customer"))
FIXTURE = REPO / "events" / "lookup_customer.call-ok.json"
FIXTURE_API = "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/mcp"  # the fixtures' API
N = 32
CUSTOMERS = [
    ("ada@example.com", "C-1001", "Ada Lovelace"),
    ("grace@example.com", "C-1002", "Grace Hopper"),
    ("linus@example.com", "C-1003", "Linus Pauling"),
]
STALE_ENV_TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
STALE_TRACE_ID = "5759e988bd862e3fe1be46a994272793"


def _event(token: str, rpc_id: int, email: str, traceparent: str | None) -> dict[str, Any]:
    event = json.loads(FIXTURE.read_text())
    headers = event["headers"]
    headers["authorization"] = f"Bearer {token}"
    for name in ("x-amzn-trace-id", "content-length"):
        headers.pop(name, None)
    if traceparent:
        headers["traceparent"] = traceparent
    event["body"] = json.dumps({
        "jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
        "params": {"name": "lookup_customer", "arguments": {"email": email}},
    })
    return event


def _wait(what: str, ready: Any, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_32_concurrent_invocations_in_one_process_keep_their_own_principal_and_trace(stack, tmp_path) -> None:
    assert FUNCTION_BIN.exists(), f"{FUNCTION_BIN} is missing: run `make build-debug`"
    agents = [stack.agent_with_key([TOOL_SCOPES["lookup_customer"]], prefix="mi") for _ in range(N)]
    calls = []  # (agent, rpc id, customer, caller trace id or None)
    events = []
    for i, (agent, key) in enumerate(agents):
        customer = CUSTOMERS[i % len(CUSTOMERS)]
        caller_trace = secrets.token_hex(16) if i % 2 == 0 else None
        traceparent = f"00-{caller_trace}-{secrets.token_hex(8)}-01" if caller_trace else None
        calls.append((agent, 1000 + i, customer, caller_trace))
        events.append(_event(key["token"], 1000 + i, customer[0], traceparent))

    receiver = OtlpReceiver()
    api = ConcurrentRuntimeApi(events, timeout_s=60)
    base = {k: v for k, v in stack.env.items() if k not in ("AWS_XRAY_DAEMON_ADDRESS", "PORT")}
    env = lambda_env(base, api.address, "lookup_customer", N)
    env.update(
        TOLLGATE_RESOURCE_URL=FIXTURE_API,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        _X_AMZN_TRACE_ID=STALE_ENV_TRACE,
        # 32 new agents' first calls all go to the store at once, and moto answers them one at
        # a time: on a busy machine its queue can pass the default 800 ms budget timeout (a 503
        # that says nothing about concurrency in the function). Not what this test is about.
        TOLLGATE_BUDGET_TIMEOUT_MS="30000",
    )
    stdout = tmp_path / "function.stdout"
    with stdout.open("wb") as out:
        proc = subprocess.Popen([str(FUNCTION_BIN)], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        answered = api.wait(120, alive=lambda: proc.poll() is None)
        log = stdout.read_text(errors="replace")
        assert answered, f"not every invocation was answered:\n{log[-3000:]}"
        # All 32 workers of the one process were polling together when the events went out.
        assert api.max_waiting == N, api.max_waiting

        # Every response is its own call's: its JSON-RPC id and its customer, nobody else's.
        for inv, (agent, rpc_id, (_, customer_id, name), _) in zip(api.invocations, calls):
            assert inv.error is None, inv.error
            assert inv.response is not None and inv.response["statusCode"] == 200, (
                inv.request_id, inv.response, [line for line in log.splitlines() if inv.request_id in line][:3])
            body = json.loads(inv.response["body"])
            assert body["id"] == rpc_id, body
            result = body["result"]
            assert result["isError"] is False, result
            assert result["structuredContent"]["customer_id"] == customer_id, (rpc_id, result)
            assert result["structuredContent"]["name"] == name

        def expected_trace(i: int) -> str:
            caller = calls[i][3]
            if caller:
                return caller
            root = api.invocations[i].trace_header.split(";")[0].removeprefix("Root=1-")
            return root.replace("-", "")

        # Exactly one audit record per invocation, with its own agent and trace.
        def audits() -> list[dict[str, Any]]:
            records = []
            for line in stdout.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and rec.get("kind") == "audit":
                    records.append(rec)
            return records

        _wait("audit records", lambda: len(audits()) >= N)
        records = audits()
        assert len(records) == N, records
        by_request = {r["request_id"]: r for r in records}
        assert set(by_request) == {inv.request_id for inv in api.invocations}
        for i, inv in enumerate(api.invocations):
            rec = by_request[inv.request_id]
            trace = expected_trace(i)
            assert rec["status"] == "success" and rec["tool"] == "lookup_customer", rec
            assert rec["agent_id"] == calls[i][0], (rec, calls[i])
            assert rec["trace_id"] == f"1-{trace[:8]}-{trace[8:]}", (rec, trace)
        # One process, one cold start, whichever call got there first.
        assert sum(r["cold_start"] for r in records) == 1, [r["cold_start"] for r in records]

        # Exactly one server span per invocation, in its own trace, naming its own agent.
        # (Flushes are not awaited in this mode: the spans trail the responses.)
        def servers() -> list[Any]:
            return [s for s in receiver.spans if s.kind == "SERVER"]

        _wait("server spans", lambda: len(servers()) >= N)
        spans = servers()
        assert len(spans) == N, [(s.trace_id, s.name) for s in spans]
        by_trace = {s.trace_id: s for s in spans}
        assert len(by_trace) == N, "two server spans share a trace"
        for i in range(N):
            span = by_trace[expected_trace(i)]
            assert span.name == "tools/call lookup_customer", span
            assert span.attributes["enduser.id"] == calls[i][0], (span.attributes, calls[i])
            assert span.attributes["jsonrpc.request.id"] == str(calls[i][1])
        # Every span of the process (DynamoDB client spans included) sits in one of the 32
        # traces; none in the stale trace of the process environment.
        traces = {expected_trace(i) for i in range(N)}
        assert {s.trace_id for s in receiver.spans} <= traces
        assert STALE_TRACE_ID not in stdout.read_text(errors="replace")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        api.close()
        receiver.close()
