"""End-to-end fixtures: one real local stack per test session.

The session starts a single-threaded moto server (DynamoDB protocol) and `tollgate-dev` on free
loopback ports, in a private working directory (so the demo token it writes to
`target/dev/demo-token` never clobbers a developer's `make dev`), with stdout and stderr captured
to files.  Tests talk to it over HTTP (raw `httpx2` or the official MCP Python SDK) and drive the
admin CLI (`target/debug/tollgate`) against the same DynamoDB server.

Binaries come from `target/debug/` (build them with
`cargo build --bin tollgate-dev --bin tollgate`); `TOLLGATE_DEV_BIN` / `TOLLGATE_BIN` override.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx2
import pytest

from helpers import (
    ACCEPT,
    ALL_SCOPES,
    ALLOWED_ORIGIN,
    APP_TABLE,
    KEY_CACHE_TTL_SECS,
    MAX_BODY_BYTES,
    TABLE,
    TOOL_SCOPES,
    unique,
)
from span_sinks import SpanSinks

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DEV_BIN = Path(os.environ.get("TOLLGATE_DEV_BIN", REPO / "target" / "debug" / "tollgate-dev"))
CLI_BIN = Path(os.environ.get("TOLLGATE_BIN", REPO / "target" / "debug" / "tollgate"))
MOTO_SERVER = REPO / "tests" / "stack" / "moto_server.py"

GENEROUS_BUDGET = 100_000

_started: list[subprocess.Popen[bytes]] = []


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(_free_port())
    return sorted(ports)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    """Stops one process we started, by its pid: polite signal first, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


@atexit.register
def _stop_all() -> None:  # a safety net if pytest dies before fixture teardown
    for proc in reversed(_started):
        _stop(proc, signal.SIGTERM)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class _Endpoints:
    """URLs and log readers shared by the session stack and extra `tollgate-dev` processes
    (dataclasses with `port`, `stdout_path` and `stderr_path`)."""

    port: int
    stdout_path: Path
    stderr_path: Path

    @property
    def base(self) -> str:
        scheme = "https" if getattr(self, "env", {}).get("TOLLGATE_DEV_TLS_CERT") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"{self.base}/mcp"

    @property
    def metadata_url(self) -> str:
        """Path-specific RFC 9728 metadata URL of the gateway's resource (/mcp)."""
        return self.gateway_url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp", 1)

    def tool_url(self, tool: str) -> str:
        return f"{self.base}/tools/{tool}/mcp"

    # --- logs -----------------------------------------------------------------------------
    def stdout_text(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stdout_offset(self) -> int:
        return self.stdout_path.stat().st_size

    def stdout_lines_since(self, offset: int) -> list[str]:
        with self.stdout_path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        # Only complete lines: a line being written right now is not ours to judge yet.
        text = data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        return [line for line in lines[:-1] if line.strip()]

    def audit_since(self, offset: int) -> list[dict[str, Any]]:
        records = []
        for line in self.stdout_lines_since(offset):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("kind") == "audit":
                records.append(rec)
        return records


@dataclass
class Stack(_Endpoints):
    port: int
    carrier_port: int
    ddb_url: str
    workdir: Path
    stdout_path: Path
    stderr_path: Path
    demo_token: str
    env: dict[str, str] = field(repr=False)
    # Span receivers the stack exports to (OTLP/HTTP and X-Ray UDP); None for private stacks.
    spans: SpanSinks | None = field(default=None, repr=False)

    # --- URLs -----------------------------------------------------------------------------

    def audit_for(self, action: Callable[[], Any], expect: int = 1, settle: float = 0.3) -> tuple[Any, list[dict]]:
        """Runs `action`; returns its value and the audit records written while it ran.

        Waits until at least `expect` records appeared (up to 3 s), then `settle` seconds more so
        that a surplus record would be caught too.
        """
        offset = self.stdout_offset()
        value = action()
        deadline = time.monotonic() + 3.0
        while len(self.audit_since(offset)) < expect and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        return value, self.audit_since(offset)

    def assert_alive(self) -> None:
        for proc in self._procs:
            assert proc.poll() is None, f"a stack process exited early:\n{self.stderr_text()[-3000:]}"

    # --- admin CLI ------------------------------------------------------------------------
    def cli(self, *args: str, json_output: bool = True, check: bool = True) -> CliResult:
        cmd = [str(CLI_BIN), *(["--json"] if json_output else []), *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        result = CliResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"tollgate {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return result

    def create_agent(self, agent_id: str | None = None, scopes: list[str] | tuple[str, ...] = ()) -> str:
        agent_id = agent_id or unique("e2e")
        argv = ["agents", "create", agent_id]
        for s in scopes:
            argv += ["--scope", s]
        self.cli(*argv)
        return agent_id

    def create_key(self, agent_id: str, expires_in: str | None = None) -> dict[str, Any]:
        argv = ["keys", "create", agent_id]
        if expires_in:
            argv += ["--expires-in", expires_in]
        created = self.cli(*argv).json()
        assert created["token"].startswith("tg_"), created
        return created

    def agent_with_key(self, scopes: list[str] | tuple[str, ...] = tuple(ALL_SCOPES), prefix: str = "e2e") -> tuple[str, dict[str, Any]]:
        """A fresh agent with the given scopes and one key: (agent_id, key JSON with `token`)."""
        agent_id = self.create_agent(unique(prefix), scopes)
        return agent_id, self.create_key(agent_id)

    # --- DynamoDB (to prove the CLI wrote nothing) -----------------------------------------
    def table_items(self) -> list[dict[str, Any]]:
        import boto3

        client = boto3.client(
            "dynamodb",
            endpoint_url=self.ddb_url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": TABLE}
        while True:
            page = client.scan(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(items, key=lambda i: json.dumps(i, sort_keys=True))

    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)


def _wait_http(url: str, ok: Callable[[httpx2.Response], bool], proc: subprocess.Popen[bytes], what: str, log: Path, method: str = "GET", **kw: Any) -> None:
    deadline = time.monotonic() + 60
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            resp = httpx2.request(method, url, timeout=2, trust_env=False, **kw)
            if ok(resp):
                return
            last = f"HTTP {resp.status_code}"
        except httpx2.HTTPError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready at {url}: {last}\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for binary in (DEV_BIN, CLI_BIN):
        if not binary.exists():
            pytest.exit(f"{binary} is missing: run `cargo build --bin tollgate-dev --bin tollgate` first", returncode=2)

    workdir = tmp_path_factory.mktemp("stack")
    ddb_port, port, carrier_port = _free_ports(3)
    # Every request of the suite is traced and exported to real receivers on loopback.
    sinks = SpanSinks()
    ddb_url = f"http://127.0.0.1:{ddb_port}"

    # A clean environment: nothing from a developer's shell (TOLLGATE_*, AWS profile, endpoints)
    # may leak into the stack under test.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOLLGATE_", "AWS_", "OTEL_", "TRACK_SHIPMENT_"))
    }
    env.update(
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="local",
        AWS_SECRET_ACCESS_KEY="local",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL_DYNAMODB=ddb_url,
        TOLLGATE_TABLE=TABLE,
        TOLLGATE_APP_TABLE=APP_TABLE,
        TOLLGATE_KEY_CACHE_TTL_SECS=str(KEY_CACHE_TTL_SECS),
        TOLLGATE_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        TOLLGATE_ALLOWED_ORIGINS=ALLOWED_ORIGIN,
        # Budgets out of the way of functional tests (test_budgets.py sets its own, per agent).
        TOLLGATE_AGENT_PER_MINUTE=str(GENEROUS_BUDGET),
        TOLLGATE_AGENT_PER_DAY=str(GENEROUS_BUDGET * 10),
        TOLLGATE_POLICY_CACHE_TTL_SECS="1",
        # Functional tests are not about the store's deadline: on a loaded 2-core machine the
        # single-threaded moto can take longer than the 800 ms default, and a fail-closed tool
        # then answers 503 (seen on open_ticket). The store gets more time here; the tests of
        # the deadline itself (test_budget_concurrency.py, "store down or slow") set 800 ms.
        TOLLGATE_BUDGET_TIMEOUT_MS="10000",
        TOLLGATE_RESOURCE_URL=f"http://127.0.0.1:{port}/mcp",
        TRACK_SHIPMENT_API_URL=f"http://127.0.0.1:{carrier_port}",
        PORT=str(port),
        RUST_BACKTRACE="0",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        **sinks.env(),
    )

    moto_log = workdir / "moto.log"
    with moto_log.open("wb") as out:
        moto = subprocess.Popen(
            [PYTHON, str(MOTO_SERVER), str(ddb_port)],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    _started.append(moto)
    procs = [moto]
    try:
        _wait_http(f"{ddb_url}/moto-api/", lambda r: r.status_code < 500, moto, "moto", moto_log)

        stdout_path = workdir / "stack.stdout"
        stderr_path = workdir / "stack.stderr"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            dev = subprocess.Popen(
                [str(DEV_BIN)], cwd=workdir, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )
        _started.append(dev)
        procs.append(dev)
        _wait_http(
            f"http://127.0.0.1:{port}/mcp",
            lambda r: r.status_code == 401,
            dev,
            "tollgate-dev",
            stderr_path,
            method="POST",
            headers={"Content-Type": "application/json", "Accept": ACCEPT},
            content=b'{"jsonrpc":"2.0","id":0,"method":"tools/list"}',
        )
        token_file = workdir / "target" / "dev" / "demo-token"
        demo_token = token_file.read_text().strip()
        stack = Stack(
            port=port,
            carrier_port=carrier_port,
            ddb_url=ddb_url,
            workdir=workdir,
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            demo_token=demo_token,
            env=env,
            spans=sinks,
            _procs=procs,
        )
        # The example tools ship low global budgets (open_ticket: 6/min); a test run calls them
        # far more often. Raise them before the first tools/call, so no instance cached a policy.
        for tool in TOOL_SCOPES:
            stack.cli("budgets", "set-tool", tool, "--per-minute", str(GENEROUS_BUDGET),
                      "--burst", str(GENEROUS_BUDGET))
        yield stack
    finally:
        for proc in reversed(procs):
            _stop(proc)
            if proc in _started:
                _started.remove(proc)
        sinks.close()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def token(stack: Stack) -> str:
    """A bearer token of a fresh agent (unique per test) holding every tool scope."""
    return stack.agent_with_key(ALL_SCOPES, prefix="t")[1]["token"]


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=30, trust_env=False) as client:
        yield client


_workdirs: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _remember_stack_dir(stack: Stack) -> None:
    _workdirs.append(stack.workdir)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int) -> None:
    """On failure, say where the stack's captured output is."""
    if exitstatus != 0 and _workdirs:
        d = _workdirs[0]
        terminalreporter.write_line(
            f"tollgate stack logs: {d / 'stack.stdout'} (JSON logs + audit), {d / 'stack.stderr'}, {d / 'moto.log'}"
        )


# --- extra processes ------------------------------------------------------------------------
# Additive helpers for tests that need more than the session stack: extra `tollgate-dev`
# instances on the session's DynamoDB server (several "Lambda instances" sharing one store), or
# a private stack with its own moto that a test may stop or kill. Every process started here is
# stopped, by its pid, when the fixture that started it ends (a SIGSTOPped one gets SIGCONT
# first). The session `stack` fixture above does not use any of this.


@dataclass
class DevProcess(_Endpoints):
    """One `tollgate-dev` process with its own port and working directory."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    stdout_path: Path
    stderr_path: Path
    env: dict[str, str] = field(repr=False)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crashed or recycled instance: no graceful shutdown."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def dev_env(base_env: dict[str, str], port: int, *, ddb_url: str | None = None,
            carrier_port: int | None = None, **overrides: str) -> dict[str, str]:
    """The environment of one more `tollgate-dev` on `port`, derived from `base_env`.

    Without `carrier_port` the process starts no carrier API of its own
    (`TOLLGATE_DEV_CARRIER=0`) and `track_shipment` keeps calling the one `base_env` points at.
    """
    env = dict(base_env)
    env.update(PORT=str(port), TOLLGATE_RESOURCE_URL=f"http://127.0.0.1:{port}/mcp")
    if ddb_url is not None:
        env["AWS_ENDPOINT_URL_DYNAMODB"] = ddb_url
    if carrier_port is None:
        env["TOLLGATE_DEV_CARRIER"] = "0"
    else:
        env.pop("TOLLGATE_DEV_CARRIER", None)
        env["TRACK_SHIPMENT_API_URL"] = f"http://127.0.0.1:{carrier_port}"
    env.update(overrides)
    if env.get("TOLLGATE_DEV_TLS_CERT") and "TOLLGATE_RESOURCE_URL" not in overrides:
        env["TOLLGATE_RESOURCE_URL"] = f"https://127.0.0.1:{port}/mcp"
    return env


class Processes:
    """Starts moto servers and `tollgate-dev` processes; stops them all in `close()`."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self._procs: list[subprocess.Popen[bytes]] = []

    def _track(self, proc: subprocess.Popen[bytes]) -> None:
        self._procs.append(proc)
        _started.append(proc)

    def moto(self) -> tuple[subprocess.Popen[bytes], str]:
        """A fresh single-threaded moto server: (process, endpoint URL)."""
        workdir = self._tmp.mktemp("moto")
        port = _free_port()
        log = workdir / "moto.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TOLLGATE_", "AWS_", "OTEL_", "TRACK_SHIPMENT_"))}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [PYTHON, str(MOTO_SERVER), str(port)],
                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self._track(proc)
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/moto-api/", lambda r: r.status_code < 500, proc, "moto", log)
        return proc, url

    def dev(self, env: dict[str, str]) -> DevProcess:
        """Starts `tollgate-dev` with `env` (see `dev_env`) in a fresh working directory and
        waits until it answers."""
        return self._wait_dev(self._spawn_dev(env))

    def _spawn_dev(self, env: dict[str, str]) -> DevProcess:
        workdir = self._tmp.mktemp("dev")
        port = int(env["PORT"])
        stdout_path, stderr_path = workdir / "stack.stdout", workdir / "stack.stderr"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                [str(DEV_BIN)], cwd=workdir, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )
        self._track(proc)
        return DevProcess(proc, port, workdir, stdout_path, stderr_path, env)

    @staticmethod
    def _wait_dev(dev: DevProcess) -> DevProcess:
        # Readiness only: a TLS instance's certificate is checked by the tests that use it.
        tls = {"verify": False} if dev.base.startswith("https") else {}
        _wait_http(
            dev.gateway_url, lambda r: r.status_code == 401, dev.proc, "tollgate-dev",
            dev.stderr_path, method="POST", **tls,
            headers={"Content-Type": "application/json", "Accept": ACCEPT},
            content=b'{"jsonrpc":"2.0","id":0,"method":"tools/list"}',
        )
        return dev

    def extra_instance(self, stack: "Stack", **overrides: str) -> DevProcess:
        """One more instance of the session stack: same DynamoDB server and tables, its own
        port and working directory, the session's carrier API."""
        return self.dev(dev_env(stack.env, _free_port(), **overrides))

    def extra_instances(self, stack: "Stack", n: int, **overrides: str) -> list[DevProcess]:
        """`n` more instances of the session stack, started together."""
        ports = _free_ports(n)
        spawned = [self._spawn_dev(dev_env(stack.env, port, **overrides)) for port in ports]
        return [self._wait_dev(d) for d in spawned]

    def private_stack(self, base_env: dict[str, str], **overrides: str) -> tuple[Stack, subprocess.Popen[bytes], DevProcess]:
        """A whole stack of its own (moto, `tollgate-dev`, carrier API), for tests that break
        its store: (Stack for the CLI and URLs, the moto process, the dev process)."""
        moto, ddb_url = self.moto()
        port, carrier_port = _free_ports(2)
        env = dev_env(base_env, port, ddb_url=ddb_url, carrier_port=carrier_port, **overrides)
        dev = self.dev(env)
        demo_token = (dev.workdir / "target" / "dev" / "demo-token").read_text().strip()
        stack = Stack(
            port=port, carrier_port=carrier_port, ddb_url=ddb_url, workdir=dev.workdir,
            stdout_path=dev.stdout_path, stderr_path=dev.stderr_path, demo_token=demo_token,
            env=env, _procs=[moto, dev.proc],
        )
        return stack, moto, dev

    def close(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)  # in case a test left it stopped
                except ProcessLookupError:
                    pass
            _stop(proc)
            if proc in _started:
                _started.remove(proc)
        self._procs.clear()


@pytest.fixture
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Extra processes that live for one test."""
    procs = Processes(tmp_path_factory)
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Extra processes shared by the tests of one module."""
    procs = Processes(tmp_path_factory)
    try:
        yield procs
    finally:
        procs.close()
