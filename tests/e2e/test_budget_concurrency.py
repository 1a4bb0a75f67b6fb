"""Budgets under concurrency, restarts and store failures, against the real DynamoDB-protocol
server (single-threaded moto) -- issue 4, "Test".

- Several `tollgate-dev` processes (separate "instances": own port, own working directory, own
  refused-until memory and caches) share the session's moto and table; many client threads call
  through the real pipeline at one agent bucket, then at one tool bucket shared by several agents:
  the admitted count stays within the GCRA bound for the elapsed time and reaches >= 95% of it.
- A call refused by the tool layer costs the agent nothing; per-day budgets are enforced; a
  restarted instance still sees the budget; a call after Retry-After succeeds.
- A private stack whose moto is killed or frozen (SIGSTOP): the fail-closed tool answers 503 with
  Retry-After, the fail-open tool is admitted on the local bucket and logs it, nothing hangs past
  the budget timeout (also when the tool-policy cache has expired: one deadline per decision),
  nothing panics.

Set DEBUG_BUDGET=1 (with -s) to print every call of the concurrency runs.

Every test uses its own agents. Tool overrides are global: the tests that set one put back the
previous override and wait out the policy cache before returning.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx2
import pytest

from helpers import (
    TABLE,
    assert_rate_limited,
    rpc_error,
    rpc_result,
    tool_call,
    tools_list,
    unique,
)

ADA = {"email": "ada@example.com"}
TICKET = {"customer_id": "C-1001", "subject": "Cannot log in", "description": "Password reset "
          "mail never arrives.", "priority": "normal"}
POLICY_CACHE_TTL_S = 1.0  # conftest: TOLLGATE_POLICY_CACHE_TTL_SECS=1
WORKERS = 32
DURATION_S = 4.0
MAX_BACKOFF_S = 0.2  # clients honour Retry-After but never sleep longer than this: demand stays high


def tracking(i: int) -> str:
    """A valid tracking number the carrier reports in transit (8 capital letters / digits)."""
    return f"1Z{i % 1_000_000:06d}"


# --- load generator -------------------------------------------------------------------------


@dataclass
class Outcome:
    sent: float
    received: float
    status: int
    body: dict[str, Any] | None
    retry_after: str | None
    worker: int = -1
    policy: str | None = None  # RateLimit-Policy
    ratelimit: str | None = None  # RateLimit


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def elapsed_ms(self) -> float:
        """From the first request sent to the last response received: every admission
        the server decided lies inside this window."""
        return (max(o.received for o in self.outcomes) - min(o.sent for o in self.outcomes)) * 1000

    def admitted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200 and o.body and
                o.body.get("result", {}).get("isError") is False]

    def refused(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 429]

    def others(self) -> list[Outcome]:
        ok = {id(o) for o in self.admitted()} | {id(o) for o in self.refused()}
        return [o for o in self.outcomes if id(o) not in ok]


def hammer(targets: list[tuple[str, str]], tool: str, args_of, duration: float = DURATION_S,
           workers: int = WORKERS) -> Run:
    """`workers` threads call `tool` for `duration` seconds; worker i uses targets[i % n]
    (URL, token). A 429 is honoured by sleeping min(Retry-After, MAX_BACKOFF_S), so demand
    stays above any bucket rate under test; an admitted call is followed by the next at once."""
    run = Run()
    lock = threading.Lock()
    clock: dict[str, float] = {}

    def start() -> None:
        clock["deadline"] = time.monotonic() + duration

    barrier = threading.Barrier(workers, action=start)

    def worker(i: int) -> None:
        url, token = targets[i % len(targets)]
        mine: list[Outcome] = []
        try:
            with httpx2.Client(timeout=15, trust_env=False) as client:
                # Open the connection and warm the instance's key cache with a call that is
                # not budgeted, so the timed part measures budget decisions.
                assert tools_list(client, url, token).status_code == 200
                barrier.wait(timeout=30)
                n = 0
                while time.monotonic() < clock["deadline"]:
                    n += 1
                    sent = time.monotonic()
                    resp = tool_call(client, url, token, tool, args_of(i * 10_000 + n), id=n)
                    received = time.monotonic()
                    try:
                        body = resp.json()
                    except ValueError:
                        body = None
                    mine.append(Outcome(sent, received, resp.status_code, body, resp.headers.get("retry-after"),
                                        i, resp.headers.get("ratelimit-policy"), resp.headers.get("ratelimit")))
                    if resp.status_code == 429 and body:
                        wait_ms = body["error"]["data"]["retry_after_ms"]
                        time.sleep(min(wait_ms / 1000, MAX_BACKOFF_S))
                    elif resp.status_code != 200:
                        time.sleep(MAX_BACKOFF_S)
        except Exception as e:  # noqa: BLE001 - reported by the test
            barrier.abort()  # the others stop waiting for this one
            with lock:
                run.errors.append(f"worker {i}: {e!r}")
        with lock:
            run.outcomes.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 60)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    return run


def describe(o: Outcome) -> str:
    return f"HTTP {o.status} {json.dumps(o.body)[:300] if o.body else ''}"


def assert_within_bound(run: Run, *, burst: int, interval_ms: int, layer: str, policy: str,
                        label: str, fleet, offsets: list[int], held: int = 0) -> dict[str, Any]:
    """Upper bound: a GCRA bucket admits at most burst + elapsed / interval calls in any window;
    every admission of the run was decided between the first request sent and the last response
    received. Lower bound: >= 95% of what the bucket made claimable while calls were being
    decided, or of the calls made if fewer, less `held`: the tokens instances may hold in leases
    when the run ends (instances x the largest lease; 0 in exact mode).

    "Claimable" is derived from what the run could achieve, not from the wall clock alone: from
    the first answer received to the last request sent (nothing sent later could claim a
    token). Tokens made before the first decision overflowed the full bucket (it holds at most
    `burst`), and the first decision came no later than the first answer, so counting from it
    errs low by at most one answer's way back. On an idle
    machine the first answer comes milliseconds after the first send; on a loaded 2-core
    machine the single-threaded store's queue makes it seconds (p50 1.3 s was seen), which a
    floor counted from the first send turned into a false under-admission."""
    assert not run.errors, run.errors
    fallbacks = failure_policy_lines(fleet, offsets)
    assert not fallbacks, f"{len(fallbacks)} decisions fell back to a failure policy: {fallbacks[:3]}"
    others = run.others()
    assert not others, f"{len(others)} calls neither admitted nor 429, e.g. " + \
        "; ".join(describe(o) for o in others[:3])
    for o in run.refused():
        data = o.body["error"]["data"]
        assert (data["layer"], data["policy"]) == (layer, policy), data
        assert o.retry_after and int(o.retry_after) >= 1, o.retry_after
    admitted = len(run.admitted())
    elapsed = run.elapsed_ms
    # +1 ms: the server's clock is read in whole milliseconds.
    bound = burst + math.floor((elapsed + 1) / interval_ms)
    sending_ms = (max(o.sent for o in run.outcomes) - min(o.sent for o in run.outcomes)) * 1000
    deciding_ms = max(0.0, (max(o.sent for o in run.outcomes) - min(o.received for o in run.outcomes)) * 1000)
    available = burst + math.floor(deciding_ms / interval_ms)
    calls = len(run.outcomes)
    floor_ = 0.95 * min(available, calls) - held
    latencies = sorted((o.received - o.sent) * 1000 for o in run.outcomes)
    figures = {"label": label, "admitted": admitted, "bound": bound, "available": available,
               "floor_95": round(floor_, 1), "calls": calls, "refused": len(run.refused()),
               "elapsed_ms": round(elapsed), "sending_ms": round(sending_ms),
               "deciding_ms": round(deciding_ms),
               "latency_ms_p50": round(latencies[len(latencies) // 2]),
               "latency_ms_p95": round(latencies[int(len(latencies) * 0.95)])}
    print(f"\nbudget concurrency {json.dumps(figures)}")
    if os.environ.get("DEBUG_BUDGET"):
        t0 = min(o.sent for o in run.outcomes)
        for o in sorted(run.outcomes, key=lambda o: o.received):
            print(f"{(o.sent-t0)*1000:8.0f} {(o.received-t0)*1000:8.0f} w{o.worker:02d} {o.status} {o.policy} {o.ratelimit} {o.retry_after}")
    assert admitted <= bound, f"over-admission: {figures}"
    assert admitted >= floor_, f"under-admission: {figures}"
    return figures


# --- fixtures -------------------------------------------------------------------------------


# The fleet's store timeout. With the default (800 ms), 32 concurrent callers queue long enough
# at the single-threaded moto on a small machine that decisions time out and the tools' failure
# policies take over (fail-open admissions on local buckets, fail-closed 503s) -- documented
# behaviour, tested below with a broken store, but not what these tests measure: the shared
# bucket. The run asserts that no decision fell back to a failure policy.
FLEET_BUDGET_TIMEOUT_MS = 10_000


# Lease window of the fleet in lease mode: after a run, waiting this long (plus the store's
# round trip) lets every instance give its unused leased tokens back.
FLEET_LEASE_WINDOW_MS = 1_000
LEASE_MAX_FRACTION = 0.1  # the default


def held_at_most(fleet, burst: int) -> int:
    """Tokens the fleet may hold in leases at once on one bucket (0 in exact mode)."""
    return len(fleet) * int(burst * LEASE_MAX_FRACTION) if fleet_mode(fleet) == "leases" else 0


def fleet_mode(fleet) -> str:
    return fleet[0].env.get("TOLLGATE_LEASES", "on") == "on" and "leases" or "exact"


@pytest.fixture(scope="module", params=["exact", "leases"])
def fleet(request, stack, module_processes) -> Iterator[list[Any]]:
    """Four `tollgate-dev` processes on the session's moto and table (separate instances: own
    caches, own refused-until memory and leases), in exact mode or with quota leases."""
    leases = request.param == "leases"
    instances = module_processes.extra_instances(
        stack, 4,
        TOLLGATE_BUDGET_TIMEOUT_MS=str(FLEET_BUDGET_TIMEOUT_MS),
        TOLLGATE_KEY_CACHE_TTL_SECS="30",  # fewer key reads: the store's capacity goes to buckets
        TOLLGATE_LEASES="on" if leases else "off",
        TOLLGATE_LEASE_WINDOW_MS=str(FLEET_LEASE_WINDOW_MS),
    )
    yield instances
    for p in instances:
        assert p.alive(), f"an instance exited:\n{p.stderr_text()[-2000:]}"
        for text in (p.stdout_text(), p.stderr_text()):
            assert "panicked" not in text, text[-2000:]


def after_lease_windows(read, expected):
    """`read()` once every lease taken during a run has ended and its rest was given back (half
    a window after the window): polled until it equals `expected` or 30 s have passed, then
    returned for the caller to assert."""
    time.sleep(FLEET_LEASE_WINDOW_MS * 1.5 / 1000)
    deadline = time.monotonic() + 30
    while True:
        got = read()
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def failure_policy_lines(fleet, offsets: list[int]) -> list[str]:
    return [line for inst, off in zip(fleet, offsets) for line in inst.stdout_lines_since(off)
            if "budget store unavailable" in line]


@contextmanager
def tool_override(stack, tool: str, *args: str) -> Iterator[None]:
    """Overrides `tool`'s budget for the duration, then puts the previous override back.
    Both changes wait out the instances' policy cache."""
    before = stack.cli("budgets", "show", "tool", tool).json()["override"]
    stack.cli("budgets", "set-tool", tool, *args)
    time.sleep(POLICY_CACHE_TTL_S + 0.3)
    try:
        yield
    finally:
        if before is None:
            stack.cli("budgets", "set-tool", tool, "--clear")
        else:
            stack.cli("budgets", "set-tool", tool, "--per-minute", str(before["per_minute"]),
                      "--burst", str(before["burst"]), "--shards", str(before["shards"]),
                      *(["--fail-open"] if before["fail_open"] else []))
        assert stack.cli("budgets", "show", "tool", tool).json()["override"] == before
        time.sleep(POLICY_CACHE_TTL_S + 0.3)


def forget_tool_bucket(stack, tool: str) -> None:
    """Deletes a tool's (unsharded) bucket item: it starts full at whatever rate is set next."""
    import boto3

    client = boto3.client("dynamodb", endpoint_url=stack.ddb_url, region_name="us-east-1",
                          aws_access_key_id="local", aws_secret_access_key="local")
    client.delete_item(TableName=TABLE, Key={"pk": {"S": f"BUCKET#tool#{tool}#0"}, "sk": {"S": "BUCKET"}})


def agent_status(stack, agent: str) -> dict[str, dict[str, Any]]:
    rows = stack.cli("budgets", "status", "agent", agent).json()
    return {r["policy"]: r for r in rows}


def bucket_tat(stack, item: str, attr: str = "tat") -> int | None:
    """The stored TAT of one bucket (None: not taken yet), read straight from DynamoDB: the
    agent's buckets are attributes of one item (`minute`, `day`, `tool:<tool>`), a tool's (or
    shard's) bucket is the `tat` attribute of its own item."""
    import boto3

    client = boto3.client("dynamodb", endpoint_url=stack.ddb_url, region_name="us-east-1",
                          aws_access_key_id="local", aws_secret_access_key="local")
    found = client.get_item(TableName=TABLE, Key={"pk": {"S": f"BUCKET#{item}"}, "sk": {"S": "BUCKET"}},
                            ConsistentRead=True).get("Item")
    return int(found[attr]["N"]) if found and attr in found else None


# --- 1, 2: concurrency ----------------------------------------------------------------------

AGENT_PER_MINUTE = 120  # burst = per minute for agents: bound = 120 + elapsed / 500 ms
# A per-day budget that never limits these tests but refills so slowly (one call per 86.4 s) that
# `budgets status` tells exactly how many calls were charged to it during a test of a few seconds.
DAY = 1000


def test_agent_bucket_holds_across_instances(stack, fleet) -> None:
    agent = stack.create_agent(unique("conc-agent"), ["customers:read"])
    stack.cli("budgets", "set-agent", agent, "--per-minute", str(AGENT_PER_MINUTE), "--per-day", str(DAY))
    token = stack.create_key(agent)["token"]
    # 4 processes x 2 routes (gateway, the tool's own function), 4 client threads each.
    targets = [(url, token) for inst in fleet for url in (inst.gateway_url, inst.tool_url("lookup_customer"))]

    offsets = [inst.stdout_offset() for inst in fleet]
    run = hammer(targets, "lookup_customer", lambda _: ADA)

    assert_within_bound(run, burst=AGENT_PER_MINUTE, interval_ms=60_000 // AGENT_PER_MINUTE,
                        layer="agent", policy="agent_per_minute", label=f"agent, {fleet_mode(fleet)}",
                        fleet=fleet, offsets=offsets, held=held_at_most(fleet, AGENT_PER_MINUTE))
    # The day bucket, taken with the minute bucket (one item, one write), was charged exactly
    # once per admitted call: a refusal took nothing, and the unused rest of every lease came
    # back when its window ended.
    charged = after_lease_windows(lambda: DAY - agent_status(stack, agent)["agent_per_day"]["remaining"],
                                  len(run.admitted()))
    assert charged == len(run.admitted()), (charged, len(run.admitted()))


TOOL_PER_MINUTE = 600  # interval 100 ms
TOOL_BURST = 20


def test_tool_bucket_shared_by_agents_holds_across_instances(stack, fleet) -> None:
    agents = []
    for _ in range(4):
        agent, key = stack.agent_with_key(["shipments:read"], prefix="conc-tool")
        stack.cli("budgets", "set-agent", agent, "--per-day", str(DAY))
        agents.append((agent, key["token"]))
    with tool_override(stack, "track_shipment", "--per-minute", str(TOOL_PER_MINUTE),
                       "--burst", str(TOOL_BURST), "--fail-open"):
        # Every (instance, route) is used by every agent.
        targets = [(url, token)
                   for inst in fleet
                   for url in (inst.gateway_url, inst.tool_url("track_shipment"))
                   for _, token in agents]
        offsets = [inst.stdout_offset() for inst in fleet]
        run = hammer(targets, "track_shipment", lambda n: {"tracking_number": tracking(n)})

        figures = assert_within_bound(run, burst=TOOL_BURST, interval_ms=60_000 // TOOL_PER_MINUTE,
                                      layer="tool", policy="tool", label=f"tool, {fleet_mode(fleet)}",
                                      fleet=fleet, offsets=offsets, held=held_at_most(fleet, TOOL_BURST))
    # No agent was charged for a call the tool layer refused (refunds): the agents' day buckets
    # together count exactly the admitted calls (once the leases' rest came back).
    def day_used() -> dict[str, int]:
        return {agent: DAY - agent_status(stack, agent)["agent_per_day"]["remaining"] for agent, _ in agents}

    after_lease_windows(lambda: sum(day_used().values()), figures["admitted"])
    used = day_used()
    assert sum(used.values()) == figures["admitted"], (used, figures)
    assert all(n > 0 for n in used.values()), f"the shared bucket starved an agent: {used}"


# --- 3: a tool-layer refusal costs the agent nothing ------------------------------------------


def test_tool_layer_refusal_leaves_agent_budget_untouched(stack, fleet, http) -> None:
    victim = stack.create_agent(unique("victim"), ["shipments:read", "customers:read"])
    stack.cli("budgets", "set-agent", victim, "--per-minute", "5", "--per-day", "50")
    token = stack.create_key(victim)["token"]
    _, other = stack.agent_with_key(["shipments:read"], prefix="drainer")
    urls = [u for inst in fleet for u in (inst.gateway_url, inst.tool_url("track_shipment"))]

    with tool_override(stack, "track_shipment", "--per-minute", "1", "--burst", "1"):
        # Another agent empties the tool bucket (it may hold a few ms of earlier TAT).
        for n in range(20):
            resp = tool_call(http, fleet[0].tool_url("track_shipment"), other["token"], "track_shipment",
                             {"tracking_number": tracking(n)})
            if resp.status_code == 429 and resp.json()["error"]["data"]["retry_after_ms"] > 30_000:
                break
        else:
            pytest.fail("the tool bucket never emptied")
        before = agent_status(stack, victim)
        assert (before["agent_per_minute"]["remaining"], before["agent_per_day"]["remaining"]) == (5, 50)

        # Many refused calls, on every instance and route: the first on each reaches the store
        # (agent buckets taken in parallel with the tool bucket, then refunded); later ones
        # are answered from the instance's refused-until memory.
        for round_ in range(3):
            for i, url in enumerate(urls):
                resp = tool_call(http, url, token, "track_shipment", {"tracking_number": tracking(i)},
                                 id=f"r{round_}-{i}")
                data = assert_rate_limited(resp, id=f"r{round_}-{i}", layer="tool", policy="tool",
                                           limit=1, window_s=60)
                assert data["retry_after_ms"] > 30_000, data
        # The agent buckets were really taken (the items exist) and given back (TAT not ahead).
        now_ms = time.time() * 1000
        for key in ("minute", "day"):
            tat = bucket_tat(stack, f"agent#{victim}", key)
            assert tat is not None, f"bucket {key} never taken: the refund path was not exercised"
            assert tat <= now_ms + 50, (key, tat - now_ms)
        after = agent_status(stack, victim)
        assert (after["agent_per_minute"]["remaining"], after["agent_per_day"]["remaining"]) == (5, 50), after

    # The drained tool bucket must not hold the next tests back (they set other rates).
    forget_tool_bucket(stack, "track_shipment")

    # The agent can still make its whole per-minute quota on another tool.
    for i in range(5):
        url = fleet[i % len(fleet)].gateway_url
        assert rpc_result(tool_call(http, url, token, "lookup_customer", ADA, id=i), id=i)["isError"] is False
    assert_rate_limited(tool_call(http, stack.gateway_url, token, "lookup_customer", ADA, id="six"),
                        id="six", layer="agent", policy="agent_per_minute", limit=5, window_s=60)


# --- 4: per-day ----------------------------------------------------------------------------


def test_agent_per_day_budget_is_enforced(stack, http) -> None:
    agent = stack.create_agent(unique("daily"), ["customers:read"])
    stack.cli("budgets", "set-agent", agent, "--per-minute", "1000", "--per-day", "3")
    token = stack.create_key(agent)["token"]

    for i in range(3):
        resp = tool_call(http, stack.gateway_url, token, "lookup_customer", ADA, id=i)
        assert rpc_result(resp, id=i)["isError"] is False
        policy = resp.headers.get("ratelimit-policy", "")
        assert '"agent_per_minute";q=1000;w=60' in policy and '"agent_per_day";q=3;w=86400' in policy, policy
        assert resp.headers.get("ratelimit", "").startswith(f'"agent_per_day";r={2 - i};t='), resp.headers
    refused = tool_call(http, stack.gateway_url, token, "lookup_customer", ADA, id="4th")
    data = assert_rate_limited(refused, id="4th", layer="agent", policy="agent_per_day", limit=3, window_s=86_400)
    interval = 86_400_000 // 3
    assert interval - 60_000 < data["retry_after_ms"] <= interval, data
    assert int(refused.headers["retry-after"]) == math.ceil(data["retry_after_ms"] / 1000)
    # The per-minute bucket taken alongside was refunded; the day bucket is empty.
    status = agent_status(stack, agent)
    assert status["agent_per_day"]["remaining"] == 0, status
    assert status["agent_per_minute"]["remaining"] >= 997, status


# --- 5: restart ------------------------------------------------------------------------------


def test_restart_does_not_reset_budgets(stack, processes, http) -> None:
    agent = stack.create_agent(unique("restart"), ["customers:read"])
    stack.cli("budgets", "set-agent", agent, "--per-minute", "3", "--per-day", "1000")
    token = stack.create_key(agent)["token"]

    first = processes.extra_instance(stack)
    for i in range(3):
        assert rpc_result(tool_call(http, first.gateway_url, token, "lookup_customer", ADA, id=i), id=i)["isError"] is False
    assert_rate_limited(tool_call(http, first.gateway_url, token, "lookup_customer", ADA, id="over"),
                        id="over", layer="agent", policy="agent_per_minute", limit=3, window_s=60)
    first.kill()

    second = processes.extra_instance(stack)  # a new process: no memory, no caches
    offset = second.stdout_offset()
    for route in (second.gateway_url, second.tool_url("lookup_customer")):
        data = assert_rate_limited(tool_call(http, route, token, "lookup_customer", ADA, id="again"),
                                   id="again", layer="agent", policy="agent_per_minute", limit=3, window_s=60)
        assert 1 <= data["retry_after_ms"] <= 20_000, data
    assert agent_status(stack, agent)["agent_per_minute"]["remaining"] == 0
    # The refusal came from the store, not a memory the new process could not have.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not second.stdout_lines_since(offset):
        time.sleep(0.05)
    assert any('"rate_limited"' in line for line in second.stdout_lines_since(offset))


# --- 6: Retry-After honoured ------------------------------------------------------------------


def test_call_after_retry_after_succeeds(stack, http) -> None:
    agent = stack.create_agent(unique("retry"), ["customers:read"])
    stack.cli("budgets", "set-agent", agent, "--per-minute", "30")  # one call per 2 s, burst 30
    token = stack.create_key(agent)["token"]
    url = stack.tool_url("lookup_customer")

    for n in range(60):
        resp = tool_call(http, url, token, "lookup_customer", ADA, id=n)
        if resp.status_code == 429:
            break
        assert rpc_result(resp, id=n)["isError"] is False
    else:
        pytest.fail("the per-minute budget never ran out")
    assert_rate_limited(resp, id=n, layer="agent", policy="agent_per_minute", limit=30, window_s=60)
    # Retrying at once is refused again, with the wait that is left.
    again = tool_call(http, url, token, "lookup_customer", ADA, id="again")
    data = assert_rate_limited(again, id="again", layer="agent", policy="agent_per_minute")
    assert data["retry_after_ms"] <= 2_000, data
    time.sleep(int(again.headers["retry-after"]))
    ok = tool_call(http, url, token, "lookup_customer", ADA, id="after")
    assert rpc_result(ok, id="after")["isError"] is False
    assert ok.headers.get("ratelimit", "").startswith('"agent_per_minute";r=0;t='), ok.headers


# --- 7: store down or slow ---------------------------------------------------------------------

BUDGET_TIMEOUT_MS = 800  # the default, set explicitly
ANSWER_MARGIN_S = 0.7  # response, audit and scheduling on a busy machine


def fragile_stack(stack, processes, policy_ttl_s: int):
    """A private stack (own moto, own tollgate-dev, own carrier API) with the tools' built-in
    budgets (open_ticket fails closed, track_shipment fails open) and a 30 s key cache, and an
    agent whose key (and, for `policy_ttl_s`, the tools' policies) are cached by one call to each
    tool -- so the budget step is what meets the outage."""
    private, moto, dev = processes.private_stack(
        stack.env,
        TOLLGATE_KEY_CACHE_TTL_SECS="30",
        TOLLGATE_POLICY_CACHE_TTL_SECS=str(policy_ttl_s),
        TOLLGATE_BUDGET_TIMEOUT_MS=str(BUDGET_TIMEOUT_MS),
    )
    _, key = private.agent_with_key(["tickets:write", "shipments:read"], prefix="fragile")
    with httpx2.Client(timeout=30, trust_env=False) as http:
        assert rpc_result(tool_call(http, private.gateway_url, key["token"], "open_ticket", TICKET))["isError"] is False
        assert rpc_result(tool_call(http, private.gateway_url, key["token"], "track_shipment",
                                    {"tracking_number": tracking(1)}))["isError"] is False
    return private, moto, dev, key["token"]


@pytest.fixture
def fragile(stack, processes):
    """A fragile stack whose tool policies stay cached through the test."""
    return fragile_stack(stack, processes, policy_ttl_s=60)


def timed(fn):
    t0 = time.monotonic()
    value = fn()
    return value, time.monotonic() - t0


def assert_no_panic(dev) -> None:
    assert dev.alive(), dev.stderr_text()[-2000:]
    for text in (dev.stdout_text(), dev.stderr_text()):
        assert "panicked" not in text, text[-3000:]


def log_lines_since(dev, offset: int) -> list[dict[str, Any]]:
    out = []
    for line in dev.stdout_lines_since(offset):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def check_failure_policies(private, dev, token: str, routes=("gateway", "tool")) -> list[tuple[str, float]]:
    """With the store unusable: open_ticket (fail closed) answers 503 -31050 + Retry-After;
    track_shipment (fail open) is admitted on the local bucket, runs (the carrier is up), and
    the instance logs a fail-open warning for each. Returns how long each call took."""
    def url(route: str, tool: str) -> str:
        return private.gateway_url if route == "gateway" else private.tool_url(tool)

    timings = []
    offset = dev.stdout_offset()
    with httpx2.Client(timeout=30, trust_env=False) as http:
        for route in routes:
            resp, took = timed(lambda: tool_call(http, url(route, "open_ticket"), token, "open_ticket",
                                                 TICKET, id="closed"))
            timings.append((f"open_ticket via {route}", took))
            err = rpc_error(resp, 503, -31050, id="closed")
            assert err["data"]["retry"] == "after_retry_after", err
            assert resp.headers.get("retry-after", "").isdigit() and int(resp.headers["retry-after"]) >= 1, resp.headers
        for n, route in enumerate(routes):
            resp, took = timed(lambda: tool_call(http, url(route, "track_shipment"), token, "track_shipment",
                                                 {"tracking_number": tracking(100 + n)}, id="open"))
            timings.append((f"track_shipment via {route}", took))
            result = rpc_result(resp, id="open")
            assert result["isError"] is False, result
            assert result["structuredContent"]["status"] == "in_transit", result
            assert "ratelimit-policy" in resp.headers, resp.headers
    time.sleep(0.2)
    records = log_lines_since(dev, offset)
    text = [json.dumps(r) for r in records]
    opened = [t for t in text if "failing open" in t]
    closed = [t for t in text if "failing closed" in t]
    assert len(opened) == len(routes) and len(closed) == len(routes), text
    assert all('"WARN"' in t for t in opened + closed), opened + closed
    audits = [r for r in records if r.get("kind") == "audit"]
    statuses = sorted((a.get("tool"), a.get("status"), a.get("reason")) for a in audits)
    assert statuses == sorted([("open_ticket", "system_error", "budget_store_unavailable")] * len(routes)
                              + [("track_shipment", "success", "budget_fail_open")] * len(routes)), statuses
    print(f"\nstore failure timings: {[(w, round(t, 3)) for w, t in timings]}")
    return timings


def assert_answered_within_timeout(timings: list[tuple[str, float]]) -> None:
    limit = BUDGET_TIMEOUT_MS / 1000 + ANSWER_MARGIN_S
    slow = [(w, round(t, 3)) for w, t in timings if t >= limit]
    assert not slow, f"answers slower than the budget timeout ({BUDGET_TIMEOUT_MS} ms) + {ANSWER_MARGIN_S}s: {slow}"


def test_store_down_each_policy_as_documented(fragile) -> None:
    private, moto, dev, token = fragile
    moto.kill()
    moto.wait(timeout=5)
    assert_answered_within_timeout(check_failure_policies(private, dev, token))
    assert_no_panic(dev)


def test_store_slow_answers_within_the_budget_timeout(fragile) -> None:
    private, moto, dev, token = fragile
    os.kill(moto.pid, signal.SIGSTOP)
    try:
        timings = check_failure_policies(private, dev, token)
    finally:
        os.kill(moto.pid, signal.SIGCONT)
    assert_answered_within_timeout(timings)
    # Recovered: the store answers again and decides the fail-open tool once more.
    offset = dev.stdout_offset()
    with httpx2.Client(timeout=30, trust_env=False) as http:
        resp = tool_call(http, private.gateway_url, token, "track_shipment", {"tracking_number": tracking(7)})
        assert rpc_result(resp)["isError"] is False
    time.sleep(0.2)
    assert not [r for r in log_lines_since(dev, offset) if "budget store unavailable" in json.dumps(r)]
    assert_no_panic(dev)


def test_store_down_with_expired_policy_cache(stack, processes) -> None:
    """The outage outlasts the instance's tool-policy cache, so the decision first tries to read
    the tool's override from the dead store. TOLLGATE_BUDGET_TIMEOUT_MS is documented as the
    longest a budget decision waits on the store before the failure policy applies."""
    private, moto, dev, token = fragile_stack(stack, processes, policy_ttl_s=1)
    moto.kill()
    moto.wait(timeout=5)
    time.sleep(1.2)  # both tools' cached policies expire
    timings = check_failure_policies(private, dev, token, routes=("gateway",))
    assert_no_panic(dev)
    # One deadline per decision: the policy read and the bucket updates share it.
    assert_answered_within_timeout(timings)
