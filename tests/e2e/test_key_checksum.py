"""Bearer keys carry a checksum (README "Per-agent bearer keys"): a random, mistyped or forged
key is refused with 401 before any store read, counted from outside by the counting proxy of the
benches (tests/benches/store_proxy.py) between one more `tollgate-dev` instance and the
session's DynamoDB-protocol server; a key with a valid checksum and an unknown id costs one
read (so the counter is seen to count), and an issued key works."""

from __future__ import annotations

import secrets
import subprocess
import time
from typing import Iterator

import httpx2
import pytest

from conftest import PYTHON, REPO, _free_port, _started, _stop, dev_env
from helpers import KEY_ID_ALPHABET, TABLE, rpc_error, rpc_result, tool_call, with_checksum

ADA = {"email": "ada@example.com"}
GET_ITEM = f"DynamoDB_20120810.GetItem {TABLE}"


class Proxy:
    def __init__(self, url: str) -> None:
        self.url = url

    def key_reads(self) -> int:
        ops = httpx2.get(f"{self.url}/__counts", timeout=10, trust_env=False).json()["ops"]
        return ops.get(GET_ITEM, {}).get("requests", 0)

    def reset(self) -> None:
        httpx2.post(f"{self.url}/__reset", timeout=10, trust_env=False)


@pytest.fixture(scope="module")
def proxy(stack) -> Iterator[Proxy]:
    port = _free_port()
    proc = subprocess.Popen([PYTHON, str(REPO / "tests/benches/store_proxy.py"), str(port), stack.ddb_url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    _started.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx2.get(f"{url}/__counts", timeout=2, trust_env=False)
            break
        except httpx2.TransportError:
            assert proc.poll() is None and time.monotonic() < deadline, "store proxy did not start"
            time.sleep(0.05)
    try:
        yield Proxy(url)
    finally:
        _stop(proc)
        if proc in _started:
            _started.remove(proc)


@pytest.fixture(scope="module")
def counted(stack, proxy, module_processes):
    """One more instance of the session stack whose every store request goes through the proxy."""
    return module_processes.dev(dev_env(stack.env, _free_port(), ddb_url=proxy.url))


def forged(token: str) -> str:
    """The token with one check character changed: the checksum no longer matches."""
    last = token[-1]
    return token[:-1] + ("a" if last != "a" else "b")


def random_checked_shape() -> str:
    """A token of today's shape with random check characters (what a flood or a scanner sends)."""
    kid = "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(12))
    check = "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(6))
    return f"tg_{kid}_{secrets.token_urlsafe(32)[:43]}{check}"


def test_a_forged_key_is_401_without_a_store_read(stack, counted, proxy, http) -> None:
    _, key = stack.agent_with_key(["customers:read"])
    token = key["token"]
    assert len(token) == 65 and with_checksum(token[:-6]) == token, token[:15]
    url = counted.tool_url("lookup_customer")
    proxy.reset()
    for i, bad in enumerate([forged(token), token[:-3], token[:-1], token + "a", random_checked_shape(), random_checked_shape()]):
        resp = tool_call(http, url, bad, "lookup_customer", ADA, id=i)
        err = rpc_error(resp, 401, -31001, id=i)
        assert err["data"]["reason"] == "unknown_token", err
        assert 'error="invalid_token"' in resp.headers.get("www-authenticate", "")
    assert proxy.key_reads() == 0

    # A valid checksum on an id never issued: exactly one read (the counter counts), refused.
    unknown = with_checksum(f"tg_{''.join(secrets.choice(KEY_ID_ALPHABET) for _ in range(12))}_"
                            f"{secrets.token_urlsafe(32)[:43]}")
    rpc_error(tool_call(http, url, unknown, "lookup_customer", ADA, id=10), 401, -31001, id=10)
    assert proxy.key_reads() == 1
    # The issued key works on this instance; a forgery of it is still refused offline.
    assert rpc_result(tool_call(http, url, token, "lookup_customer", ADA, id=11), id=11)["isError"] is False
    reads = proxy.key_reads()
    rpc_error(tool_call(http, url, forged(token), "lookup_customer", ADA, id=12), 401, -31001, id=12)
    assert proxy.key_reads() == reads
