#!/usr/bin/env python3
"""One function process on Lambda Managed Instances' terms (`make bench`): calls/s and CPU per
call of the release `lookup_customer` binary at 1, 8, 32 and 64 concurrent invocations, and the
cost per million calls of a steady load on managed instances next to classic Lambda.

The binary runs under a Runtime API on loopback (this file) with `AWS_LAMBDA_MAX_CONCURRENCY`
set to the level (1: the classic one-at-a-time loop), against the bench stack's moto through
the counting proxy (tests/benches/stackrun.py; budgets in lease mode, so a warm call makes one
store request, the tool's own read). Each level: a fresh process, 100 warm-up calls, then N
measured calls handed out as fast as its workers poll. Measured: wall time of the N calls
(calls/s), the process's CPU time over them (/proc/<pid>/stat utime + stime, every thread),
and each call's duration from hand-out to response at the Runtime API (what Lambda bills on
classic Lambda). moto is single-threaded and serves every store request: calls/s is bounded by
it, so the figure here is a floor of what the process does; CPU per call is the process's own.

Cost per million calls (prices and assumptions in tests/benches/prices.toml):
- classic: requests + duration (the mean measured duration at 1, billed per ms, at the memory
  infra/tools.toml deploys the tool with);
- managed instances: requests + instance-hours (on-demand) + the management fee on them, for
  the instances a steady load needs: enough vCPUs for `load x CPU per call` at the capacity
  provider's target utilisation, and never fewer than the provider's minimum instances.

Usage: python tests/benches/concurrency.py [--calls 1000] [--levels 1,8,32,64] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import stackrun  # noqa: E402

FUNCTION_BIN = Path(os.environ.get("TOLLGATE_FUNCTION_BIN", stackrun.RELEASE / "lookup_customer"))
PREFIX = "/2018-06-01/runtime"
WARM = 100
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


class FeedingRuntimeApi:
    """Hands each queued event to the next `/next` poll, at once; records hand-out and response
    times by request id."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.handed: dict[str, float] = {}
        self.answered: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Buffered: each answer's head and body leave in one write, as Lambda's Runtime API
            # (a Go net/http server) sends a small answer; the client then keeps the connection.
            wbufsize = 1 << 16

            def do_GET(self) -> None:  # noqa: N802
                request_id, body = api.events.get()
                with api._lock:
                    api.handed[request_id] = time.monotonic()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30_000))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                                 "arn:aws:lambda:us-east-1:000000000000:function:lookup_customer")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                data = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                request_id = self.path.removeprefix(f"{PREFIX}/invocation/").split("/")[0]
                try:
                    status = int(json.loads(data).get("statusCode", 0))
                except (ValueError, AttributeError):
                    status = 0
                with api._cond:
                    api.answered[request_id] = (time.monotonic(), status)
                    api._cond.notify_all()
                self.send_response(202)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def run(self, ids: list[str], body: bytes, alive: Any, limit_s: float = 300) -> None:
        """Queues one event per id and waits until every one was answered."""
        for request_id in ids:
            self.events.put((request_id, body))
        deadline = time.monotonic() + limit_s
        with self._cond:
            while not all(i in self.answered for i in ids):
                if not alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{sum(i in self.answered for i in ids)}/{len(ids)} answered")
                self._cond.wait(0.2)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def event(token: str | None) -> bytes:
    """`tools/call lookup_customer` as API Gateway sends it; without a token it is answered 401
    without any store request."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": stackrun.CALL_BODY})
    headers = {k.lower(): v for k, v in stackrun.headers(token or "").items()}
    if token is None:
        headers.pop("authorization")
    return json.dumps({
        "version": "2.0", "routeKey": "POST /tools/lookup_customer/mcp", "rawPath": "/tools/lookup_customer/mcp",
        "rawQueryString": "", "isBase64Encoded": False, "body": body,
        "headers": {**headers, "host": "127.0.0.1"},
        "requestContext": {"http": {"method": "POST", "path": "/tools/lookup_customer/mcp", "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1", "userAgent": "bench"},
                           "requestId": "bench", "routeKey": "POST /tools/lookup_customer/mcp", "stage": "$default",
                           "timeEpoch": int(time.time() * 1000)},
    }).encode()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def measure(stack: stackrun.Stack, level: int, calls: int, authenticated: bool = True) -> dict[str, float]:
    api = FeedingRuntimeApi()
    env = dict(stack.env)
    env.update(
        AWS_LAMBDA_RUNTIME_API=api.address, AWS_LAMBDA_FUNCTION_NAME="lookup_customer",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="2048", AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_MAX_CONCURRENCY=str(level), TOLLGATE_RESOURCE_URL="http://127.0.0.1/mcp",
    )
    log = stack.workdir / f"function-{level}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(FUNCTION_BIN)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=stack.workdir)
    try:
        body = event(stack.token if authenticated else None)
        expect = 200 if authenticated else 401
        alive = lambda: proc.poll() is None  # noqa: E731
        api.run([f"warm-{i}" for i in range(WARM)], body, alive)
        ids = [f"call-{i}" for i in range(calls)]
        ticks0, t0 = cpu_ticks(proc.pid), time.monotonic()
        api.run(ids, body, alive)
        wall, ticks = time.monotonic() - t0, cpu_ticks(proc.pid) - ticks0
        bad = [i for i in ids if api.answered[i][1] != expect]
        if bad:
            statuses = sorted({api.answered[i][1] for i in bad})
            raise RuntimeError(f"level {level}: {len(bad)} calls answered {statuses}, not {expect} (log: {log}; "
                               "BENCH_KEEP=1 keeps it)")
        durations = [(api.answered[i][0] - api.handed[i]) * 1000 for i in ids]
        return {
            "level": level,
            "calls": calls,
            "calls_per_s": calls / wall,
            "cpu_us_per_call": ticks * TICK_US / calls,
            "resolution_us": TICK_US / calls,
            "duration_ms_mean": statistics.fmean(durations),
            "duration_ms_p50": statistics.median(durations),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        api.close()


def price(prices: dict, key: str) -> float:
    return prices[key]["usd"] / prices[key]["per"]


def costs(results: list[dict], prices: dict, loads: list[float], waits_ms: list[float]) -> list[dict]:
    """Cost per million calls at each steady load (calls/s) and call duration, classic vs
    managed instances. Durations: the measured one (at 1), then the same call waiting on a
    downstream API for `waits_ms` more (what a tool calling a third-party API does); the CPU
    per call stays the measured one."""
    a = prices["assumptions"]
    manifest = tomllib.loads((HERE.parents[1] / "infra" / "tools.toml").read_text())
    d = manifest["defaults"]
    memory_gb = d["memory_mb"] / 1024
    per_env = d["managed_max_concurrency"]
    vcpus_per_env = d["managed_memory_mb"] / 1024 / 2  # 2 GiB per vCPU (infra/render.py)
    measured_ms = next(r for r in results if r["level"] == 1)["duration_ms_mean"]
    managed = min(results, key=lambda r: abs(r["level"] - per_env))
    cpu_s = managed["cpu_us_per_call"] / 1e6
    instance = prices["managed_instance"]
    requests = price(prices, "lambda_requests") * 1e6
    out = []
    for wait in [0.0, *waits_ms]:
        duration_ms = measured_ms + wait
        classic = requests + math.ceil(duration_ms) / 1000 * memory_gb * price(prices, "lambda_duration_arm64") * 1e6
        for load in loads:
            # vCPUs for the CPU the calls use, at the target utilisation, and for the
            # environments the calls in flight occupy (per_env at once each).
            cpu_vcpus = load * cpu_s / (a["managed_target_cpu_percent"] / 100)
            envs = math.ceil(load * duration_ms / 1000 / per_env)
            vcpus = max(cpu_vcpus, envs * vcpus_per_env)
            instances = max(a["managed_min_instances"], math.ceil(vcpus / instance["vcpus"]))
            ec2 = instances * instance["usd"] * 1e6 / load / 3600
            fee = ec2 * prices["managed_management_fee"]["fraction"]
            out.append({"load_calls_per_s": load, "duration_ms": duration_ms, "classic_usd": classic,
                        "managed_usd": requests + ec2 + fee, "managed_instances": instances})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--levels", default="1,8,32,64")
    ap.add_argument("--loads", default="10,100,1000", help="steady loads (calls/s) the cost table is for")
    ap.add_argument("--waits", default="100,500", help="downstream waits (ms) added to the measured duration")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if 1 not in levels:
        levels.insert(0, 1)
    if not FUNCTION_BIN.exists():
        raise SystemExit(f"{FUNCTION_BIN} is missing: cargo build --release --bin lookup_customer")
    prices = tomllib.loads((HERE / "prices.toml").read_text())
    # moto answers every store request of every level in one Python thread: at 32 and 64 calls
    # in flight its queue passes the default 800 ms budget timeout. The bench measures the
    # function, not moto's queue: a longer timeout.
    env = {**stackrun.lease_env("leases"), "TOLLGATE_BUDGET_TIMEOUT_MS": "10000"}
    with stackrun.Stack(instances=1, proxy=True, env_extra=env) as stack:
        results = [measure(stack, level, args.calls) for level in levels]
        # The same process path without the store: answered 401 before any store request. What
        # the runtime and the pipeline do at each level when moto's queue is out of the way.
        no_store = [measure(stack, level, args.calls, authenticated=False) for level in levels]
    table = costs(results, prices, [float(x) for x in args.loads.split(",")], [float(x) for x in args.waits.split(",")])
    print(f"## One function process, concurrent invocations (`make bench`, {time.strftime('%Y-%m-%d')})\n")
    try:
        binary = FUNCTION_BIN.relative_to(stackrun.REPO)
    except ValueError:
        binary = FUNCTION_BIN
    print(f"`{binary}`, Runtime API on loopback, moto (single-threaded) as the store, "
          f"leases on; {args.calls} calls per level after {WARM} warm-up calls; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| concurrent invocations | calls/s | CPU per call | duration p50 | duration mean |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['level']} | {r['calls_per_s']:.0f} | {r['cpu_us_per_call']:.0f} us "
              f"(+-{r['resolution_us']:.0f}) | {r['duration_ms_p50']:.1f} ms | {r['duration_ms_mean']:.1f} ms |")
    d = tomllib.loads((HERE.parents[1] / "infra" / "tools.toml").read_text())["defaults"]
    a = prices["assumptions"]
    cpu = min(results, key=lambda r: abs(r["level"] - d["managed_max_concurrency"]))
    print("\n### Cost per million calls, steady load: classic Lambda vs Lambda Managed Instances\n")
    print(f"Lambda only (API Gateway, DynamoDB, logs and traces are the same both ways). Classic: requests + "
          f"the call's duration billed per ms at {d['memory_mb']} MB. Managed: requests + "
          f"{prices['managed_instance']['type']} on-demand + {prices['managed_management_fee']['fraction']:.0%} "
          f"management fee, for enough instances for {cpu['cpu_us_per_call']:.0f} us CPU per call (measured at "
          f"{cpu['level']}) at {a['managed_target_cpu_percent']} % CPU and for the calls in flight "
          f"({d['managed_max_concurrency']} per {d['managed_memory_mb']} MB environment), at least "
          f"{a['managed_min_instances']} instances. Duration: measured here (moto on loopback), then with a "
          f"downstream wait added. Prices: tests/benches/prices.toml ({prices['meta']['recorded']}).\n")
    print("| call duration | steady load | classic Lambda | managed instances | instances |")
    print("|---:|---:|---:|---:|---:|")
    for c in table:
        print(f"| {c['duration_ms']:.0f} ms | {c['load_calls_per_s']:.0f} calls/s | ${c['classic_usd']:.2f} "
              f"| ${c['managed_usd']:.2f} | {c['managed_instances']} |")
    print("\nWithout the store (the same call without a token, answered 401 before any store request):\n")
    print("| concurrent invocations | calls/s | CPU per call | duration p50 |")
    print("|---:|---:|---:|---:|")
    for r in no_store:
        print(f"| {r['level']} | {r['calls_per_s']:.0f} | {r['cpu_us_per_call']:.0f} us (+-{r['resolution_us']:.0f}) "
              f"| {r['duration_ms_p50']:.1f} ms |")
    if args.json:
        args.json.write_text(json.dumps({"levels": results, "no_store": no_store, "cost": table}, indent=2))


if __name__ == "__main__":
    main()
