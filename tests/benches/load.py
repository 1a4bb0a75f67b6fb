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
   stack as `make dev` runs it), every budget generous: throughput, 503s, 429s, latency;
4. `--hot`: 64 closed-loop callers (16 per instance over 4 instances) on one tool bucket for
   `--hot-secs` s: admitted within the GCRA bound and at least `--hot-floor` (0.95) of it;
5. `--flood`: `--flood-rate` distinct random bearer tokens per second for `--flood-secs` s on
   one instance (half with a fresh random key id, half reusing a few key ids with wrong
   secrets; `--flood-shape`: today's checksummed key shape by default), while a legitimate agent
   calls at 5 calls/s: no key read on the store for checksummed or foreign tokens, at most one
   per distinct key id for legacy-shaped ones, every legitimate call admitted.

Usage: python tests/benches/load.py [--modes exact,leases] [--duration 30] [--rate 20]
       [--concurrency 16,32,64] [--concurrency-secs 10] [--hot] [--hot-secs 30]
       [--flood] [--flood-rate 1000] [--flood-secs 10] [--flood-shape checked|legacy|foreign]
       [--only-new] [--check] [--json FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
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


def hot_bucket(mode: str, secs: float, callers_per_instance: int = 16, per_minute: int = 600, burst: int = 20,
               budget_timeout_ms: int = 10_000) -> dict:
    """64 closed-loop callers (16 per instance, 4 instances) on one tool bucket. The store gets
    `budget_timeout_ms` per decision (one single-threaded moto behind 64 callers is slower than
    DynamoDB; a 503 would be the fail-closed path, measured in `make chaos`). The bound counts
    from the first answer (see README "Holding on a loaded machine")."""
    stack = stackrun.Stack(instances=INSTANCES, proxy=True,
                           env_extra={**stackrun.lease_env(mode), "TOLLGATE_BUDGET_TIMEOUT_MS": str(budget_timeout_ms)})
    with stack:
        stack.cli("budgets", "set-tool", "lookup_customer", "--per-minute", str(per_minute), "--burst", str(burst))
        token = stack.agent("load-hot", GENEROUS, GENEROUS)
        time.sleep(1.5)
        callers = [stackrun.Caller(inst, token, "direct") for inst in stack.live for _ in range(callers_per_instance)]
        stack.reset_counts()
        res = Results()
        answers: list[float] = []
        lock = threading.Lock()
        stop = time.monotonic() + secs

        def run(c: stackrun.Caller) -> None:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                sent = time.monotonic()
                status, _ = c.call()
                with lock:
                    answers.append(time.monotonic())
                res.add(sent, status, (time.perf_counter() - t0) * 1e3)

        threads = [threading.Thread(target=run, args=(c,)) for c in callers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counts = stack.counts()
    first_answer = min(answers) if answers else 0.0
    interval_ms = 60_000 / per_minute
    bound = burst + int((res.last - (res.first or res.last)) * 1000 // interval_ms)
    floor_tokens = burst + int(max(0.0, res.last - first_answer) * 1000 // interval_ms)
    admitted = res.n(200)
    w, r = writes_reads(counts)
    return {
        "scenario": f"{len(callers)} callers, one bucket", "mode": mode, "calls": sum(res.status.values()),
        "admitted": admitted, "bound": bound, "floor_basis": floor_tokens,
        "ratio": admitted / floor_tokens if floor_tokens else 0.0, "over": max(0, admitted - bound),
        "503": res.n(503), "429": res.n(429), "writes_per_call": w / max(1, sum(res.status.values())),
        "p50_ms": pct(res.latency, 0.5), "p99_ms": pct(res.latency, 0.99), "status": res.status,
    }


KEY_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def random_token(key_id: str | None = None, shape: str = "checked") -> str:
    """A random bearer token. `checked`: today's key shape (`tg_<id>_<secret><checksum>`, 6
    random check characters: what a forger or a scanner sends); `legacy`: the shape of keys
    issued before the checksum (no check characters: each fresh key id costs a store read while
    legacy keys are accepted); `foreign`: not a tollgate key at all (the HTTP path alone)."""
    kid = key_id or "".join(random.choice(KEY_ID_ALPHABET) for _ in range(12))
    secret = "".join(random.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for _ in range(43))
    if shape == "foreign":
        return f"x{kid}.{secret}"
    if shape == "checked":
        return f"tg_{kid}_{secret}" + "".join(random.choice(KEY_ID_ALPHABET) for _ in range(6))
    return f"tg_{kid}_{secret}"


def key_reads(counts: dict) -> int:
    return sum(c["requests"] for k, c in counts["ops"].items() if k == f"DynamoDB_20120810.GetItem {stackrun.TABLE}")


def token_flood(mode: str, rate: float, secs: float, senders: int = 16, legit_rate: float = 5.0,
                shape: str = "checked") -> dict:
    """`rate` distinct random tokens per second on one instance while a legitimate agent calls."""
    with stack_for(mode, 1) as stack:
        stack.cli("budgets", "set-tool", "lookup_customer", "--per-minute", str(GENEROUS), "--burst", str(GENEROUS))
        token = stack.agent("load-legit", GENEROUS, GENEROUS)
        inst = stack.live[0]
        legit = stackrun.Caller(inst, token, "direct")
        legit.call()  # its key is cached, as a working agent's is
        time.sleep(0.5)
        shared_ids = ["".join(random.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(12)) for _ in range(8)]
        n = int(rate * secs)
        tokens = [random_token(None if i % 2 == 0 else shared_ids[i % len(shared_ids)], shape) for i in range(n)]
        distinct_ids = len({t[3:15] for t in tokens}) if shape != "foreign" else 0
        stack.reset_counts()
        flood = Results()
        legit_res = Results()
        start = time.monotonic() + 0.2
        body = stackrun.call_body(1)

        def flooder(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=60)
            for i in range(k, n, senders):
                due = start + i / rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                t0 = time.perf_counter()
                conn.request("POST", inst.path("direct"), body=body, headers=stackrun.headers(tokens[i]))
                r = conn.getresponse()
                r.read()
                flood.add(time.monotonic(), r.status, (time.perf_counter() - t0) * 1e3)
            conn.close()

        def legit_loop() -> None:
            k = 0
            while True:
                due = start + k / legit_rate
                if due - start >= secs:
                    return
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                t0 = time.perf_counter()
                status, raw = legit.call()
                legit_res.add(time.monotonic(), 200 if stackrun.ok_result(status, raw) else status, (time.perf_counter() - t0) * 1e3)
                k += 1

        threads = [threading.Thread(target=flooder, args=(k,)) for k in range(senders)]
        threads.append(threading.Thread(target=legit_loop))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        time.sleep(0.5)
        reads = key_reads(stack.counts())
    legit_calls = sum(legit_res.status.values())
    return {
        "scenario": "token flood", "mode": mode, "shape": shape, "tokens": n, "achieved_per_s": n / wall,
        "distinct_key_ids": distinct_ids, "key_reads": reads, "flood_401": flood.n(401),
        "flood_other": sum(v for k, v in flood.status.items() if k != 401),
        "legit_calls": legit_calls, "legit_ok": legit_res.n(200), "legit_p50_ms": pct(legit_res.latency, 0.5),
        "legit_p99_ms": pct(legit_res.latency, 0.99), "flood_p50_ms": pct(flood.latency, 0.5),
    }


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
    hot = [r for r in rows if "floor_basis" in r]
    if hot:
        lines += ["", "| scenario | mode | calls | admitted | GCRA bound | admitted / tokens made claimable | over | 503 | 429 | writes / call | p50 | p99 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in hot:
            lines.append(f"| {r['scenario']} | {r['mode']} | {r['calls']} | {r['admitted']} | {r['bound']} | "
                         f"{100 * r['ratio']:.1f} % ({r['floor_basis']}) | {r['over']} | {r['503']} | {r['429']} | "
                         f"{r['writes_per_call']:.2f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms |")
    fl = [r for r in rows if r.get("scenario") == "token flood"]
    if fl:
        lines += ["", "| scenario | mode | token shape | random tokens | achieved tokens/s | distinct key ids | key reads | flood answers | legitimate calls ok | legitimate p50 / p99 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in fl:
            lines.append(f"| {r['scenario']} | {r['mode']} | {r['shape']} | {r['tokens']} | {r['achieved_per_s']:.0f} | {r['distinct_key_ids']} | "
                         f"{r['key_reads']} | 401: {r['flood_401']}, other: {r['flood_other']} | {r['legit_ok']} / {r['legit_calls']} | "
                         f"{r['legit_p50_ms']:.1f} / {r['legit_p99_ms']:.1f} ms |")
    return "\n".join(lines)


def check(rows: list[dict], floor: float) -> list[str]:
    """The campaign's bounds (`--check`): exits non-zero when one fails."""
    bad = []
    for r in rows:
        if "floor_basis" in r:
            if r["over"]:
                bad.append(f"{r['scenario']} {r['mode']}: {r['admitted']} admitted over the bound {r['bound']}")
            if r["ratio"] < floor:
                bad.append(f"{r['scenario']} {r['mode']}: {r['admitted']} admitted, under {floor:.0%} of {r['floor_basis']}")
        if r.get("scenario") == "token flood":
            # A legacy-shaped token may cost one read per key id; any other shape none (the
            # checksum refuses a random key offline).
            allowed = r["distinct_key_ids"] if r["shape"] == "legacy" else 0
            if r["key_reads"] > allowed:
                bad.append(f"token flood {r['mode']} {r['shape']}: {r['key_reads']} key reads for {r['distinct_key_ids']} key ids (allowed {allowed})")
            if r["legit_ok"] != r["legit_calls"] or r["flood_other"]:
                bad.append(f"token flood {r['mode']}: legitimate {r['legit_ok']}/{r['legit_calls']}, flood non-401 {r['flood_other']}")
    return bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="exact,leases")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--concurrency", default="16,32,64")
    ap.add_argument("--concurrency-secs", type=float, default=10.0)
    ap.add_argument("--hot", action="store_true", help="64 callers on one bucket over 4 instances")
    ap.add_argument("--hot-secs", type=float, default=30.0)
    ap.add_argument("--hot-floor", type=float, default=0.95)
    ap.add_argument("--flood", action="store_true", help="distinct random bearer tokens")
    ap.add_argument("--flood-rate", type=float, default=1000.0)
    ap.add_argument("--flood-secs", type=float, default=10.0)
    ap.add_argument("--flood-shape", default="checked", choices=["checked", "legacy", "foreign"],
                    help="random tokens of today's key shape (refused offline by the checksum), of the "
                         "legacy shape (a store read per fresh key id), or not keys at all")
    ap.add_argument("--only-new", action="store_true", help="only --hot / --flood")
    ap.add_argument("--check", action="store_true", help="exit 1 when a bound fails")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows: list[dict] = []
    for mode in args.modes.split(","):
        print(f"mode: {mode}", file=sys.stderr)
        if args.hot:
            r = hot_bucket(mode, args.hot_secs)
            print(f"  {json.dumps(r)}", file=sys.stderr)
            rows.append(r)
        if args.flood:
            r = token_flood(mode, args.flood_rate, args.flood_secs, shape=args.flood_shape)
            print(f"  {json.dumps(r)}", file=sys.stderr)
            rows.append(r)
        if args.only_new:
            continue
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
    if args.check:
        bad = check(rows, args.hot_floor)
        for b in bad:
            print(f"FAILED: {b}")
        checks = sum(1 for r in rows if "floor_basis" in r or r.get("scenario") == "token flood")
        print(f"load: {checks - len(bad)} passed, {len(bad)} failed")
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
