#!/usr/bin/env python3
"""A fault-injecting HTTP proxy between the local stack and one of its dependencies (the
DynamoDB-protocol server, Secrets Manager / KMS, the OAuth issuer's JWKS, the carrier API):
`make chaos` (tests/benches/chaos.py) puts one in front of each and switches faults on and off.

Usage: python tests/benches/fault_proxy.py LISTEN_PORT UPSTREAM_URL

Forwards each request to UPSTREAM_URL (a new upstream connection per request, client
connections kept alive) unless a fault is set. Control, on the same port, never forwarded and
never faulted:

  POST /__fault  {"fault": NAME, "ms": N}   sets the fault for every later request
  POST /__fault  {"fault": "none"}          clears it (held black-hole connections are closed)
  GET  /__stats                             {"requests": n, "faulted": n}

Faults:
  latency     waits `ms` before forwarding (below or above the caller's timeout)
  reset       closes the client connection with a TCP RST, nothing answered
  http500     500 with a JSON body `{"__type": "InternalServerError", ...}`
  http503     503 `{"__type": "ServiceUnavailable"}`
  throughput  400 `ProvisionedThroughputExceededException` (DynamoDB's JSON 1.0 error shape)
  throttling  400 `ThrottlingException` (Secrets Manager / KMS / DynamoDB control plane)
  blackhole   reads the request and never answers (the connection stays open until cleared)

Loopback only; stops on SIGINT / SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import sys
from urllib.parse import urlsplit

BODIES = {
    "http500": (500, {"__type": "com.amazon.coral.service#InternalServerError", "message": "injected fault"}),
    "http503": (503, {"__type": "com.amazon.coral.service#ServiceUnavailableException", "message": "injected fault"}),
    "throughput": (400, {
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "The level of configured provisioned throughput for the table was exceeded."}),
    "throttling": (400, {"__type": "ThrottlingException", "message": "Rate exceeded"}),
}
FAULTS = {"none", "latency", "reset", "blackhole", *BODIES}


class State:
    def __init__(self) -> None:
        self.fault = "none"
        self.ms = 0
        self.requests = 0
        self.faulted = 0
        self.cleared = asyncio.Event()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length") or 0)
    body = await reader.readexactly(length) if length else b""
    return head, headers, body


def response(status: int, body: bytes, ctype: str = "application/x-amz-json-1.0", extra: str = "") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
              503: "Service Unavailable"}.get(status, "Status")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


async def forward(up: tuple[str, int], head: bytes, headers: dict[str, str], body: bytes) -> bytes:
    """The upstream's whole response, re-framed with a Content-Length (upstreams here answer
    HTTP/1.0 or close the connection)."""
    first, *rest = head.decode("latin-1").split("\r\n")
    keep = [line for line in rest if line and line.split(":", 1)[0].strip().lower()
            not in ("connection", "keep-alive", "proxy-connection")]
    out = "\r\n".join([first, *keep, "Connection: close", "", ""]).encode() + body
    r, w = await asyncio.open_connection(*up)
    try:
        w.write(out)
        await w.drain()
        raw = await r.read()
    finally:
        w.close()
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        return response(502, b'{"message":"bad upstream response"}')
    status_line, *hdrs = raw[:head_end].decode("latin-1").split("\r\n")
    payload = raw[head_end + 4:]
    hmap = {h.split(":", 1)[0].strip().lower(): h for h in hdrs if ":" in h}
    if "transfer-encoding" in hmap:  # chunked: decode
        payload = dechunk(payload)
    keep_h = [h for k, h in hmap.items() if k not in ("connection", "content-length", "transfer-encoding", "keep-alive")]
    version_fixed = "HTTP/1.1 " + status_line.split(" ", 1)[1]
    return ("\r\n".join([version_fixed, *keep_h, f"Content-Length: {len(payload)}", "", ""])).encode() + payload


def dechunk(data: bytes) -> bytes:
    out, i = b"", 0
    while i < len(data):
        j = data.find(b"\r\n", i)
        if j < 0:
            break
        size = int(data[i:j].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[j + 2:j + 2 + size]
        i = j + 2 + size + 2
    return out


async def handle(state: State, up: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    try:
        while True:
            req = await read_request(reader)
            if req is None:
                return
            head, headers, body = req
            path = head.split(b" ", 2)[1].decode("latin-1")
            if path == "/__fault":
                cmd = json.loads(body or b"{}")
                if cmd.get("fault") not in FAULTS:
                    writer.write(response(400, b'{"error":"unknown fault"}', "application/json"))
                else:
                    state.fault, state.ms = cmd["fault"], int(cmd.get("ms", 0))
                    if state.fault == "none":
                        state.cleared.set()
                        state.cleared = asyncio.Event()
                    writer.write(response(200, b"{}", "application/json"))
                await writer.drain()
                continue
            if path == "/__stats":
                writer.write(response(200, json.dumps({"requests": state.requests, "faulted": state.faulted}).encode(),
                                      "application/json"))
                await writer.drain()
                continue
            state.requests += 1
            fault, ms = state.fault, state.ms
            if fault != "none":
                state.faulted += 1
            if fault == "reset":
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if fault == "blackhole":
                await state.cleared.wait()
                writer.transport.abort()
                return
            if fault in BODIES:
                status, doc = BODIES[fault]
                writer.write(response(status, json.dumps(doc).encode(), extra="x-amzn-ErrorType: "
                                      + doc["__type"].rsplit("#", 1)[-1] + "\r\n"))
                await writer.drain()
                continue
            if fault == "latency":
                await asyncio.sleep(ms / 1000)
            try:
                writer.write(await forward(up, head, headers, body))
            except OSError:
                writer.write(response(502, b'{"message":"upstream unreachable"}', "application/json"))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        if not writer.is_closing():
            writer.close()


async def main(argv: list[str]) -> None:
    listen = int(argv[1])
    u = urlsplit(argv[2])
    up = (u.hostname or "127.0.0.1", u.port or 80)
    state = State()
    server = await asyncio.start_server(lambda r, w: handle(state, up, r, w), "127.0.0.1", listen, backlog=512)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
