#!/usr/bin/env python3
"""CPU per warm call, as a deployed function pays it: one process's CPU time (every thread:
runtime workers, blocking pool, span exporters) over N sequential `tools/call lookup_customer`,
read from /proc/<pid>/stat (utime + stime) before and after. The store (moto, a separate
process) is not counted.

Two processes can be measured (`--process`):
  function: the release `lookup_customer` function binary itself, as Lambda runs it: a separate
            process with Lambda's environment, under a Lambda Runtime API on loopback (this
            process) that hands it one API Gateway v2 event after another and takes each
            response; X-Ray segments go to a UDP sink here, every 20th invocation sampled
            (X-Ray's default rule keeps 5 %). Nothing but the function runs in that process.
  dev:      the local stack's `tollgate-dev` (an axum HTTP front, every function in one
            process), called over HTTP by one keep-alive client.

`--floor` (function): the same measurement of `floor-function` (tests/src/bin/floor-function.rs):
`lambda_runtime` and the same `GetItem` through the same client, none of tollgate's pipeline;
`none` is the runtime alone (no store request). The processes run side by side, each under its
own Runtime API, and take turns of `--block` calls, so all of them see the same minutes of the
machine. The differences are what tollgate's pipeline and the store request each cost per call.

The measured function runs alone on the machine's last CPU, and the bench, moto and the store
proxy on the others (`--no-pin` shares them all): on Lambda the store is another machine, and a
store emulator working on the function's CPU while the function waits for it would evict the
function's code and data from that CPU's caches, a cost a deployed function does not pay.
`cpu.py` also counts the Runtime API connections the function opens and its store requests per
call, and prices the store's share from the floor (one store request's CPU, times the requests).

Usage: python tests/benches/cpu.py [--process function|dev] [--calls 300]
                                   [--floor tollgate,none,sdk] [--rounds N] [--no-pin]
                                   [--route direct|gateway] [--store pooled|direct] [--workers N]
  --route: `dev` only (a function is its own route).
  --workers: the process's Tokio workers (TOKIO_WORKER_THREADS). dev: default 1; 0 leaves
             Tokio's default, one per CPU. function: default unset, the function's own runtime
             (`lambda::runtime`); N makes it a multi-thread runtime of N workers.
  --store pooled: through the keep-alive proxy (the SDK pool keeps its connections, as against
                  DynamoDB's endpoint); direct: straight to moto, which closes every connection.
  --hold: keep the stack up after the run (for a profiler), until Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import queue
import secrets
import socket
import statistics
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cold_start  # noqa: E402
import stackrun  # noqa: E402


def per_call(user_ticks: int, system_ticks: int, tick: int, wall: float, calls: int) -> dict[str, float]:
    """CPU (user, system, total) in us and wall time in ms per call, and the clock tick's share."""
    return {"cpu_us_per_call": (user_ticks + system_ticks) / tick / calls * 1e6,
            "wall_ms_per_call": wall / calls * 1e3,
            "user_us_per_call": user_ticks / tick / calls * 1e6,
            "system_us_per_call": system_ticks / tick / calls * 1e6,
            "resolution_us": 1e6 / tick / calls}


def report(r: dict[str, float], what: str) -> None:
    print(f"  {what}: whole-process CPU per warm call: {r['cpu_us_per_call']:.0f} us "
          f"(user {r['user_us_per_call']:.0f}, system {r['system_us_per_call']:.0f}; "
          f"+-{r['resolution_us']:.0f} us tick resolution); wall {r['wall_ms_per_call']:.2f} ms per call"
          + (f"; peak RSS {r['peak_rss_mb']:.1f} MB" if "peak_rss_mb" in r else "")
          + (f"; Runtime API connections opened per call: {r['runtime_api_connections_per_call']:.2f}"
             if "runtime_api_connections_per_call" in r else "")
          + (f"; store requests per call: {sum(r['store_requests_per_call'].values()):.3f} ("
             + ", ".join(f"{op} {n:.3f}" for op, n in sorted(r["store_requests_per_call"].items())) + ")"
             if "store_requests_per_call" in r else "")
          + (f"; store connections opened: {r['store_connections']}" if "store_connections" in r else ""),
          file=sys.stderr)


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
    return per_call(u1 - u0, s1 - s0, tick, wall, calls)


def start_perf(pid: int, out: str | None) -> subprocess.Popen[bytes] | None:
    if not out:
        return None
    perf = subprocess.Popen(["perf", "record", "-F", "4000", "--call-graph", "dwarf,16384", "-q",
                             "-p", str(pid), "-o", out], stdout=subprocess.DEVNULL)
    time.sleep(1)
    return perf


def stop_perf(perf: subprocess.Popen[bytes] | None) -> None:
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait()


class Feeder:
    """A Lambda Runtime API on loopback that hands the function one event per `call` and
    returns what it posted back."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, bytes, str]] = queue.Queue()
        self.responses: queue.Queue[bytes] = queue.Queue()
        self.connections = 0
        feeder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Buffered: each answer's head and body leave in one write, as Lambda's Runtime API
            # (a Go net/http server) sends a small answer; the client then keeps the connection.
            wbufsize = 1 << 16

            def log_message(self, *_):
                pass

            def setup(self):
                super().setup()
                feeder.connections += 1

            def do_GET(self):
                request_id, payload, trace = feeder.events.get()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                                 "arn:aws:lambda:us-east-1:000000000000:function:lookup_customer")
                self.send_header("Lambda-Runtime-Trace-Id", trace)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(202)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                feeder.responses.put(body if self.path.endswith("/response") else b"error: " + body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, *_):
                pass  # the poll held open when the function is stopped

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        # X-Ray daemon: take the segments and drop them.
        self.xray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.xray.bind(("127.0.0.1", 0))
        threading.Thread(target=self._drain, daemon=True).start()
        self.n = 0

    def _drain(self) -> None:
        while True:
            try:
                self.xray.recv(65536)
            except OSError:
                return

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def xray_address(self) -> str:
        return f"127.0.0.1:{self.xray.getsockname()[1]}"

    def call(self, token: str) -> tuple[int, bytes]:
        """One invocation: an API Gateway v2 event of `tools/call lookup_customer`."""
        self.n += 1
        headers = {k.lower(): v for k, v in stackrun.headers(token).items()}
        event = json.loads(cold_start.event("lookup_customer"))
        event["headers"] = headers
        event["body"] = stackrun.call_body(self.n).decode()
        event["requestContext"]["requestId"] = f"bench-{self.n}"
        sampled = 1 if self.n % 20 == 0 else 0
        trace = f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled={sampled}"
        self.events.put((f"bench-{self.n}", json.dumps(event).encode(), trace))
        out = self.responses.get(timeout=60)
        try:
            resp = json.loads(out)
        except ValueError:
            return 0, out
        return int(resp.get("statusCode", 0)), (resp.get("body") or "").encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.xray.close()


class Subject:
    """One measured function process under a Runtime API of its own, warmed up."""

    def __init__(self, stack: stackrun.Stack, name: str, binary: Path, extra_env: dict[str, str],
                 cpu: int | None) -> None:
        self.stack, self.name = stack, name
        self.feeder = Feeder()
        env = cold_start.lambda_env("lookup_customer", self.feeder.address)
        env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = "128"
        env["AWS_XRAY_DAEMON_ADDRESS"] = self.feeder.xray_address
        env.pop("AWS_SESSION_TOKEN")
        # The store, the tables, the hashing key's secret and the budgets of the bench's stack.
        for k, v in stack.env.items():
            if k.startswith(("AWS_ENDPOINT_URL", "TOLLGATE_", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                             "NO_PROXY", "no_proxy")):
                env[k] = v
        env.pop("TOLLGATE_DEV_CARRIER", None)
        env.update(extra_env)
        label = "".join(c if c.isalnum() else "-" for c in name)
        self.out = (stack.workdir / f"{label}.stdout").open("wb")
        pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        self.proc = subprocess.Popen([str(binary)], env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=stack.workdir, preexec_fn=pin)
        self.inst = stackrun.Instance(self.proc, 0, stack.workdir)
        self.wall = 0.0
        self.store: dict[str, int] = {}
        self.store_connections = 0
        try:
            self.calls(30, measured=False)  # warm: key cached, policies cached, hashing key loaded, pool filled
        except BaseException:
            self.close()
            raise

    def calls(self, n: int, measured: bool = True) -> None:
        if measured and self.stack.proxy_url:
            self.stack.reset_counts()
        t0 = time.perf_counter()
        for _ in range(n):
            status, body = self.feeder.call(self.stack.token)
            assert stackrun.ok_result(status, body), (self.name, status, body[:300])
        if measured:
            self.wall += time.perf_counter() - t0
            if self.stack.proxy_url:
                counts = self.stack.counts()
                self.store_connections += counts["connections"]
                for op, k in store_requests(counts).items():
                    self.store[op] = self.store.get(op, 0) + k

    def close(self) -> float:
        """Stops the process; its peak RSS in MB."""
        try:
            peak_kb = next((int(line.split()[1]) for line in
                            Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
                            if line.startswith("VmHWM:")), 0)
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.out.close()
            self.feeder.close()
        return peak_kb / 1024


def measure_interleaved(stack: stackrun.Stack, subjects: list[tuple[str, Path, dict[str, str]]], calls: int,
                        block: int, cpu: int | None, perf_out: str | None = None) -> dict[str, dict[str, float]]:
    """Each subject's process over `calls` invocations, after 30 unmeasured ones, handed out in
    turns of `block` calls (the first subject under `perf record` into `perf_out` when given).
    Taking turns, every subject sees the same minutes of this machine; a process is idle
    between its turns (blocked on its `/next` poll), so its CPU time over the whole run is
    its turns' CPU time. Store requests are counted per turn."""
    started: list[Subject] = []
    try:
        for name, binary, env in subjects:
            started.append(Subject(stack, name, binary, env, cpu))
        perf = start_perf(started[0].proc.pid, perf_out)
        time.sleep(0.2)
        tick = os.sysconf("SC_CLK_TCK")
        before = [(s.inst.cpu_split(), s.feeder.connections) for s in started]
        done = 0
        while done < calls:
            n = min(block, calls - done)
            for s in started:
                s.calls(n)
            done += n
        time.sleep(0.2)  # spans and logs written after each response are this call's cost too
        after = [s.inst.cpu_split() for s in started]
        stop_perf(perf)
        out: dict[str, dict[str, float]] = {}
        for s, ((u0, s0), c0), (u1, s1) in zip(started, before, after):
            out[s.name] = {**per_call(u1 - u0, s1 - s0, tick, s.wall, calls),
                           "runtime_api_connections_per_call": (s.feeder.connections - c0) / calls,
                           **({"store_requests_per_call": {op: k / calls for op, k in s.store.items()},
                               "store_connections": s.store_connections} if stack.proxy_url else {})}
    finally:
        peaks = [s.close() for s in started]
    for s, peak in zip(started, peaks):
        out[s.name]["peak_rss_mb"] = peak
    return out


def store_requests(counts: dict) -> dict[str, int]:
    """Requests to the store by operation (`GetItem`, `UpdateItem`, ...), from the counting proxy."""
    by_op: dict[str, int] = {}
    for key, c in counts["ops"].items():
        op = key.split(" ")[0].partition(".")[2] or key
        by_op[op] = by_op.get(op, 0) + c["requests"]
    return by_op


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--process", choices=("function", "dev"), default="function")
    ap.add_argument("--functions-dir", default=str(stackrun.RELEASE),
                    help="where the release function binaries are (function mode)")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--route", choices=("direct", "gateway"), default="direct")
    ap.add_argument("--store", choices=("pooled", "direct"), default="pooled")
    ap.add_argument("--mode", choices=("exact", "leases"), default="leases")
    ap.add_argument("--workers", type=int, default=None,
                    help="TOKIO_WORKER_THREADS of the measured process. dev: default 1, the one thread a "
                         "classic Lambda function runs its calls on (0: Tokio's default, one per CPU); function: "
                         "default unset (the function's own choice), N asks it for a multi-thread runtime of N workers")
    ap.add_argument("--floor", nargs="?", const="tollgate,none",
                    help="function: after each run of the function, also run floor-function (lambda_runtime and the "
                         "same GetItem, no tollgate pipeline) once per variant named, comma-separated: `tollgate` (its "
                         "store client on tollgate's connector), `sdk` (on the AWS SDK's own HTTPS client), `none` (no "
                         "store request: the Lambda runtime alone); default `tollgate,none`. Prints what the "
                         "pipeline and the store request cost by difference")
    ap.add_argument("--rounds", type=int, default=1,
                    help="function: runs, each with fresh processes; the summary takes the medians")
    ap.add_argument("--also", action="append", default=[], metavar="BINARY",
                    help="function: another build of lookup_customer measured in the same turns (repeatable)")
    ap.add_argument("--block", type=int, default=100,
                    help="function: with --floor, the processes take turns of this many calls")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="function: an extra environment variable of the measured processes (repeatable)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="function: run the measured process alone on the last CPU and the bench, moto and the "
                         "store proxy on the others (default, with 2 or more CPUs); --no-pin shares them all")
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--perf", help="record a perf profile (call graphs) of the measured calls into this file")
    args = ap.parse_args()
    if args.calls < 1 or args.block < 1 or args.rounds < 1:
        raise SystemExit("--calls, --block and --rounds must be at least 1")
    env = stackrun.lease_env(args.mode)
    workers = args.workers if args.workers is not None else (1 if args.process == "dev" else None)
    if workers and args.process == "dev":
        env["TOKIO_WORKER_THREADS"] = str(workers)
    # The measured function on a CPU of its own, everything else (this bench, the Runtime API,
    # moto, the store proxy) on the others: on Lambda the store is another machine, so the
    # function's CPU does not run the store's work in its caches while it waits.
    cpus = sorted(os.sched_getaffinity(0))
    pin = cpus[-1] if args.pin and len(cpus) >= 2 and args.process == "function" else None
    if pin is not None:
        os.sched_setaffinity(0, set(cpus[:-1]))
    with stackrun.Stack(instances=1, proxy=args.store == "pooled", env_extra=env) as stack:
        inst = stack.live[0]
        if args.process == "function":
            binary = Path(args.functions_dir) / "lookup_customer"
            floor = Path(args.functions_dir) / "floor-function"
            for b in [binary] + ([floor] if args.floor else []):
                if not b.exists():
                    raise SystemExit(f"{b} is missing: cargo build --release -p lookup_customer"
                                     " (and -p tollgate-tests --bin floor-function for --floor)")
            for p in args.also:
                if not Path(p).is_file():
                    raise SystemExit(f"--also: {p} is not a file")
            extra = {"TOKIO_WORKER_THREADS": str(workers)} if workers else {}
            for kv in args.env:
                name, sep, value = kv.partition("=")
                if not name or not sep:
                    raise SystemExit(f"--env: expected NAME=VALUE, not {kv!r}")
                extra[name] = value
            print(f"process: the lookup_customer function ({binary}) under a Lambda Runtime API; "
                  f"mode: {args.mode}; store connections: {args.store}; "
                  f"runtime: {f'{workers} workers' if workers else 'its own'}; {args.calls} calls; "
                  + (f"measured process alone on CPU {pin}" if pin is not None else "CPUs shared with the store"),
                  file=sys.stderr)
            variants = [v for v in (args.floor or "").split(",") if v]
            if any(v not in ("tollgate", "sdk", "none") for v in variants):
                raise SystemExit(f"--floor: variants are tollgate, sdk and none, not {args.floor}")
            names = {"lookup_customer": "lookup_customer", **{v: f"floor-function, store client: {v}" for v in variants}}
            runs: dict[str, list[float]] = {k: [] for k in names}
            requests: dict[str, list[float]] = {k: [] for k in names}
            also_runs: dict[str, list[float]] = {}
            for i in range(args.rounds):
                subjects = [(names["lookup_customer"], binary, extra)]
                subjects += [(f"lookup_customer ({p})", Path(p), extra) for p in args.also]
                subjects += [(names[v], floor, {**extra, "FLOOR_HTTP": v}) for v in variants]
                got = measure_interleaved(stack, subjects, args.calls, args.block, pin,
                                          args.perf if i == 0 else None)
                for key, name in names.items():
                    r = got[name]
                    runs[key].append(r["cpu_us_per_call"])
                    requests[key].append(sum(r.get("store_requests_per_call", {}).values()))
                    report(r, name)
                for p in args.also:
                    r = got[f"lookup_customer ({p})"]
                    also_runs.setdefault(p, []).append(r["cpu_us_per_call"])
                    report(r, f"lookup_customer ({p})")
            if variants:
                med = {k: statistics.median(v) for k, v in runs.items()}
                print(f"  medians of {args.rounds} round(s), the processes taking turns of {args.block} calls: "
                      + ", ".join(f"{k} {v:.0f} us" for k, v in med.items())
                      + "".join(f", {p} {statistics.median(v):.0f} us" for p, v in also_runs.items()),
                      file=sys.stderr)
                if "tollgate" in med:
                    print(f"  tollgate's pipeline (lookup_customer - floor on the same connector): "
                          f"{med['lookup_customer'] - med['tollgate']:.0f} us per warm call", file=sys.stderr)
                if "tollgate" in med and "none" in med and stack.proxy_url:
                    # One store request's CPU, from the floor (one GetItem per call, nothing else);
                    # the function's store time is its own requests per call at that price.
                    per_request = (med["tollgate"] - med["none"]) / max(statistics.median(requests["tollgate"]), 1e-9)
                    store = statistics.median(requests["lookup_customer"]) * per_request
                    print(f"  one store request (floor with GetItem - floor without): {per_request:.0f} us; "
                          f"lookup_customer makes {statistics.median(requests['lookup_customer']):.3f} per call; "
                          f"lookup_customer with its store time excluded: {med['lookup_customer'] - store:.0f} us "
                          f"per warm call; the Lambda runtime alone: {med['none']:.0f} us", file=sys.stderr)
        else:
            if args.perf:
                measure(inst, stack.token, args.route, 30)
            perf = start_perf(inst.pid, args.perf)
            r = measure(inst, stack.token, args.route, args.calls)
            stop_perf(perf)
            print(f"process: tollgate-dev; mode: {args.mode}; route: {args.route}; store connections: {args.store}; "
                  f"runtime workers: {workers or 'one per CPU'}; {args.calls} calls", file=sys.stderr)
            report(r, "tollgate-dev")
        if stack.proxy_url and args.process == "dev":
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
