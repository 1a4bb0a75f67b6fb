#!/usr/bin/env python3
"""Budget figures under load (`make load`), in exact mode and with leases, against release
`tollgate-dev` instances sharing one single-threaded moto server through the counting proxy
(tests/benches/store_proxy.py):

1. one agent: a steady RATE calls/s spread over 4 instances for DURATION s, the agent's
   per-minute budget above that rate (every call fits): store writes and reads per admitted
   call, admitted vs what was offered and the GCRA bound, under-admission, p50/p99 latency;
2. a shared tool bucket hit by 4 agents (each round-robin over the 4 instances) offering twice
   the tool's rate: admitted vs the bound burst + elapsed / interval, over- and
   under-admission, writes per admitted call, latency;
3. calls/s with 16, 32 and 64 concurrent callers on one instance straight to moto (the local
   stack as `make dev` runs it), every budget generous: throughput, 503s, 429s, latency.

Usage: python tests/benches/load.py [--modes exact,leases] [--duration 30] [--rate 20]
       [--concurrency 16,32,64] [--concurrency-secs 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import stackrun  # noqa: E402

INSTANCES = 4
GENEROUS = 1_000_000


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def writes_reads(counts: dict, table: str = stackrun.TABLE) -> tuple[int, int]:
    """Write and read request units on `table` (the tollgate table: budgets, keys, policies;
    the tool's own reads of its app table are not the budget's)."""
    w = r = 0
    for key, c in counts["ops"].items():
        target, _, tbl = key.partition(" ")
        if tbl != table:
            continue
        op = target.rpartition(".")[2]
        if op in ("UpdateItem", "PutItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"):
            w += c["items"] * (2 if op == "TransactWriteItems" else 1)
        elif op in ("GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"):
            r += c["items"]
    return w, r


class Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: dict[int, int] = {}
        self.latency: list[float] = []
        self.first: float | None = None
        self.last: float = 0.0

    def add(self, sent: float, status: int, ms: float) -> None:
        with self.lock:
            self.status[status] = self.status.get(status, 0) + 1
            self.latency.append(ms)
            self.first = sent if self.first is None else min(self.first, sent)
            self.last = max(self.last, sent)

    def n(self, status: int) -> int:
        return self.status.get(status, 0)


def steady(callers: list[stackrun.Caller], rate: float, duration: float, res: Results) -> None:
    """Offers `rate` calls/s in total, the callers taking turns on one schedule each (callers
    are spread over instances and agents); a caller behind its schedule does not catch up."""
    per = rate / len(callers)
    start = time.monotonic() + 0.2

    def run(i: int, c: stackrun.Caller) -> None:
        k = 0
        while True:
            due = start + (k + i / len(callers)) / per
            if due - start >= duration:
                return
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            elif now - due > 1 / per:  # fell behind by a whole period: skip, keep the rate
                k += 1
                continue
            t0 = time.perf_counter()
            status, _ = c.call()
            res.add(time.monotonic(), status, (time.perf_counter() - t0) * 1e3)
            k += 1

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def closed_loop(callers: list[stackrun.Caller], duration: float, res: Results) -> None:
    stop = time.monotonic() + duration

    def run(c: stackrun.Caller) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            status, _ = c.call()
            res.add(time.monotonic(), status, (time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=run, args=(c,)) for c in callers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def stack_for(mode: str, instances: int, proxy: bool = True) -> stackrun.Stack:
    # Every scenario sets its budgets before its first call: the default policy cache applies.
    return stackrun.Stack(instances=instances, proxy=proxy, env_extra=stackrun.lease_env(mode))


def run_steady(stack: stackrun.Stack, callers: list[stackrun.Caller], rate: float, duration: float) -> tuple[Results, dict]:
    stack.reset_counts()
    res = Results()
    steady(callers, rate, duration, res)
    time.sleep(0.5)
    return res, stack.counts()


def summary(scenario: str, mode: str, res: Results, counts: dict, burst: int, per_minute: int) -> dict:
    """Admitted vs the GCRA bound (burst + elapsed / interval) of the binding bucket."""
    offered = sum(res.status.values())
    admitted = res.n(200)
    elapsed_ms = (res.last - (res.first or res.last)) * 1000
    bound = burst + int(elapsed_ms // (60_000 / per_minute))
    expected = min(offered, bound)
    w, r = writes_reads(counts)
    return {
        "scenario": scenario, "mode": mode, "offered": offered, "admitted": admitted,
        "refused_429": res.n(429), "bound": bound, "expected": expected, "over": max(0, admitted - bound),
        "under_pct": 100 * max(0, expected - admitted) / expected if expected else 0.0,
        "writes_per_admitted": w / admitted if admitted else 0.0,
        "reads_per_admitted": r / admitted if admitted else 0.0,
        "p50_ms": pct(res.latency, 0.5), "p99_ms": pct(res.latency, 0.99), "status": res.status,
    }


def one_agent(mode: str, rate: float, duration: float) -> dict:
    per_minute = int(rate * 60 * 1.25)  # 20/s offered -> 1500/min: every call fits
    with stack_for(mode, INSTANCES) as stack:
        stack.cli("budgets", "set-tool", "lookup_customer", "--per-minute", str(GENEROUS), "--burst", str(GENEROUS))
        token = stack.agent("load-one", per_minute, GENEROUS)
        time.sleep(1.5)
        res, counts = run_steady(stack, [stackrun.Caller(inst, token, "direct") for inst in stack.live], rate, duration)
    # An agent's per-minute burst is its per-minute budget.
    return summary("one agent", mode, res, counts, per_minute, per_minute)


def shared_tool(mode: str, rate: float, duration: float) -> dict:
    tool_per_minute, burst = int(rate * 60 / 2), int(rate)  # half of what is offered
    with stack_for(mode, INSTANCES) as stack:
        stack.cli("budgets", "set-tool", "lookup_customer", "--per-minute", str(tool_per_minute), "--burst", str(burst))
        tokens = [stack.agent(f"load-shared-{i}", GENEROUS, GENEROUS) for i in range(4)]
        time.sleep(1.5)
        callers = [stackrun.Caller(inst, tok, "direct") for tok in tokens for inst in stack.live]
        res, counts = run_steady(stack, callers, rate, duration)
    return summary("shared tool", mode, res, counts, burst, tool_per_minute)


def concurrency(mode: str, callers_n: list[int], secs: float) -> list[dict]:
    out = []
    # Straight to moto, as `make dev` runs: the counting proxy would add its own queueing.
    with stack_for(mode, 1, proxy=False) as stack:
        stack.cli("budgets", "set-tool", "lookup_customer", "--per-minute", str(GENEROUS), "--burst", str(GENEROUS))
        token = stack.agent("load-conc", GENEROUS, GENEROUS)
        time.sleep(1.5)
        inst = stack.live[0]
        for n in callers_n:
            callers = [stackrun.Caller(inst, token, "direct") for _ in range(n)]
            res = Results()
            t0 = time.monotonic()
            closed_loop(callers, secs, res)
            wall = time.monotonic() - t0
            for c in callers:
                c.close()
            out.append({
                "scenario": f"{n} callers", "mode": mode, "calls": sum(res.status.values()),
                "calls_per_s": res.n(200) / wall, "503": res.n(503), "429": res.n(429),
                "other": sum(v for k, v in res.status.items() if k not in (200, 429, 503)),
                "p50_ms": pct(res.latency, 0.5), "p99_ms": pct(res.latency, 0.99),
            })
            time.sleep(1.0)
    return out


def report(rows: list[dict]) -> str:
    lines = [
        "| scenario | mode | offered | admitted | GCRA bound | over | under | writes / admitted | reads / admitted | p50 | p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "offered" in r:
            lines.append(
                f"| {r['scenario']} | {r['mode']} | {r['offered']} | {r['admitted']} | {r['bound']} | {r['over']} | "
                f"{r['under_pct']:.1f} % | {r['writes_per_admitted']:.2f} | {r['reads_per_admitted']:.2f} | "
                f"{r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms |")
    lines += ["", "| callers | mode | calls | admitted calls/s | 503 | 429 | p50 | p99 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "calls_per_s" in r:
            lines.append(f"| {r['scenario']} | {r['mode']} | {r['calls']} | {r['calls_per_s']:.0f} | {r['503']} | {r['429']} | "
                         f"{r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="exact,leases")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--concurrency", default="16,32,64")
    ap.add_argument("--concurrency-secs", type=float, default=10.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows: list[dict] = []
    for mode in args.modes.split(","):
        print(f"mode: {mode}", file=sys.stderr)
        for scenario in (one_agent, shared_tool):
            r = scenario(mode, args.rate, args.duration)
            print(f"  {json.dumps(r)}", file=sys.stderr)
            rows.append(r)
        conc = [int(n) for n in args.concurrency.split(",") if n]
        for r in concurrency(mode, conc, args.concurrency_secs) if conc else []:
            print(f"  {json.dumps(r)}", file=sys.stderr)
            rows.append(r)
    print(report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
