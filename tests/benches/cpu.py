#!/usr/bin/env python3
"""CPU per warm call, as a deployed function pays it: the whole `tollgate-dev` process's CPU
time (every thread: runtime workers, blocking pool, span exporters) over N sequential
`tools/call lookup_customer`, read from /proc/<pid>/stat (utime + stime) before and after.
The store (moto, a separate process) is not counted.

Usage: python tests/benches/cpu.py [--calls 300] [--route direct|gateway] [--store pooled|direct]
                                   [--workers 1]
  --workers: the process's Tokio workers (TOKIO_WORKER_THREADS), 1 as a classic Lambda function
             runs them (`lambda::runtime`); 0 leaves Tokio's default, one per CPU.
  --store pooled: through the keep-alive proxy (the SDK pool keeps its connections, as against
                  DynamoDB's endpoint); direct: straight to moto, which closes every connection.
  --hold: keep the stack up after the run (for a profiler), until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stackrun  # noqa: E402


def measure(inst: stackrun.Instance, token: str, route: str, calls: int) -> dict[str, float]:
    caller = stackrun.Caller(inst, token, route)
    for _ in range(30):  # warm: key cached, policies cached, hashing key loaded, pool filled
        status, body = caller.call()
        assert stackrun.ok_result(status, body), (status, body[:300])
    time.sleep(0.2)
    tick = os.sysconf("SC_CLK_TCK")
    (u0, s0), t0 = inst.cpu_split(), time.perf_counter()
    for _ in range(calls):
        status, body = caller.call()
        assert stackrun.ok_result(status, body), (status, body[:300])
    wall = time.perf_counter() - t0
    time.sleep(0.2)  # spans and logs written after each response are this call's cost too
    u1, s1 = inst.cpu_split()
    caller.close()
    cpu_s = (u1 - u0 + s1 - s0) / tick
    return {"cpu_us_per_call": cpu_s / calls * 1e6, "wall_ms_per_call": wall / calls * 1e3,
            "user_us_per_call": (u1 - u0) / tick / calls * 1e6, "system_us_per_call": (s1 - s0) / tick / calls * 1e6,
            "resolution_us": 1e6 / tick / calls}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--route", choices=("direct", "gateway"), default="direct")
    ap.add_argument("--store", choices=("pooled", "direct"), default="pooled")
    ap.add_argument("--mode", choices=("exact", "leases"), default="leases")
    ap.add_argument("--workers", type=int, default=1,
                    help="TOKIO_WORKER_THREADS of the measured process: 1 as a classic Lambda function runs (0: Tokio's default, one per CPU)")
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--perf", help="record a perf profile (call graphs) of the measured calls into this file")
    args = ap.parse_args()
    env = stackrun.lease_env(args.mode)
    if args.workers:
        env["TOKIO_WORKER_THREADS"] = str(args.workers)
    with stackrun.Stack(instances=1, proxy=args.store == "pooled", env_extra=env) as stack:
        inst = stack.live[0]
        if args.perf:
            measure(inst, stack.token, args.route, 30)
            perf = subprocess.Popen(["perf", "record", "-F", "4000", "--call-graph", "dwarf,16384", "-q",
                                     "-p", str(inst.pid), "-o", args.perf], stdout=subprocess.DEVNULL)
            time.sleep(1)
        r = measure(inst, stack.token, args.route, args.calls)
        if args.perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        print(f"mode: {args.mode}; route: {args.route}; store connections: {args.store}; "
              f"runtime workers: {args.workers or 'one per CPU'}; {args.calls} calls", file=sys.stderr)
        print(f"  whole-process CPU per warm call: {r['cpu_us_per_call']:.0f} us "
              f"(user {r['user_us_per_call']:.0f}, system {r['system_us_per_call']:.0f}; +-{r['resolution_us']:.0f} us tick resolution); wall {r['wall_ms_per_call']:.2f} ms per call", file=sys.stderr)
        if stack.proxy_url:
            c = stack.counts()
            print(f"  store connections opened: {c['connections']}", file=sys.stderr)
        if args.hold:
            print(f"  holding: pid {inst.pid}, port {inst.port}, token {stack.token}", file=sys.stderr)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
