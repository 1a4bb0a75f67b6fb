"""The admin CLI (`target/debug/tollgate`) against the stack's DynamoDB server: good input works,
bad input exits non-zero with a clear message on stderr and writes nothing."""

from __future__ import annotations

import json

import pytest

from helpers import ALL_SCOPES, unique


@pytest.fixture
def agent(stack) -> str:
    return stack.create_agent(unique("cli"), ["customers:read"])


def assert_refused(result, *needles: str) -> None:
    assert result.returncode != 0, f"expected failure, got success: {result.stdout}"
    message = result.stderr.strip()
    assert message, "no message on stderr"
    assert result.stdout.strip() == "", f"a failed command printed a result: {result.stdout}"
    assert "panicked" not in message and "RUST_BACKTRACE" not in message, message
    for needle in needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in {message!r}"


def refused_without_writes(stack, *args: str, needles: tuple[str, ...] = ()) -> None:
    """Runs a command that must fail: non-zero, a clear message, the table unchanged."""
    agents_before = stack.cli("agents", "list").json()
    items_before = stack.table_items()
    result = stack.cli(*args, check=False)
    assert_refused(result, *needles)
    # The text-mode run must fail the same way.
    text = stack.cli(*args, check=False, json_output=False)
    assert_refused(text, *needles)
    assert stack.cli("agents", "list").json() == agents_before
    assert stack.table_items() == items_before, "a refused command wrote to the table"


# --- good input -------------------------------------------------------------------------------


def test_agent_key_and_scope_lifecycle(stack) -> None:
    agent_id = unique("life")
    created = stack.cli("agents", "create", agent_id, "--description", "e2e agent",
                        "--scope", "customers:read", "--scope", "tickets:write").json()
    assert created["agent_id"] == agent_id and created["status"] == "active"
    assert created["scopes"] == ["customers:read", "tickets:write"]
    listed = {a["agent_id"]: a for a in stack.cli("agents", "list").json()}
    assert listed[agent_id]["description"] == "e2e agent"

    key = stack.create_key(agent_id, expires_in="12h")
    assert key["agent_id"] == agent_id and key["status"] == "active"
    assert key["expires_at_ms"] is not None and key["expires_at_ms"] > key["created_at_ms"]
    assert key["token"].startswith(f"tg_{key['key_id']}_")
    keys = stack.cli("keys", "list", agent_id).json()
    assert [k["key_id"] for k in keys] == [key["key_id"]]
    assert all("token" not in k for k in keys), "keys list must never show a token"

    revoked = stack.cli("keys", "revoke", key["key_id"]).json()
    assert revoked["status"] == "revoked"
    assert stack.cli("agents", "show", agent_id).json()["keys"][0]["status"] == "revoked"

    assert stack.cli("scopes", "add", agent_id, "shipments:read").json()["scopes"] == ALL_SCOPES
    assert stack.cli("scopes", "remove", agent_id, "customers:read").json()["scopes"] == [
        "shipments:read", "tickets:write"]
    assert stack.cli("scopes", "set", agent_id).json()["scopes"] == []

    assert stack.cli("agents", "disable", agent_id).json()["status"] == "disabled"
    assert stack.cli("agents", "enable", agent_id).json()["status"] == "active"


def test_tokens_are_never_stored(stack, agent) -> None:
    key = stack.create_key(agent)
    dump = json.dumps(stack.table_items())
    assert key["token"] not in dump
    secret = key["token"][len("tg_") + 13:]
    assert secret not in dump, "the token's secret part is stored"


def test_text_output_shows_the_token_once(stack, agent) -> None:
    result = stack.cli("keys", "create", agent, json_output=False)
    assert result.returncode == 0
    assert "tg_" in result.stdout
    listing = stack.cli("keys", "list", agent, json_output=False).stdout
    assert "tg_" not in listing


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["Bad Agent", "UPPER", "_leading-underscore", ".leading-dot", "", "a" * 65, "émile", "has/slash"])
def test_create_agent_with_invalid_id_is_refused(stack, bad_id) -> None:
    refused_without_writes(stack, "agents", "create", bad_id, "--scope", "customers:read",
                           needles=("agent id", "invalid"))


@pytest.mark.parametrize("bad_scope", ["bad scope", 'quo"te', "back\\slash", ""])
def test_create_agent_with_invalid_scope_is_refused(stack, bad_scope) -> None:
    agent_id = unique("badscope")
    refused_without_writes(stack, "agents", "create", agent_id, "--scope", "customers:read",
                           "--scope", bad_scope, needles=("scope", "invalid"))
    shown = stack.cli("agents", "show", agent_id, check=False)
    assert shown.returncode != 0 and "not found" in shown.stderr


@pytest.mark.parametrize("verb", ["add", "set"])
def test_invalid_scope_change_is_refused(stack, agent, verb) -> None:
    refused_without_writes(stack, "scopes", verb, agent, "tickets:write", "bad scope",
                           needles=("scope", "invalid"))


def test_duplicate_agent_is_refused(stack, agent) -> None:
    refused_without_writes(stack, "agents", "create", agent, needles=(agent, "already exists"))


def test_key_for_unknown_agent_is_refused(stack) -> None:
    refused_without_writes(stack, "keys", "create", unique("ghost"), needles=("not found",))


def test_key_for_invalid_agent_id_is_refused(stack) -> None:
    refused_without_writes(stack, "keys", "create", "Not Valid", needles=("invalid",))


@pytest.mark.parametrize("command", [
    ("scopes", "add"), ("scopes", "set"), ("agents", "disable"), ("agents", "enable"), ("agents", "show"),
    ("keys", "list"),
])
def test_commands_on_unknown_agent_are_refused(stack, command) -> None:
    args = [*command, unique("ghost")]
    if command[0] == "scopes":
        args.append("customers:read")
    refused_without_writes(stack, *args, needles=("not found",))


def test_revoke_unknown_key_is_refused(stack) -> None:
    refused_without_writes(stack, "keys", "revoke", "abcdefghijkm", needles=("not found",))


def test_revoke_with_a_token_instead_of_an_id_is_refused(stack, agent) -> None:
    key = stack.create_key(agent)
    refused_without_writes(stack, "keys", "revoke", key["token"], needles=("invalid",))
    assert stack.cli("keys", "list", agent).json()[0]["status"] == "active"


def test_revoke_error_does_not_echo_a_pasted_token(stack, agent) -> None:
    key = stack.create_key(agent)
    result = stack.cli("keys", "revoke", key["token"], check=False)
    assert result.returncode != 0
    secret = key["token"][len("tg_") + 13:]
    assert secret not in result.stderr, "the error message echoes the token"


@pytest.mark.parametrize("ttl", ["0s", "10x", "abc", "", "-5m", "1.5h", "99999999999999999999d", "12"])
def test_bad_expires_in_is_refused(stack, agent, ttl) -> None:
    refused_without_writes(stack, "keys", "create", agent, f"--expires-in={ttl}", needles=("duration",))
    assert stack.cli("keys", "list", agent).json() == []


def test_set_tool_refuses_more_shards_than_burst_and_a_zero_limit(stack) -> None:
    # Each shard holds at least one token: 4 shards of a burst of 2 would allow 4 at once.
    refused_without_writes(stack, "budgets", "set-tool", "lookup_customer", "--per-minute", "60",
                           "--burst", "2", "--shards", "4", needles=("--shards", "--burst"))
    refused_without_writes(stack, "budgets", "set-tool", "lookup_customer", "--per-minute", "0",
                           needles=("at least 1",))
