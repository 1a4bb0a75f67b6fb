"""Retry safety: a keyed tools/call with side effects runs once, however often it is retried.

Real parts only: the local stack (`tollgate-dev`, extra instances on the same DynamoDB-protocol
server), the official MCP Python SDK as the client where a client is involved, boto3 to look at
(or plant) records in the tables, and the admin CLI to read the agent's budget.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import boto3
import httpx2
import pytest

from helpers import APP_TABLE, TABLE, mcp_session, rpc_error, rpc_result, tool_call, unique

META_KEY = "io.modelcontextprotocol/idempotencyKey"
RESULT_META = "tollgate/idempotency"



def ticket_args(subject: str, customer: str = "C-1001") -> dict[str, Any]:
    return {"customer_id": customer, "subject": subject, "description": "Filed by the retry tests.",
            "priority": "normal"}


def dynamodb(stack):
    return boto3.client("dynamodb", endpoint_url=stack.ddb_url, region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local")


def tickets_with_subject(stack, subject: str) -> list[dict[str, Any]]:
    """Every ticket in the app table with this subject (the handler's side effect)."""
    ddb = dynamodb(stack)
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "TableName": APP_TABLE,
        "FilterExpression": "sk = :t AND subject = :s",
        "ExpressionAttributeValues": {":t": {"S": "TICKET"}, ":s": {"S": subject}},
    }
    while True:
        page = ddb.scan(**kwargs)
        items += page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def per_day_remaining(stack, agent: str) -> int:
    rows = stack.cli("budgets", "status", "agent", agent).json()
    row = next(r for r in rows if r["policy"] == "agent_per_day")
    return int(row["remaining"])


def record_key(agent: str, tool: str, key: str) -> str:
    return f"IDEM#{agent}#{tool}#{hashlib.sha256(key.encode()).hexdigest()}"


def arguments_hash(args: dict[str, Any]) -> str:
    """The canonical-JSON SHA-256 the framework keeps (sorted keys, no whitespace)."""
    text = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def keyed_agent(stack, per_day: int = 1000) -> tuple[str, str]:
    agent = stack.create_agent(unique("idem"), ["tickets:write"])
    stack.cli("budgets", "set-agent", agent, "--per-day", str(per_day))
    return agent, stack.create_key(agent)["token"]


class LosingTransport(httpx2.AsyncBaseTransport):
    """Delivers the first tools/call to the server, waits for its answer, then loses it: the
    client hears nothing (as when a connection drops or a proxy times out) and times out."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.lost: list[dict[str, Any]] = []
        self.sent_ids: list[Any] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content) if request.content else {}
        if isinstance(body, dict) and body.get("method") == "tools/call":
            self.sent_ids.append(body.get("id"))
        response = await self.inner.handle_async_request(request)
        if isinstance(body, dict) and body.get("method") == "tools/call" and not self.lost:
            await response.aread()
            self.lost.append(json.loads(response.content))
            await anyio.sleep_forever()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.anyio
async def test_a_lost_answer_retried_with_a_new_id_is_the_first_outcome_charged_once(stack) -> None:
    agent, token = keyed_agent(stack)
    subject = f"Lost answer {uuid.uuid4().hex[:8]}"
    key = str(uuid.uuid4())
    before = per_day_remaining(stack, agent)
    transport = LosingTransport()
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, transport=transport,
                                  timeout=30, trust_env=False) as http:
        async with streamable_http_client(stack.gateway_url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                with pytest.raises(Exception):
                    await session.call_tool("open_ticket", ticket_args(subject), read_timeout_seconds=3,
                                            meta={META_KEY: key})
                retried = await session.call_tool("open_ticket", ticket_args(subject), meta={META_KEY: key})

    assert len(transport.lost) == 1, "the first answer was produced by the server and lost"
    assert len(transport.sent_ids) == 2 and transport.sent_ids[0] != transport.sent_ids[1], transport.sent_ids
    first = transport.lost[0]["result"]
    assert first["structuredContent"]["status"] == "open"
    assert first["_meta"][RESULT_META] == {"replayed": False, "replayable": True}
    assert retried.structured_content == first["structuredContent"], "the retry gets the first outcome"
    assert (retried.meta or {})[RESULT_META]["replayed"] is True
    assert len(tickets_with_subject(stack, subject)) == 1, "one ticket, not two"
    assert per_day_remaining(stack, agent) == before - 1, "the budget was charged once"
    # The check can fail: an unkeyed call is charged.
    async with mcp_session(stack.gateway_url, token) as session:
        await session.initialize()
        await session.call_tool("open_ticket", ticket_args(f"{subject} (unkeyed)"))
    assert per_day_remaining(stack, agent) == before - 2


def test_sixteen_parallel_duplicates_across_two_instances_and_both_routes_run_once(stack, processes) -> None:
    other = processes.extra_instance(stack)
    agent, token = keyed_agent(stack)
    subject = f"Parallel {uuid.uuid4().hex[:8]}"
    key = str(uuid.uuid4())
    urls = [stack.gateway_url, stack.tool_url("open_ticket"), other.gateway_url, other.tool_url("open_ticket")]
    before = per_day_remaining(stack, agent)

    def one(i: int) -> httpx2.Response:
        with httpx2.Client(timeout=60, trust_env=False) as client:
            return tool_call(client, urls[i % 4], token, "open_ticket", ticket_args(subject), id=i,
                             **{"Idempotency-Key": key})

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(one, range(16)))

    tickets = tickets_with_subject(stack, subject)
    assert len(tickets) == 1, f"the handler ran {len(tickets)} times"
    ticket_id = tickets[0]["ticket_id"]["S"]
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 409}, statuses
    ran = 0
    for i, resp in enumerate(responses):
        if resp.status_code == 200:
            result = rpc_result(resp, id=i)
            assert result["structuredContent"]["ticket_id"] == ticket_id, result
            ran += not result["_meta"][RESULT_META]["replayed"]
        else:
            err = rpc_error(resp, 409, -31009, id=i)
            assert err["data"]["reason"] == "idempotency_in_progress" and err["data"]["retry"] == "after_retry_after"
            assert int(resp.headers["retry-after"]) >= 1
    assert ran == 1, "exactly one answer is the run itself; the others replay it or wait"
    # After the run, every route of every instance answers with the outcome.
    for url in urls:
        with httpx2.Client(timeout=30, trust_env=False) as client:
            resp = tool_call(client, url, token, "open_ticket", ticket_args(subject), id="after",
                             **{"Idempotency-Key": key})
        assert rpc_result(resp, id="after")["structuredContent"]["ticket_id"] == ticket_id
        assert resp.headers.get("idempotent-replayed") == "true"
    assert per_day_remaining(stack, agent) == before - 1, "one charge for the one run"


def test_the_same_key_with_other_arguments_is_422_and_runs_nothing(stack, http) -> None:
    _, token = keyed_agent(stack)
    key = str(uuid.uuid4())
    subject = f"Reuse {uuid.uuid4().hex[:8]}"
    first = tool_call(http, stack.tool_url("open_ticket"), token, "open_ticket", ticket_args(subject),
                      modern=True, **{"Idempotency-Key": f'"{key}"'})
    assert rpc_result(first)["isError"] is False
    changed = f"{subject} (changed)"
    offset = stack.stdout_offset()
    for url in (stack.gateway_url, stack.tool_url("open_ticket")):
        resp = tool_call(http, url, token, "open_ticket", ticket_args(changed), id="reuse",
                         **{"Idempotency-Key": key})
        err = rpc_error(resp, 422, -31022, id="reuse")
        assert err["data"] == {"reason": "idempotency_key_reused", "retry": "with_new_key"}
        assert key not in resp.text
    assert tickets_with_subject(stack, changed) == []
    time.sleep(0.3)
    reasons = [r.get("reason") for r in stack.audit_since(offset)]
    assert reasons.count("idempotency_key_reused") == 2, reasons
    assert key not in "\n".join(stack.stdout_lines_since(offset)), "keys are logged hashed only"


def test_an_invalid_or_conflicting_key_is_400(stack, http) -> None:
    _, token = keyed_agent(stack)
    args = ticket_args(f"Invalid {uuid.uuid4().hex[:8]}")
    for headers in ({"Idempotency-Key": "short"}, {"Idempotency-Key": "has spaces in it"}):
        resp = tool_call(http, stack.gateway_url, token, "open_ticket", args, id="bad", **headers)
        err = rpc_error(resp, 400, -32602, id="bad")
        assert "idempotency key" in err["message"]
    # Header and _meta disagree.
    body = {"jsonrpc": "2.0", "id": "two", "method": "tools/call",
            "params": {"name": "open_ticket", "arguments": args, "_meta": {META_KEY: str(uuid.uuid4())}}}
    resp = http.post(stack.tool_url("open_ticket"), json=body, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25", "Idempotency-Key": str(uuid.uuid4())})
    rpc_error(resp, 400, -32602, id="two")
    assert tickets_with_subject(stack, args["subject"]) == []


def test_a_record_expires_after_its_ttl(stack, processes) -> None:
    short = processes.extra_instance(stack, TOLLGATE_IDEMPOTENCY_TTL_SECS="1")
    _, token = keyed_agent(stack)
    key = str(uuid.uuid4())
    subject = f"Expiry {uuid.uuid4().hex[:8]}"
    with httpx2.Client(timeout=30, trust_env=False) as client:
        call = lambda: tool_call(client, short.tool_url("open_ticket"), token, "open_ticket",  # noqa: E731
                                 ticket_args(subject), **{"Idempotency-Key": key})
        first = rpc_result(call())
        assert first["_meta"][RESULT_META]["replayed"] is False
        # Until the TTL (whole seconds) has passed, a retry replays; then the key is free again.
        deadline = time.monotonic() + 30
        while True:
            result = rpc_result(call())
            if not result["_meta"][RESULT_META]["replayed"]:
                break
            assert result["structuredContent"] == first["structuredContent"]
            assert time.monotonic() < deadline, "the record never expired"
            time.sleep(0.5)
    assert result["structuredContent"]["ticket_id"] != first["structuredContent"]["ticket_id"]
    assert len(tickets_with_subject(stack, subject)) == 2


def test_a_system_error_releases_the_key_and_a_retry_runs(stack, processes) -> None:
    # An instance whose app table is gone (it creates and seeds it on start; we delete it):
    # open_ticket fails with a system error.
    gone = f"gone-{uuid.uuid4().hex[:8]}"
    broken = processes.extra_instance(stack, TOLLGATE_APP_TABLE=gone)
    dynamodb(stack).delete_table(TableName=gone)
    agent, token = keyed_agent(stack)
    key = str(uuid.uuid4())
    subject = f"System error {uuid.uuid4().hex[:8]}"
    with httpx2.Client(timeout=30, trust_env=False) as client:
        failed = rpc_result(tool_call(client, broken.tool_url("open_ticket"), token, "open_ticket",
                                      ticket_args(subject), **{"Idempotency-Key": key}))
        assert failed["isError"] is True and "internal error" in failed["content"][0]["text"]
        assert RESULT_META not in (failed.get("_meta") or {}), "a system error is not kept"
        retried = rpc_result(tool_call(client, stack.gateway_url, token, "open_ticket",
                                       ticket_args(subject), **{"Idempotency-Key": key}))
    assert retried["isError"] is False
    assert retried["_meta"][RESULT_META]["replayed"] is False, "the retry ran the tool"
    assert len(tickets_with_subject(stack, subject)) == 1
    item = dynamodb(stack).get_item(TableName=TABLE, Key={"pk": {"S": record_key(agent, "open_ticket", key)},
                                                          "sk": {"S": "IDEM"}})["Item"]
    assert item["state"]["S"] == "complete"
    assert "outcome" in item and key not in json.dumps(item), "the key itself is never stored"


def test_a_crash_between_the_two_writes_is_recovered_after_the_lease(stack, http) -> None:
    """An owner that died after claiming (record in progress, no outcome): retries get 409
    with Retry-After until its lease ends, then a retry runs."""
    agent, token = keyed_agent(stack)
    key = str(uuid.uuid4())
    args = ticket_args(f"Crash {uuid.uuid4().hex[:8]}")
    ddb = dynamodb(stack)
    now_ms = int(time.time() * 1000)

    def plant(lease_until_ms: int) -> None:
        ddb.put_item(TableName=TABLE, Item={
            "pk": {"S": record_key(agent, "open_ticket", key)}, "sk": {"S": "IDEM"},
            "kind": {"S": "idempotency"}, "state": {"S": "in_progress"},
            "args_hash": {"S": arguments_hash(args)}, "owner": {"S": "crashed-invocation"},
            "lease_until_ms": {"N": str(lease_until_ms)}, "expires_at_s": {"N": str(now_ms // 1000 + 3600)},
        })

    plant(now_ms + 60_000)
    resp = tool_call(http, stack.gateway_url, token, "open_ticket", args, id="wait", **{"Idempotency-Key": key})
    err = rpc_error(resp, 409, -31009, id="wait")
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert err["data"]["retry_after_ms"] == int(resp.headers["retry-after"]) * 1000
    assert tickets_with_subject(stack, args["subject"]) == []

    plant(now_ms - 1)  # the lease has ended
    resp = tool_call(http, stack.tool_url("open_ticket"), token, "open_ticket", args, id="run",
                     **{"Idempotency-Key": key})
    result = rpc_result(resp, id="run")
    assert result["isError"] is False and result["_meta"][RESULT_META]["replayed"] is False
    assert len(tickets_with_subject(stack, args["subject"])) == 1


def test_a_refused_call_releases_the_key(stack, http) -> None:
    """A budget refusal (429) runs nothing and keeps nothing: the record is released, so a retry
    is judged afresh (here: refused again, not answered 409 or replayed)."""
    agent, token = keyed_agent(stack, per_day=1)
    key = str(uuid.uuid4())
    subject = f"Refused {uuid.uuid4().hex[:8]}"
    spend = tool_call(http, stack.tool_url("open_ticket"), token, "open_ticket", ticket_args(f"{subject} spend"))
    assert rpc_result(spend)["isError"] is False
    for attempt in ("r1", "r2"):
        refused = tool_call(http, stack.tool_url("open_ticket"), token, "open_ticket", ticket_args(subject),
                            id=attempt, **{"Idempotency-Key": key})
        rpc_error(refused, 429, -31029, id=attempt)
        item = dynamodb(stack).get_item(TableName=TABLE, Key={
            "pk": {"S": record_key(agent, "open_ticket", key)}, "sk": {"S": "IDEM"}})["Item"]
        assert item["state"]["S"] == "released" and "outcome" not in item, item
    assert tickets_with_subject(stack, subject) == []


def test_read_only_tools_ignore_keys(stack, http, token) -> None:
    for _ in range(2):
        resp = tool_call(http, stack.gateway_url, token, "lookup_customer", {"email": "ada@example.com"},
                         **{"Idempotency-Key": "short"})  # not even validated
        result = rpc_result(resp)
        assert result["isError"] is False and RESULT_META not in (result.get("_meta") or {})


def test_tools_list_tells_the_model_about_the_key(stack, http, token) -> None:
    from helpers import tools_list

    tools = {t["name"]: t for t in rpc_result(tools_list(http, stack.gateway_url, token))["tools"]}
    assert META_KEY in tools["open_ticket"]["description"]
    assert "idempotency" not in tools["lookup_customer"]["description"].lower()


def test_an_outcome_over_the_size_bound_is_not_replayable_and_says_so(stack, processes) -> None:
    small = processes.extra_instance(stack, TOLLGATE_IDEMPOTENCY_MAX_OUTCOME_BYTES="64")
    _, token = keyed_agent(stack)
    key = str(uuid.uuid4())
    subject = f"Too large {uuid.uuid4().hex[:8]}"
    with httpx2.Client(timeout=30, trust_env=False) as client:
        first = rpc_result(tool_call(client, small.tool_url("open_ticket"), token, "open_ticket",
                                     ticket_args(subject), **{"Idempotency-Key": key}))
        note = first["_meta"][RESULT_META]
        assert note["replayed"] is False and note["replayable"] is False and "too large" in note["note"]
        # On either instance: the operation is not run again, and the answer says why.
        for url in (small.tool_url("open_ticket"), stack.gateway_url):
            again = rpc_result(tool_call(client, url, token, "open_ticket", ticket_args(subject),
                                         **{"Idempotency-Key": key}))
            assert again["isError"] is True and again["_meta"][RESULT_META]["replayed"] is True
            text = again["content"][0]["text"]
            assert "already ran" in text and "too large" in text, text
    assert len(tickets_with_subject(stack, subject)) == 1
