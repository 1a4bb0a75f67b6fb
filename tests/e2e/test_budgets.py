"""Budgets (429 contract) on the agent layer, set per agent with the admin CLI so no other test's
calls are affected. The tool layer is global (shared by every agent) and is raised out of the way
by the session fixture, so it is not exercised here."""

from __future__ import annotations

import math

import pytest

from helpers import TABLE, rpc_error, rpc_result, tool_call, unique

ADA = {"email": "ada@example.com"}


@pytest.fixture(params=["gateway", "tool"])
def route(request) -> str:
    return request.param


def assert_429(resp, *, id, policy: str, limit: int, window_s: int) -> dict:
    err = rpc_error(resp, 429, -31029, id=id)
    data = err["data"]
    assert data["reason"] == "rate_limited"
    assert data["retry"] == "after_retry_after"
    assert data["layer"] == "agent"
    assert data["policy"] == policy
    assert data["limit"] == limit and data["window_s"] == window_s
    assert data["retry_after_ms"] > 0
    retry_after = resp.headers.get("retry-after", "")
    assert retry_after.isdigit(), f"Retry-After must be whole seconds: {retry_after!r}"
    assert int(retry_after) == max(1, math.ceil(data["retry_after_ms"] / 1000))
    assert 1 <= int(retry_after) <= window_s
    assert f'"{policy}";q={limit};w={window_s}' in resp.headers.get("ratelimit-policy", "")
    assert resp.headers.get("ratelimit", "").startswith(f'"{policy}";r=0;t=')
    return data


def test_agent_per_minute_budget_is_429(stack, http, route) -> None:
    agent = stack.create_agent(unique("budget"), ["customers:read"])
    stack.cli("budgets", "set-agent", agent, "--per-minute", "2")
    token = stack.create_key(agent)["token"]
    url = stack.gateway_url if route == "gateway" else stack.tool_url("lookup_customer")

    first = [tool_call(http, url, token, "lookup_customer", ADA, id=i) for i in range(2)]
    assert [rpc_result(r, id=i)["isError"] for i, r in enumerate(first)] == [False, False], \
        "a call through the gateway must be charged once, not twice"
    refused, records = stack.audit_for(
        lambda: tool_call(http, url, token, "lookup_customer", ADA, id="over"), settle=0.1)
    assert_429(refused, id="over", policy="agent_per_minute", limit=2, window_s=60)
    assert len(records) == 1, records
    rec = records[0]
    assert rec["status"] == "rate_limited" and rec.get("budget_layer") == "agent", rec
    assert rec.get("agent_id") == agent and rec.get("tool") == "lookup_customer", rec
    # Still refused on a retry before Retry-After.
    assert_429(tool_call(http, url, token, "lookup_customer", ADA, id=9),
               id=9, policy="agent_per_minute", limit=2, window_s=60)

    # Other agents are not affected.
    _, other = stack.agent_with_key(["customers:read"], prefix="budget")
    assert rpc_result(tool_call(http, url, other["token"], "lookup_customer", ADA))["isError"] is False


def test_agent_tool_cap_is_429_for_that_tool_only(stack, http) -> None:
    agent = stack.create_agent(unique("budget"), ["customers:read", "shipments:read"])
    stack.cli("budgets", "set-agent", agent, "--tool", "lookup_customer", "--tool-per-minute", "1")
    token = stack.create_key(agent)["token"]

    assert rpc_result(tool_call(http, stack.gateway_url, token, "lookup_customer", ADA))["isError"] is False
    refused = tool_call(http, stack.gateway_url, token, "lookup_customer", ADA, id="cap")
    assert_429(refused, id="cap", policy="agent_tool", limit=1, window_s=60)
    # The cap is on lookup_customer only.
    result = rpc_result(tool_call(http, stack.gateway_url, token, "track_shipment", {"tracking_number": "DLV12345678"}))
    assert result["isError"] is False


def test_a_zero_budget_in_the_table_denies_every_call_permanently(stack, http, route) -> None:
    """A 0 limit read from the table (written by hand or an older CLI: the CLI refuses it) is
    "deny all": 403 with the permanently-denied code and no Retry-After, never unlimited."""
    import boto3

    agent = stack.create_agent(unique("zero"), ["customers:read"])
    key = stack.create_key(agent)
    ddb = boto3.client("dynamodb", endpoint_url=stack.ddb_url, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    zero = '{"per_minute":0,"per_day":null,"tools":{}}'
    for pk, sk in ((f"AGENT#{agent}", "AGENT"), (f"KEY#{key['key_id']}", "KEY")):
        ddb.update_item(TableName=TABLE, Key={"pk": {"S": pk}, "sk": {"S": sk}},
                        UpdateExpression="SET budget = :b", ExpressionAttributeValues={":b": {"S": zero}},
                        ConditionExpression="attribute_exists(pk)")
    url = stack.gateway_url if route == "gateway" else stack.tool_url("lookup_customer")
    for i in range(3):
        resp = tool_call(http, url, key["token"], "lookup_customer", ADA, id=i)
        err = rpc_error(resp, 403, -31003, id=i)
        assert err["data"]["reason"] == "budget_zero", err
        assert err["data"]["retry"] == "never"
        assert (err["data"]["layer"], err["data"]["policy"]) == ("agent", "agent_per_minute")
        assert "retry-after" not in resp.headers
