#!/usr/bin/env python3
"""A Lambda Runtime API on loopback that hands out events concurrently, as Lambda Managed
Instances does, to one function process.

    python3 tests/stack/runtime_api.py --binary target/debug/lookup_customer \\
        --event events/lookup_customer.call-ok.json --concurrency 32

starts the binary with `AWS_LAMBDA_MAX_CONCURRENCY=N` (plus the caller's environment), waits
until N of its workers are polling `/next` at the same time, then answers all N polls at once:
N invocations in flight together in one process. Each invocation has its own request id
(`mi-<i>`), deadline and `Lambda-Runtime-Trace-Id` (its own X-Ray root). Responses are printed
as JSON lines `{"request_id", "trace_header", "response"}` in request order; polls after the
N-th are held open, as Lambda does between events, until the process is stopped. `make invoke
FN=... EVENT=... CONCURRENCY=N` uses it (tests/stack/invoke.sh); the end-to-end test
tests/e2e/test_managed_instances.py drives it with one event per invocation.

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PREFIX = "/2018-06-01/runtime"


@dataclass
class Invocation:
    """One event handed out, and what came back for it."""

    request_id: str
    event: dict[str, Any]
    trace_header: str
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)


def xray_header() -> str:
    """A fresh X-Ray trace header, as Lambda sends it for one invocation."""
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled=1"


class ConcurrentRuntimeApi:
    """Hands `events` out only once `len(events)` polls are open together: every invocation is
    in flight at once. Later polls are held until `close()`."""

    def __init__(self, events: list[dict[str, Any]], timeout_s: float = 60.0) -> None:
        self.invocations = [Invocation(f"mi-{i}", e, xray_header()) for i, e in enumerate(events)]
        self.by_id = {inv.request_id: inv for inv in self.invocations}
        self.max_waiting = 0  # most polls open at the same time
        self.max_in_flight = 0  # most invocations handed out and not yet answered
        self._waiting = 0
        self._handed = 0
        self._answered = 0
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._timeout_s = timeout_s
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Buffered: each answer's head and body leave in one write, as Lambda's Runtime API
            # (a Go net/http server) sends a small answer; the client then keeps the connection.
            wbufsize = 1 << 16

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path != f"{PREFIX}/invocation/next":
                    return self._send(404, {})
                inv = api._next()
                if inv is None:
                    self.close_connection = True
                    return None
                deadline_ms = int(time.time() * 1000) + 30_000
                self._send(200, inv.event, {
                    "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:000000000000:function:local",
                    "Lambda-Runtime-Trace-Id": inv.trace_header,
                })

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                parts = self.path.removeprefix(f"{PREFIX}/").split("/")
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    inv = api.by_id.get(parts[1])
                    if inv is None:
                        return self._send(400, {"errorMessage": "unknown request id"})
                    payload = json.loads(body or b"{}")
                    if parts[2] == "response":
                        inv.response = payload
                    else:
                        inv.error = payload
                    api._answer(inv)
                    return self._send(202, {"status": "OK"})
                # init/error and anything else: recorded as a failed start.
                return self._send(202, {"status": "OK"})

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a poll cut off by the process stopping: expected, nothing to report

        self._server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _next(self) -> Invocation | None:
        n = len(self.invocations)
        with self._cond:
            self._waiting += 1
            self.max_waiting = max(self.max_waiting, self._waiting)
            self._cond.notify_all()
            # Every event waits for all N polls: then N invocations are in flight at once.
            released = self._cond.wait_for(
                lambda: self._closing.is_set() or (self._handed < n and self.max_waiting >= n),
                timeout=self._timeout_s,
            )
            self._waiting -= 1
            if not released or self._closing.is_set() or self._handed >= n:
                # Held like Lambda between events, until the process is stopped.
                self._cond.wait_for(self._closing.is_set)
                return None
            inv = self.invocations[self._handed]
            self._handed += 1
            self.max_in_flight = max(self.max_in_flight, self._handed - self._answered)
            return inv

    def _answer(self, inv: Invocation) -> None:
        with self._cond:
            self._answered += 1
        inv.done.set()

    def wait(self, timeout_s: float, alive: Any = lambda: True) -> bool:
        """Waits until every invocation was answered (or `alive()` turns false)."""
        deadline = time.monotonic() + timeout_s
        for inv in self.invocations:
            while not inv.done.wait(0.1):
                if time.monotonic() > deadline or not alive():
                    return False
        return True

    def close(self) -> None:
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()


def lambda_env(base: dict[str, str], address: str, function: str, concurrency: int) -> dict[str, str]:
    """`base` plus what Lambda sets for a managed-instances function."""
    env = dict(base)
    env.update(
        AWS_LAMBDA_RUNTIME_API=address,
        AWS_LAMBDA_FUNCTION_NAME=function,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="2048",
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST.PUBLISHED",
        AWS_LAMBDA_MAX_CONCURRENCY=str(concurrency),
    )
    env.setdefault("AWS_REGION", "us-east-1")
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, type=Path, help="the function binary (target/debug/<fn>)")
    parser.add_argument("--event", required=True, type=Path, help="API Gateway v2 event JSON, sent N times")
    parser.add_argument("--concurrency", type=int, default=32, help="N: invocations in flight at once")
    parser.add_argument("--log", type=Path, help="the function's stdout and stderr go here (default: stderr)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every response")
    args = parser.parse_args()
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    event = json.loads(args.event.read_text())
    api = ConcurrentRuntimeApi([event] * args.concurrency, timeout_s=args.timeout)
    env = lambda_env(dict(os.environ), api.address, args.binary.name, args.concurrency)
    out = args.log.open("wb") if args.log else sys.stderr
    proc = subprocess.Popen([str(args.binary)], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        ok = api.wait(args.timeout, alive=lambda: proc.poll() is None)
        for inv in api.invocations:
            print(json.dumps({"request_id": inv.request_id, "trace_header": inv.trace_header,
                              "response": inv.response, "error": inv.error}))
        print(f"runtime_api: {sum(i.done.is_set() for i in api.invocations)}/{len(api.invocations)} answered; "
              f"{api.max_in_flight} in flight at once in one process", file=sys.stderr)
        return 0 if ok else 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        api.close()


if __name__ == "__main__":
    sys.exit(main())
