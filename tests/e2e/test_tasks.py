"""Long-running tools as MCP tasks (2025-11-25 `tasks` utility), through the local stack with
the official MCP Python SDK's task types (`CallToolRequestParams.task`, `GetTaskRequest`,
`GetTaskPayloadRequest`, `ListTasksRequest`, `CancelTaskRequest`).

The stack under test is an extra `tollgate-dev` instance of the session stack (same moto, same
tables) whose `export_tickets` takes EXPORT_S seconds while every HTTP exchange must answer
within REQUEST_TIMEOUT_S (`TOLLGATE_DEV_TIMEOUT_MS`, the local stand-in for API Gateway's 30 s
integration limit): the task outlives any single request. No assertion depends on timing; waits
are polls with generous bounds.

The SDK (2.3.0) has the 2025-11-25 task types, but its 2025-11-25 result surface admits only
`CallToolResult` for `tools/call`; `sdk_admits_create_task_result` extends that surface through
the validators' own `surface` parameter (the SDK's way to admit more), nothing else.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import boto3
import mcp_types._v2025_11_25 as wire_2025
import mcp_types.methods as sdk_methods
import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from helpers import TABLE, mcp_session, unique

pytestmark = pytest.mark.anyio

EXPORT_S = 3
REQUEST_TIMEOUT_S = 2
GRACE_MS = 1000
TIME_LIMIT_MS = 5000
INSTANCE_ENV = {
    "EXPORT_TICKETS_DURATION_MS": str(EXPORT_S * 1000),
    "EXPORT_TICKETS_BATCHES": "6",
    "EXPORT_TICKETS_TIME_LIMIT_MS": str(TIME_LIMIT_MS),
    "TOLLGATE_DEV_TIMEOUT_MS": str(REQUEST_TIMEOUT_S * 1000),
    "TOLLGATE_TASK_GRACE_MS": str(GRACE_MS),
    "TOLLGATE_TASK_POLL_INTERVAL_MS": "200",
    "TOLLGATE_TASK_PROGRESS_INTERVAL_MS": "100",
    "TOLLGATE_TASK_CANCEL_CHECK_MS": "200",
    # tasks/result may wait at most this long for an unfinished task (bounded by the request
    # timeout too): shorter than the export, so the "not finished" answer is exercised.
    "TOLLGATE_TASK_RESULT_WAIT_MS": "500",
}
CUSTOMER = {"customer_id": "C-1001"}
PROGRESS_META = "tollgate/progress"
RELATED_TASK = "io.modelcontextprotocol/related-task"
NOT_FOUND = "Failed to retrieve task: Task not found"
POLL_BOUND_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def sdk_admits_create_task_result():
    surface = {
        **sdk_methods.SERVER_RESULTS,
        ("tools/call", "2025-11-25"): wire_2025.CallToolResult | wire_2025.CreateTaskResult,
    }
    original = sdk_methods.validate_server_result

    def validate(method, version, data, *, surface=surface):
        return original(method, version, data, surface=surface)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sdk_methods, "validate_server_result", validate)
        yield


@pytest.fixture(scope="module")
def instance(stack, module_processes):
    stack.cli("budgets", "set-tool", "export_tickets", "--per-minute", "100000", "--burst", "100000")
    return module_processes.extra_instance(stack, **INSTANCE_ENV)


def agent_token(stack, scopes=("tickets:read",)) -> tuple[str, str]:
    agent = stack.create_agent(unique("task"), list(scopes))
    return agent, stack.create_key(agent)["token"]


@pytest.fixture(scope="module")
def owner(stack) -> tuple[str, str]:
    return agent_token(stack)


async def create(session, arguments=CUSTOMER, ttl: int | None = 600_000) -> types.CreateTaskResult:
    return await session.send_request(
        types.CallToolRequest(
            params=types.CallToolRequestParams(
                name="export_tickets", arguments=arguments, task=types.TaskMetadata(ttl=ttl)
            )
        ),
        types.CreateTaskResult,
    )


async def get(session, task_id: str) -> types.GetTaskResult:
    return await session.send_request(
        types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id)), types.GetTaskResult
    )


async def result(session, task_id: str) -> types.CallToolResult:
    return await session.send_request(
        types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=task_id)),
        types.CallToolResult,
    )


async def cancel(session, task_id: str) -> types.CancelTaskResult:
    return await session.send_request(
        types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task_id)), types.CancelTaskResult
    )


async def list_all(session) -> list[types.Task]:
    tasks: list[types.Task] = []
    cursor = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.send_request(types.ListTasksRequest(params=params), types.ListTasksResult)
        tasks += page.tasks
        if not page.next_cursor:
            return tasks
        cursor = page.next_cursor


async def until_terminal(session, task_id: str, seen: list[types.GetTaskResult] | None = None) -> types.GetTaskResult:
    deadline = time.monotonic() + POLL_BOUND_S
    while True:
        task = await get(session, task_id)
        if seen is not None:
            seen.append(task)
        if task.status in ("completed", "failed", "cancelled"):
            return task
        assert time.monotonic() < deadline, f"task {task_id} still {task.status}"
        await anyio.sleep(0.1)


async def expect_not_found(call) -> None:
    with pytest.raises(MCPError) as e:
        await call
    assert e.value.error.code == -32602, e.value.error
    assert e.value.error.message.endswith(NOT_FOUND), e.value.error.message


def record(stack, agent: str, task_id: str) -> dict[str, Any]:
    ddb = boto3.client("dynamodb", endpoint_url=stack.ddb_url, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    return ddb.get_item(TableName=TABLE, Key={"pk": {"S": f"TASK#{agent}"}, "sk": {"S": task_id}}).get("Item", {})


# --- declaration --------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["gateway", "export_tickets"])
async def test_capabilities_and_tool_execution_are_declared(instance, owner, route) -> None:
    url = instance.gateway_url if route == "gateway" else instance.tool_url(route)
    async with mcp_session(url, owner[1]) as s:
        init = await s.initialize()
        assert init.protocol_version == "2025-11-25"
        tasks = init.capabilities.tasks
        assert tasks is not None and tasks.list is not None and tasks.cancel is not None
        assert tasks.requests is not None and tasks.requests.tools is not None
        assert tasks.requests.tools.call is not None
        listed = {t.name: t for t in (await s.list_tools()).tools}
        assert listed["export_tickets"].execution is not None
        assert listed["export_tickets"].execution.task_support == "optional"


async def test_tools_without_task_support_refuse_task_calls(stack, instance) -> None:
    _, token = agent_token(stack, ("customers:read",))
    async with mcp_session(instance.gateway_url, token) as s:
        await s.initialize()
        listed = {t.name: t for t in (await s.list_tools()).tools}
        assert listed["lookup_customer"].execution is None  # absent = forbidden
        with pytest.raises(MCPError) as e:
            await s.send_request(
                types.CallToolRequest(params=types.CallToolRequestParams(
                    name="lookup_customer", arguments={"email": "ada@example.com"}, task=types.TaskMetadata(ttl=60_000))),
                types.CreateTaskResult,
            )
        assert e.value.error.code == -32601
    # A function serving no task tool declares no tasks capability and ignores the field.
    async with mcp_session(instance.tool_url("lookup_customer"), token) as s:
        init = await s.initialize()
        assert init.capabilities.tasks is None


# --- the lifecycle ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["gateway", "export_tickets"])
async def test_task_outlives_the_request_limit_and_completes_with_progress(stack, instance, owner, route) -> None:
    agent, token = owner
    url = instance.gateway_url if route == "gateway" else instance.tool_url(route)
    offset = instance.stdout_offset()
    async with mcp_session(url, token) as s:
        await s.initialize()
        started = time.monotonic()
        created = await create(s)
        task = created.task
        assert task.status == "working" and task.ttl == 600_000 and task.poll_interval == 200
        assert created.meta and "io.modelcontextprotocol/model-immediate-response" in created.meta

        # An unfinished task's tasks/result waits (bounded), then says to poll again.
        with pytest.raises(MCPError) as e:
            await result(s, task.task_id)
        assert e.value.error.code == -31008
        assert e.value.error.data["taskId"] == task.task_id and e.value.error.data["status"] == "working"

        seen: list[types.GetTaskResult] = []
        done = await until_terminal(s, task.task_id, seen)
        elapsed = time.monotonic() - started
        assert done.status == "completed", done
        # Outlived the per-request limit (a fact of this run, not a timing bound on the stack).
        assert elapsed > REQUEST_TIMEOUT_S
        progress = [t.meta[PROGRESS_META] for t in seen if t.meta and PROGRESS_META in t.meta]
        assert progress, "progress was reported on the task while it ran"
        assert all(p["total"] == 6 for p in progress)
        assert any(t.status_message and t.status_message.startswith("Exported batch") for t in seen)

        out = await result(s, task.task_id)
        assert out.is_error is False
        assert out.structured_content["customer_id"] == "C-1001"
        assert {t["ticket_id"] for t in out.structured_content["tickets"]} >= {"T-DEMO0001", "T-DEMO0002"}
        assert out.meta[RELATED_TASK] == {"taskId": task.task_id}

        listed = {t.task_id: t for t in await list_all(s)}
        assert listed[task.task_id].status == "completed"

    # The record keeps no raw arguments, only their hash; one audit record at creation and one
    # at the end, sharing the task id.
    item = record(stack, agent, task.task_id)
    assert item["state"]["S"] == "completed" and "C-1001" not in str({k: v for k, v in item.items() if k != "result_json"})
    assert len(item["args_hash"]["S"]) == 64
    audits = [a for a in instance.audit_since(offset) if a.get("task_id") == task.task_id]
    assert [a["status"] for a in audits] == ["task_created", "success"], audits
    assert all(a["arguments"] == {"customer_id": "C-1001"} for a in audits)  # LogAs::Safe
    assert audits[0]["trace_id"] == audits[1]["trace_id"], "the run joins the creating trace"
    # The stored result never reaches the logs (only the result has these).
    logs = instance.stdout_text()
    assert "ticket_count" not in logs and "Invoice shows the wrong address" not in logs


async def test_cancel_stops_the_run_and_stays_cancelled(instance, owner) -> None:
    async with mcp_session(instance.gateway_url, owner[1]) as s:
        await s.initialize()
        task = (await create(s)).task
        cancelled = await cancel(s, task.task_id)
        assert cancelled.status == "cancelled"
        done = await until_terminal(s, task.task_id)
        assert done.status == "cancelled"
        out = await result(s, task.task_id)
        assert out.is_error is True and out.meta[RELATED_TASK] == {"taskId": task.task_id}
        with pytest.raises(MCPError) as e:
            await cancel(s, task.task_id)
        assert e.value.error.code == -32602 and "terminal status 'cancelled'" in e.value.error.message
        # Longer than the export would have taken: still cancelled (the run stopped).
        await anyio.sleep(EXPORT_S + 1)
        assert (await get(s, task.task_id)).status == "cancelled"


async def test_another_agent_cannot_see_or_cancel_the_task(stack, instance, owner) -> None:
    _, other = agent_token(stack)
    async with mcp_session(instance.gateway_url, owner[1]) as s:
        await s.initialize()
        task = (await create(s)).task
    async with mcp_session(instance.gateway_url, other) as s:
        await s.initialize()
        await expect_not_found(get(s, task.task_id))
        await expect_not_found(result(s, task.task_id))
        await expect_not_found(cancel(s, task.task_id))
        # Indistinguishable from an id nobody has.
        await expect_not_found(get(s, "00000000-0000-4000-8000-000000000000"))
        assert task.task_id not in {t.task_id for t in await list_all(s)}
    async with mcp_session(instance.gateway_url, owner[1]) as s:
        await s.initialize()
        assert (await get(s, task.task_id)).status in ("working", "completed")


async def test_tool_errors_end_the_task_failed(instance, owner) -> None:
    async with mcp_session(instance.tool_url("export_tickets"), owner[1]) as s:
        await s.initialize()
        task = (await create(s, {"customer_id": "C-9999"})).task
        done = await until_terminal(s, task.task_id)
        assert done.status == "failed"
        out = await result(s, task.task_id)
        assert out.is_error is True and "No customer has that id" in out.content[0].text
        # Invalid arguments create no task.
        with pytest.raises(MCPError) as e:
            await create(s, {"customer_id": "nope"})
        assert e.value.error.code == -32602


async def test_ttl_expires_the_task(instance, owner) -> None:
    async with mcp_session(instance.gateway_url, owner[1]) as s:
        await s.initialize()
        task = (await create(s, ttl=1)).task
        assert task.ttl == 1000  # the shortest TTL granted
        deadline = time.monotonic() + POLL_BOUND_S
        while True:
            try:
                await get(s, task.task_id)
            except MCPError as e:
                assert e.error.code == -32602 and e.error.message.endswith(NOT_FOUND)
                break
            assert time.monotonic() < deadline
            await anyio.sleep(0.2)
        assert task.task_id not in {t.task_id for t in await list_all(s)}


async def test_killed_worker_ends_failed(stack, module_processes, owner) -> None:
    """The instance running the task dies (SIGKILL); the task ends `failed` once its run is
    overdue (creation + time limit + grace), seen from another instance."""
    doomed = module_processes.extra_instance(stack, **INSTANCE_ENV)
    async with mcp_session(doomed.gateway_url, owner[1]) as s:
        await s.initialize()
        task = (await create(s)).task
    doomed.kill()
    async with mcp_session(stack.gateway_url, owner[1]) as s:
        await s.initialize()
        done = await until_terminal(s, task.task_id)
        assert done.status == "failed"
        assert "stopped without finishing" in (done.status_message or "")
        out = await result(s, task.task_id)
        assert out.is_error is True


async def test_a_run_past_its_limit_ends_failed(stack, module_processes, owner) -> None:
    """The tool's time limit (1 s) is shorter than the export (3 s): the run is cut by its own
    deadline and the task ends `failed` with a system-error result."""
    slow = module_processes.extra_instance(stack, **{**INSTANCE_ENV, "EXPORT_TICKETS_TIME_LIMIT_MS": "1000"})
    offset = slow.stdout_offset()
    async with mcp_session(slow.gateway_url, owner[1]) as s:
        await s.initialize()
        task = (await create(s)).task
        done = await until_terminal(s, task.task_id)
        assert done.status == "failed"
        out = await result(s, task.task_id)
        assert out.is_error is True and "internal error" in out.content[0].text
    deadline = time.monotonic() + POLL_BOUND_S
    while True:
        ends = [a for a in slow.audit_since(offset) if a.get("task_id") == task.task_id and a["status"] != "task_created"]
        if ends or time.monotonic() > deadline:
            break
        await anyio.sleep(0.1)
    assert [(a["status"], a.get("reason")) for a in ends] == [("system_error", "deadline_exceeded")]


async def test_the_budget_is_spent_once_at_creation(stack, instance) -> None:
    agent, token = agent_token(stack)
    stack.cli("budgets", "set-agent", agent, "--per-day", "1000")

    def per_day_remaining() -> int:
        rows = stack.cli("budgets", "status", "agent", agent).json()
        return int(next(r for r in rows if r["policy"] == "agent_per_day")["remaining"])

    before = per_day_remaining()
    async with mcp_session(instance.gateway_url, token) as s:
        await s.initialize()
        task = (await create(s)).task
        assert (await until_terminal(s, task.task_id)).status == "completed"
        await result(s, task.task_id)
        await list_all(s)
    # One call's worth: the run, the polls and the result spent nothing.
    assert per_day_remaining() == before - 1


# --- 2026-07-28: the tasks extension (SEP-2663), raw JSON-RPC ----------------------------------

EXTENSION = "io.modelcontextprotocol/tasks"


def ext_request(method: str, params: dict[str, Any], *, opted: bool = True, id: int = 1) -> dict[str, Any]:
    from helpers import modern_meta, modern_request

    caps = {"extensions": {EXTENSION: {}}} if opted else {}
    return modern_request(method, params, id=id, meta=modern_meta(capabilities=caps))


def ext_post(http, url: str, token: str, method: str, params: dict[str, Any], *, opted: bool = True, name: str | None = None):
    from helpers import modern_headers, post

    return post(http, url, ext_request(method, params, opted=opted), modern_headers(token, method, name))


@pytest.mark.parametrize("route", ["gateway", "export_tickets"])
def test_extension_2026_07_28_lifecycle(instance, owner, http, route) -> None:
    from helpers import modern_headers, modern_request, post, rpc_error, rpc_result

    url = instance.gateway_url if route == "gateway" else instance.tool_url(route)
    token = owner[1]
    discovered = rpc_result(post(http, url, modern_request("server/discover"), modern_headers(token, "server/discover")))
    assert discovered["capabilities"]["extensions"][EXTENSION] == {}
    assert "tasks" not in discovered["capabilities"]

    call = {"name": "export_tickets", "arguments": CUSTOMER}
    # Not opted in: an optional task tool answers synchronously (here within the request
    # limit only because nothing in this call waits: an unknown customer fails at once).
    plain = rpc_result(ext_post(http, url, token, "tools/call", {**call, "arguments": {"customer_id": "C-9999"}},
                                opted=False, name="export_tickets"))
    assert plain["resultType"] == "complete" and plain["isError"] is True and "taskId" not in plain
    rpc_error(ext_post(http, url, token, "tasks/get", {"taskId": "x"}, opted=False), 400, -32021)

    created = rpc_result(ext_post(http, url, token, "tools/call", call, name="export_tickets"))
    assert created["resultType"] == "task" and created["status"] == "working"
    assert "task" not in created and "result" not in created and "ttl" not in created
    assert isinstance(created["ttlMs"], int) and isinstance(created["pollIntervalMs"], int)
    task_id = created["taskId"]
    deadline = time.monotonic() + POLL_BOUND_S
    while True:
        got = rpc_result(ext_post(http, url, token, "tasks/get", {"taskId": task_id}))
        if got["status"] != "working":
            break
        assert "result" not in got and "error" not in got
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert got["status"] == "completed" and got["result"]["structuredContent"]["customer_id"] == "C-1001"
    assert RELATED_TASK not in (got["result"].get("_meta") or {})
    # Cancel: an empty acknowledgement, also for a finished task; unknown ids are -32602.
    ack = rpc_result(ext_post(http, url, token, "tasks/cancel", {"taskId": task_id}))
    assert ack == {"resultType": "complete", "_meta": ack["_meta"]}
    rpc_error(ext_post(http, url, token, "tasks/cancel", {"taskId": "00000000-0000-4000-8000-000000000000"}), 400, -32602)

    running = rpc_result(ext_post(http, url, token, "tools/call", call, name="export_tickets"))["taskId"]
    rpc_result(ext_post(http, url, token, "tasks/cancel", {"taskId": running}))
    assert rpc_result(ext_post(http, url, token, "tasks/get", {"taskId": running}))["status"] == "cancelled"

    failing = rpc_result(ext_post(http, url, token, "tools/call", {**call, "arguments": {"customer_id": "C-9999"}},
                                  name="export_tickets"))["taskId"]
    deadline = time.monotonic() + POLL_BOUND_S
    while (got := rpc_result(ext_post(http, url, token, "tasks/get", {"taskId": failing})))["status"] == "working":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # A tool's own error is `completed` with `isError` in the extension (`failed` is reserved
    # for platform failures).
    assert got["status"] == "completed" and got["result"]["isError"] is True
