"""The local DynamoDB / Secrets Manager / KMS server of `make dev` (tests/stack/moto_server.py)
answers no web page: no CORS allowance on any answer (preflight or request), 403 for a request
carrying an Origin header or a non-loopback Host (DNS rebinding), and it refuses to bind a
non-loopback address. Starts its own server on a free port (no stack needed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx2
import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "tests/stack/moto_server.py"
LIST_TABLES = {"X-Amz-Target": "DynamoDB_20120810.ListTables", "Content-Type": "application/x-amz-json-1.0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "MOTO_HOST": "127.0.0.1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx2.get(f"{url}/moto-api/", timeout=2, trust_env=False).status_code == 200:
                break
        except httpx2.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "moto did not start"
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_a_cross_origin_preflight_gets_no_cors_allowance(server) -> None:
    r = httpx2.options(f"{server}/", headers={
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-amz-target",
    }, trust_env=False)
    assert not [h for h in r.headers if h.lower().startswith("access-control-")], dict(r.headers)
    assert r.status_code == 403


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:9"])
def test_a_request_from_a_web_page_is_refused(server, origin) -> None:
    r = httpx2.post(f"{server}/", headers={**LIST_TABLES, "Origin": origin}, content=b"{}", trust_env=False)
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers
    assert "TableNames" not in r.text


def test_a_rebound_host_name_is_refused(server) -> None:
    r = httpx2.post(f"{server}/", headers={**LIST_TABLES, "Host": "attacker.example"}, content=b"{}",
                    trust_env=False)
    assert r.status_code == 403


def test_an_sdk_request_still_works(server) -> None:
    # The check can fail: the same request without Origin is served.
    r = httpx2.post(f"{server}/", headers={**LIST_TABLES, "Authorization": "AWS4-HMAC-SHA256 Credential=local/20261130/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0"},
                    content=b"{}", trust_env=False)
    assert r.status_code == 200, r.text
    assert "TableNames" in r.text


def test_a_non_loopback_bind_is_refused() -> None:
    proc = subprocess.run([sys.executable, str(SERVER), str(free_port())], capture_output=True, text=True,
                          env={**os.environ, "MOTO_HOST": "0.0.0.0"}, timeout=60)
    assert proc.returncode != 0
    assert "loopback" in proc.stderr
