"""Span receivers on loopback for the end-to-end suite: a real OTLP/HTTP (protobuf) trace
receiver and a UDP socket standing in for the X-Ray daemon. Both keep every byte they were
sent, so tests can check the span tree and that no personal value was exported."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
XRAY_HEADER = b'{"format": "json", "version": 1}\n'


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


@dataclass
class Span:
    """One decoded OTLP span (ids as lowercase hex; no parent: empty string)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    service: str | None


class OtlpReceiver:
    """`POST /v1/traces` with an `ExportTraceServiceRequest`, as a collector receives it."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.received_at: list[float] = []  # time.monotonic() of each payload
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces" or "protobuf" not in self.headers.get("Content-Type", ""):
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(body, request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _add(self, body: bytes, request: ExportTraceServiceRequest) -> None:
        spans = []
        for rs in request.resource_spans:
            service = next(
                (_value(a.value) for a in rs.resource.attributes if a.key == "service.name"), None
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=SPAN_KINDS.get(s.kind, str(s.kind)),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        service=service,
                    ))
        with self._lock:
            self.payloads.append(body)
            self.received_at.append(time.monotonic())
            self.spans.extend(spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class XrayDaemon:
    """A UDP socket receiving segment documents (`{"format": "json", "version": 1}\\n{...}`)."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._open = True
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while self._open:
            try:
                data = self._sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.datagrams.append(data)

    def segments(self) -> list[dict[str, Any]]:
        """Every segment document received (the daemon header checked and stripped)."""
        with self._lock:
            datagrams = list(self.datagrams)
        docs = []
        for d in datagrams:
            assert d.startswith(XRAY_HEADER), d[:80]
            docs.append(json.loads(d[len(XRAY_HEADER):]))
        return docs

    def close(self) -> None:
        self._open = False
        self._sock.close()


@dataclass
class SpanSinks:
    """Both receivers, and a mark to read what arrived after it."""

    otlp: OtlpReceiver = field(default_factory=OtlpReceiver)
    xray: XrayDaemon = field(default_factory=XrayDaemon)

    def env(self) -> dict[str, str]:
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp.endpoint, "AWS_XRAY_DAEMON_ADDRESS": self.xray.address}

    def mark(self) -> tuple[int, int]:
        return len(self.otlp.payloads), len(self.xray.datagrams)

    def bytes_since(self, mark: tuple[int, int]) -> list[bytes]:
        return self.otlp.payloads[mark[0]:] + self.xray.datagrams[mark[1]:]

    def settle(self, quiet: float = 0.6, limit: float = 10.0) -> None:
        """Waits until nothing new arrived for `quiet` seconds (spans are flushed after each
        response, so they trail it slightly)."""
        deadline = time.monotonic() + limit
        last, since = self.mark(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.mark()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def wait_for(self, predicate: Any, limit: float = 10.0) -> list[Span]:
        """Spans once `predicate(spans)` holds (or the last spans seen after `limit`)."""
        deadline = time.monotonic() + limit
        while True:
            spans = list(self.otlp.spans)
            if predicate(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def close(self) -> None:
        self.otlp.close()
        self.xray.close()
