"""Starts a local stack for the outside benches (`make bench`'s cost and CPU sections, `make
load`): a single-threaded moto server, optionally the counting proxy in front of it, and one or
more `tollgate-dev` release instances sharing it, the way tests/e2e/conftest.py starts them.

Every process is started here and stopped here, by its pid.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
RELEASE = REPO / "target" / "release"
DEV_BIN = Path(os.environ.get("TOLLGATE_DEV_BIN", RELEASE / "tollgate-dev")).resolve()
CLI_BIN = Path(os.environ.get("TOLLGATE_BIN", RELEASE / "tollgate")).resolve()
TABLE = "tollgate-bench"
APP_TABLE = "tollgate-bench-app"
VERSION = "2025-11-25"
CALL_BODY = {"name": "lookup_customer", "arguments": {"email": "ada@example.com"}}


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def lease_env(mode: str) -> dict[str, str]:
    """`exact` or `leases`: the budget mode's environment (TOLLGATE_LEASES)."""
    if mode not in ("exact", "leases"):
        raise ValueError(f"mode must be exact or leases, not {mode}")
    return {"TOLLGATE_LEASES": "off" if mode == "exact" else "on"}


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, method: str = "GET", ok=lambda s: s < 500) -> None:
    deadline = time.monotonic() + float(os.environ.get("BENCH_START_SECS", "60"))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, method=method, data=b'{"jsonrpc":"2.0","id":0,"method":"tools/list"}' if method == "POST" else None,
                                         headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if ok(r.status):
                    return
        except urllib.error.HTTPError as e:
            if ok(e.code):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready at {url}")


@dataclass
class Instance:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, route: str) -> str:
        """`gateway` -> /mcp, `direct` -> /tools/lookup_customer/mcp."""
        return f"http://127.0.0.1:{self.port}" + ("/mcp" if route == "gateway" else "/tools/lookup_customer/mcp")

    def path(self, route: str) -> str:
        return "/mcp" if route == "gateway" else "/tools/lookup_customer/mcp"

    def stdout(self) -> Path:
        return self.workdir / "stack.stdout"

    def cpu_ticks(self) -> int:
        """utime + stime of the whole process (every thread), in clock ticks."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[int, int]:
        """(utime, stime) of the whole process, in clock ticks."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])


@dataclass
class Stack:
    """moto (+ counting proxy) + `instances` tollgate-dev processes."""

    instances: int = 1
    proxy: bool = True
    env_extra: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    live: list[Instance] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tollgate-bench-")))
    env: dict[str, str] = field(default_factory=dict)
    token: str = ""
    proxy_url: str | None = None

    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def start(self) -> None:
        for b in (DEV_BIN, CLI_BIN):
            if not b.exists():
                raise SystemExit(f"{b} is missing: cargo build --release --bin tollgate-dev --bin tollgate")
        moto_port, proxy_port = free_ports(2)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLGATE_", "AWS_", "OTEL_", "TRACK_SHIPMENT_"))}
        moto = self._spawn([PYTHON, str(REPO / "tests/stack/moto_server.py"), str(moto_port)], self.workdir / "moto.log", base, self.workdir)
        moto_url = f"http://127.0.0.1:{moto_port}"
        _wait(f"{moto_url}/moto-api/", moto, "moto")
        ddb_url = moto_url
        if self.proxy:
            p = self._spawn([PYTHON, str(Path(__file__).with_name("store_proxy.py")), str(proxy_port), moto_url],
                            self.workdir / "proxy.log", base, self.workdir)
            ddb_url = self.proxy_url = f"http://127.0.0.1:{proxy_port}"
            _wait(f"{ddb_url}/__counts", p, "store proxy")
        self.env = dict(base)
        self.env.update(
            AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local", AWS_EC2_METADATA_DISABLED="true",
            AWS_ENDPOINT_URL_DYNAMODB=ddb_url, AWS_ENDPOINT_URL_SECRETS_MANAGER=ddb_url,
            TOLLGATE_HASH_KEY_SECRET="tollgate-bench/hash-key",
            TOLLGATE_TABLE=TABLE, TOLLGATE_APP_TABLE=APP_TABLE, TOLLGATE_DEV_CARRIER="0",
            TOLLGATE_AGENT_PER_MINUTE="100000", TOLLGATE_AGENT_PER_DAY="10000000",
            RUST_BACKTRACE="0", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
        )
        self.env.update(self.env_extra)
        ports = free_ports(self.instances)
        for i, port in enumerate(ports):
            wd = self.workdir / f"dev{i}"
            wd.mkdir()
            env = dict(self.env, PORT=str(port), TOLLGATE_RESOURCE_URL=f"http://127.0.0.1:{port}/mcp")
            with (wd / "stack.stdout").open("wb") as out, (wd / "stack.stderr").open("wb") as err:
                p = subprocess.Popen([str(DEV_BIN)], cwd=wd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            self.procs.append(p)
            self.live.append(Instance(p, port, wd))
            if i == 0:  # the first instance creates the tables; the others then start together
                _wait(f"http://127.0.0.1:{port}/mcp", p, "tollgate-dev", method="POST", ok=lambda s: s == 401)
        for inst in self.live[1:]:
            _wait(inst.url("gateway"), inst.proc, "tollgate-dev", method="POST", ok=lambda s: s == 401)
        self.token = (self.live[0].workdir / "target/dev/demo-token").read_text().strip()
        # lookup_customer ships 120/min; the benches set their own tool budget where it matters.
        self.cli("budgets", "set-tool", "lookup_customer", "--per-minute", "1000000", "--burst", "1000000")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self.procs.clear()
        if not os.environ.get("BENCH_KEEP"):  # BENCH_KEEP=1 keeps the logs for a look
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- admin CLI and counts ------------------------------------------------------------------
    def cli(self, *args: str) -> str:
        r = subprocess.run([str(CLI_BIN), *args], env=self.env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"tollgate {' '.join(args)}: {r.stderr}")
        return r.stdout

    def agent(self, agent_id: str, per_minute: int, per_day: int) -> str:
        """A new agent with customers:read and the given budgets; returns its token."""
        self.cli("agents", "create", agent_id, "--scope", "customers:read")
        self.cli("budgets", "set-agent", agent_id, "--per-minute", str(per_minute), "--per-day", str(per_day))
        return json.loads(self.cli("--json", "keys", "create", agent_id))["token"]

    def counts(self) -> dict[str, Any]:
        assert self.proxy_url, "started without the counting proxy"
        with urllib.request.urlopen(f"{self.proxy_url}/__counts", timeout=10) as r:
            return json.loads(r.read())

    def reset_counts(self) -> None:
        assert self.proxy_url
        urllib.request.urlopen(urllib.request.Request(f"{self.proxy_url}/__reset", method="POST"), timeout=10).read()


def headers(token: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {token}", "MCP-Protocol-Version": VERSION}


def call_body(i: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": CALL_BODY}).encode()


class Caller:
    """One keep-alive HTTP connection to one instance (what an agent's client keeps)."""

    def __init__(self, inst: Instance, token: str, route: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=60)
        self.path = inst.path(route)
        self.headers = headers(token)
        self.n = 0

    def call(self) -> tuple[int, bytes]:
        self.n += 1
        self.conn.request("POST", self.path, body=call_body(self.n), headers=self.headers)
        r = self.conn.getresponse()
        return r.status, r.read()

    def close(self) -> None:
        self.conn.close()


def ok_result(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        return not json.loads(body).get("result", {}).get("isError", True)
    except ValueError:
        return False
