#!/usr/bin/env python3
"""A counting HTTP proxy between the local stack and its DynamoDB-protocol server (benches).

Usage: python tests/benches/store_proxy.py LISTEN_PORT UPSTREAM_URL

Forwards every request unchanged to UPSTREAM_URL (moto) and counts it by operation, from the
`X-Amz-Target` header the AWS SDKs send (`DynamoDB_20120810.UpdateItem`,
`secretsmanager.GetSecretValue`, ...): requests, failed conditional writes, eventually
consistent reads. The stack never knows it is counted: this is the "from outside" view a bill
is made of. It keeps client connections open (HTTP/1.1 keep-alive), as DynamoDB's endpoint does,
so the stack's connection pool behaves as on AWS; the upstream connection is per request (moto
closes it).

Control (on the same port, never forwarded):
  GET  /__counts  -> {"ops": {"DynamoDB_20120810.UpdateItem TABLE": {"requests": n, "failed": n,
                      "eventual": n, "items": n}, ...}, "connections": n}   (TABLE when the
                      request names one: budgets and keys vs the tools' own data)
  POST /__reset   -> zeroes every counter
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: dict[str, dict[str, int]] = {}
        self.connections = 0

    def add(self, op: str, *, failed: bool, eventual: bool, items: int) -> None:
        with self.lock:
            c = self.ops.setdefault(op, {"requests": 0, "failed": 0, "eventual": 0, "items": 0})
            c["requests"] += 1
            c["failed"] += int(failed)
            c["eventual"] += int(eventual)
            c["items"] += items

    def snapshot(self) -> dict:
        with self.lock:
            return {"ops": json.loads(json.dumps(self.ops)), "connections": self.connections}

    def reset(self) -> None:
        with self.lock:
            self.ops.clear()
            self.connections = 0


def items_of(op: str, body: dict) -> int:
    """Items a request touches, for the operations a bill counts per item."""
    if op.endswith(("TransactWriteItems", "TransactGetItems")):
        return len(body.get("TransactItems", []))
    if op.endswith(("BatchWriteItem", "BatchGetItem")):
        reqs = body.get("RequestItems", {})
        return sum(len(v) if isinstance(v, list) else len(v.get("Keys", [])) for v in reqs.values())
    return 1


def make_handler(upstream: tuple[str, int], counts: Counts) -> type[BaseHTTPRequestHandler]:
    host, port = upstream

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Buffered: each answer's head and body leave in one write, as an HTTPS endpoint sends a
        # small answer (one TLS record), so the client reads it in one go.
        wbufsize = 1 << 16

        def setup(self) -> None:
            super().setup()
            # No Nagle delay on the one write of each answer.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with counts.lock:
                counts.connections += 1

        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path == "/__counts":
                return self._reply(200, json.dumps(counts.snapshot()).encode())
            if self.path == "/__reset":
                counts.reset()
                return self._reply(200, b"{}")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn = http.client.HTTPConnection(host, port, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status, resp_headers = resp.status, resp.getheaders()
            finally:
                conn.close()
            target = self.headers.get("X-Amz-Target")
            if target:
                try:
                    parsed = json.loads(body) if body else {}
                except ValueError:
                    parsed = {}
                failed = status == 400 and b"ConditionalCheckFailed" in data
                eventual = "Get" in target and not parsed.get("ConsistentRead", False)
                table = parsed.get("TableName", "") if isinstance(parsed, dict) else ""
                counts.add(f"{target} {table}".strip(), failed=failed, eventual=eventual, items=items_of(target, parsed))
            self.send_response(status)
            for k, v in resp_headers:
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815 (http.server's naming)

    return Handler


def main(argv: list[str]) -> None:
    listen = int(argv[1])
    up = urlsplit(argv[2])
    server = ThreadingHTTPServer(("127.0.0.1", listen), make_handler((up.hostname or "127.0.0.1", up.port or 80), Counts()))
    server.daemon_threads = True
    server.request_queue_size = 256
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
