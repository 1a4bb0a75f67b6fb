"""A function binary under the real Lambda runtime loop, against a Runtime API on loopback:
its spans reach an OTLP receiver after the response was posted and before the next event is
polled (the response never waits on export, and nothing is left buffered while Lambda would
freeze the environment)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from span_sinks import OtlpReceiver

REPO = Path(__file__).resolve().parents[2]
FUNCTION_BIN = Path(os.environ.get("TOLLGATE_FUNCTION_BIN", REPO / "target" / "debug" / "lookup_customer"))
FIXTURE = REPO / "events" / "lookup_customer.call-ok.json"


class RuntimeApi:
    """Serves one invocation, records when its response arrived and when the next poll came."""

    def __init__(self, event: dict[str, Any], trace_header: str) -> None:
        self.response_at: float | None = None
        self.response: dict[str, Any] | None = None
        self.second_poll_at: float | None = None
        self._served = False
        self._release = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if not self.path.endswith("/runtime/invocation/next"):
                    self.send_response(404)
                    self.end_headers()
                    return
                if api._served:
                    api.second_poll_at = time.monotonic()
                    api._release.wait(30)  # hold the poll open, as Lambda does between events
                    self.send_response(500)
                    self.end_headers()
                    return
                api._served = True
                body = json.dumps(event).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", "req-1")
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 10_000))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                                 "arn:aws:lambda:us-east-1:000000000000:function:lookup_customer")
                self.send_header("Lambda-Runtime-Trace-Id", trace_header)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(length) if length else b""
                if self.path.endswith("/response"):
                    api.response_at = time.monotonic()
                    api.response = json.loads(data or b"{}")
                self.send_response(202)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def one_event(bin_path: Path, event: dict[str, Any], tmp_path: Path, function: str,
              without: tuple[str, ...] = (), **extra_env: str):
    """Runs `bin_path` under a Runtime API serving `event` once, spans exported to an OTLP
    receiver; yields (api, receiver) once the function polled for a second event. `without`
    names Lambda variables the run leaves out."""
    receiver = OtlpReceiver()
    api = RuntimeApi(event, "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLGATE_", "AWS_", "OTEL_", "EXPORT_"))}
    env.update(
        AWS_LAMBDA_RUNTIME_API=api.address,
        AWS_LAMBDA_FUNCTION_NAME=function,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128",
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="local",
        AWS_SECRET_ACCESS_KEY="local",
        AWS_EC2_METADATA_DISABLED="true",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        NO_PROXY="127.0.0.1,localhost",
        **extra_env,
    )
    for name in without:
        env.pop(name, None)
    proc = subprocess.Popen([str(bin_path)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while api.second_poll_at is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert api.second_poll_at is not None, "the function never polled for a second event"
        yield api, receiver
    finally:
        proc.kill()
        proc.wait(timeout=5)
        api.close()
        receiver.close()


def test_spans_are_flushed_after_the_response_and_before_the_next_poll(tmp_path) -> None:
    assert FUNCTION_BIN.exists(), f"{FUNCTION_BIN} is missing: run `make build-debug`"
    trace_id = secrets.token_hex(16)
    event = json.loads(FIXTURE.read_text())
    event["headers"].pop("authorization")  # a 401, answered without any AWS call
    event["headers"]["traceparent"] = f"00-{trace_id}-00f067aa0ba902b7-01"
    event["body"] = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
    with one_event(
        FUNCTION_BIN, event, tmp_path, "lookup_customer",
        TOLLGATE_RESOURCE_URL="https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/mcp",  # the fixture's API
    ) as (api, receiver):
        assert api.response is not None and api.response["statusCode"] == 401, api.response
        ours = [s for s in receiver.spans if s.trace_id == trace_id]
        assert sorted(s.name for s in ours) == ["authenticate", "tools/list"], ours
        server = next(s for s in ours if s.name == "tools/list")
        assert server.kind == "SERVER" and server.parent_span_id == "00f067aa0ba902b7", server
        assert next(s for s in ours if s.name == "authenticate").parent_span_id == server.span_id
        assert server.service == "lookup_customer", server
        assert server.attributes["jsonrpc.request.id"] == "7"
        assert server.attributes["error.type"], server.attributes
        # Exported before the next poll (the receiver has them already), not before the response.
        assert receiver.received_at and api.response_at is not None
        assert api.response_at <= receiver.received_at[0] <= api.second_poll_at, (
            api.response_at, receiver.received_at, api.second_poll_at)


def test_a_task_run_event_runs_the_tool_in_the_creating_trace(tmp_path, processes) -> None:
    """The asynchronous invocation a task tool sends itself, through the real runtime loop:
    the function recognises it as a task run (not an API Gateway event), claims and ends the
    task record, answers null, and its SERVER span continues the creating request's trace."""
    import hashlib

    import boto3

    bin_path = FUNCTION_BIN.parent / "export_tickets"
    assert bin_path.exists(), f"{bin_path} is missing: run `cargo build --bin export_tickets`"
    _, ddb_url = processes.moto()
    ddb = boto3.client("dynamodb", endpoint_url=ddb_url, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    for table in ("tollgate-rt", "tollgate-rt-app"):
        ddb.create_table(
            TableName=table, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        )
    ddb.put_item(TableName="tollgate-rt-app", Item={
        "pk": {"S": "CUSTOMER#C-1001"}, "sk": {"S": "PROFILE"}, "customer_id": {"S": "C-1001"}})
    args = {"customer_id": "C-1001"}
    args_hash = hashlib.sha256(json.dumps(args, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    task_id = "0b8f4a52-2b7e-4c43-9d59-3e1f6f0c2a11"
    now = int(time.time() * 1000)
    n = lambda v: {"N": str(v)}  # noqa: E731
    ddb.put_item(TableName="tollgate-rt", Item={
        "pk": {"S": "TASK#bot"}, "sk": {"S": task_id}, "kind": {"S": "task"}, "tool": {"S": "export_tickets"},
        "state": {"S": "working"}, "created_ms": n(now), "updated_ms": n(now), "ttl_ms": n(600_000),
        "expires_ms": n(now + 600_000), "run_by_ms": n(now + 60_000), "args_hash": {"S": args_hash},
        "request_id": {"S": "req-0"}, "status_message": {"S": "The task is queued."},
        "expires_at_s": n(now // 1000 + 600)})
    trace_id = secrets.token_hex(16)
    event = {"tollgate_task": {
        "task_id": task_id,
        "principal": {"agent_id": "bot", "scopes": ["tickets:read"], "method": "api_key",
                      "credential_id": "k1", "budget": {"per_minute": None, "per_day": None, "tools": {}}},
        "tool": "export_tickets",
        "arguments": args,
        "trace": [["traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"]],
        "protocol_version": "2025-11-25",
    }}
    with one_event(
        bin_path, event, tmp_path, "export_tickets",
        AWS_ENDPOINT_URL_DYNAMODB=ddb_url, TOLLGATE_TABLE="tollgate-rt", TOLLGATE_APP_TABLE="tollgate-rt-app",
        EXPORT_TICKETS_DURATION_MS="0",
    ) as (api, receiver):
        assert api.response is None or api.response == {}, api.response  # `null` posted
        item = ddb.get_item(TableName="tollgate-rt", Key={"pk": {"S": "TASK#bot"}, "sk": {"S": task_id}})["Item"]
        assert item["state"]["S"] == "completed", item
        assert json.loads(item["result_json"]["S"])["structuredContent"]["customer_id"] == "C-1001"
        ours = [s for s in receiver.spans if s.trace_id == trace_id]
        server = next(s for s in ours if s.name == "tools/call export_tickets")
        assert server.kind == "SERVER" and server.parent_span_id == "00f067aa0ba902b7", server
        assert any(s.name == "handler export_tickets" and s.parent_span_id == server.span_id for s in ours), ours


class Recorder:
    """An HTTP server on loopback answering every request with `body`, keeping each request's
    method, path and headers."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                if length:
                    self.rfile.read(length)
                rec.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer  # noqa: N815
            do_POST = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_credentials_from_a_container_endpoint_sign_the_store_requests(tmp_path) -> None:
    """Where the platform serves the role's credentials from a container endpoint instead of
    the environment, the function fetches them (with the endpoint's authorization token) and
    signs its DynamoDB requests with them."""
    assert FUNCTION_BIN.exists(), f"{FUNCTION_BIN} is missing: run `make build-debug`"
    creds = Recorder(json.dumps({
        "AccessKeyId": "ASIACONTAINERTEST", "SecretAccessKey": "container-secret",
        "Token": "container-session-token", "Expiration": "2099-01-01T00:00:00Z",
    }).encode(), "application/json")
    store = Recorder(b"{}", "application/x-amz-json-1.0")  # GetItem: no such item
    event = json.loads(FIXTURE.read_text())
    try:
        with one_event(
            FUNCTION_BIN, event, tmp_path, "lookup_customer",
            without=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
            AWS_CONTAINER_CREDENTIALS_FULL_URI=f"{creds.url}/v1/credentials",
            AWS_CONTAINER_AUTHORIZATION_TOKEN="container-auth-token",
            AWS_ENDPOINT_URL_DYNAMODB=store.url,
            TOLLGATE_RESOURCE_URL="https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/mcp",
        ) as (api, _):
            # The fixture's key is unknown to an empty store: refused, after a signed lookup.
            assert api.response is not None and api.response["statusCode"] == 401, api.response
        assert creds.requests, "the container endpoint was never asked"
        method, path, headers = creds.requests[0]
        assert (method, path) == ("GET", "/v1/credentials")
        assert headers.get("authorization") == "container-auth-token", headers
        assert store.requests, "no store request"
        signed = [h for _, _, h in store.requests]
        assert all("Credential=ASIACONTAINERTEST/" in h.get("authorization", "") for h in signed), signed
        assert all(h.get("x-amz-security-token") == "container-session-token" for h in signed), signed
    finally:
        creds.close()
        store.close()


def test_without_credentials_no_store_request_is_sent_and_the_call_fails_as_unavailable(tmp_path) -> None:
    """No credentials anywhere in the environment: nothing reaches the store (no unsigned
    request), and the caller gets a server-side failure, not a refusal of its key."""
    assert FUNCTION_BIN.exists(), f"{FUNCTION_BIN} is missing: run `make build-debug`"
    store = Recorder(b"{}", "application/x-amz-json-1.0")
    event = json.loads(FIXTURE.read_text())
    try:
        with one_event(
            FUNCTION_BIN, event, tmp_path, "lookup_customer",
            without=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
            AWS_ENDPOINT_URL_DYNAMODB=store.url,
            TOLLGATE_RESOURCE_URL="https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/mcp",
        ) as (api, _):
            assert api.response is not None, "no response"
            assert api.response["statusCode"] >= 500, api.response
        assert store.requests == [], store.requests
    finally:
        store.close()
