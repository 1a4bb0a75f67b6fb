#!/usr/bin/env python3
"""Cold start and size of every function binary, measured from outside as Lambda pays them.

For each function (the gateway and every tool folder), the release binary is started as a
separate process with a clean environment (only what Lambda sets, plus the function's own
configuration as the SAM template gives it: `env -i` plus those variables) under a Lambda
Runtime API on loopback (standard-library HTTP server in this process) that hands it one
unauthenticated `tools/call`, answered 401 without the store. Timed with this process's
monotonic clock from just before the spawn to the first `/next` poll received and to the first
response posted, p50 / p99 over N spawns (default 30):

- new file: every spawn runs a fresh copy of the binary, written just before it (as after a
  deployment package is unpacked): the first exec of that file, with its pages still in the
  page cache from the write;
- disk: the same, with the fresh copy evicted from the page cache before the spawn (GNU
  `dd iflag=nocache`), so every page the start touches is read from this machine's disk;
- warm: the same file spawned again, its pages cached (after one unmeasured spawn).

The three modes are interleaved spawn by spawn, so the machine's noise falls on each alike. A
floor row times a Rust program of a few lines that only polls the Runtime API (built with
`rustc -O` at the start): what the spawn and this harness cost on their own, which every row
includes. Each row also gives the CPU time the process had used when its first poll arrived
(every thread's `/proc/<pid>/task/*/schedstat`, read while it waits for that poll's answer):
the spawn, the loader and the init, in CPU rather than wall time.

It prints each binary's size (as built, and stripped when it carries symbols), the arm64 size
when an arm64 build is there (`.aws-sam/build/<Function>/bootstrap` from `make build`, or
`target/aarch64-unknown-linux-gnu/release/<function>`), and, when `strace` is installed, every
file one start opens before its first poll.

    python3 tests/benches/cold_start.py [--dir target/release] [-n 30] [--only NAME]
                                        [--markdown target/bench/cold_start.md]

`make bench` runs it after building the functions with `cargo build --release` on their own
(one cargo invocation for the functions alone, so that no feature of a test or local-stack
crate is unified into them).
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def event(function: str) -> bytes:
    path = "/mcp" if function == "gateway" else f"/tools/{function}/mcp"
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": function, "arguments": {}}})
    return json.dumps({
        "version": "2.0", "routeKey": f"POST {path}", "rawPath": path, "rawQueryString": "",
        "headers": {"content-type": "application/json",
                    "accept": "application/json, text/event-stream",
                    "mcp-protocol-version": "2025-11-25"},
        "requestContext": {"accountId": "000000000000", "apiId": "bench", "domainName": "bench",
                           "domainPrefix": "bench", "requestId": "bench-1",
                           "routeKey": f"POST {path}", "stage": "$default",
                           "time": "01/Dec/2026:00:00:00 +0000", "timeEpoch": 0,
                           "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "198.51.100.7", "userAgent": "bench"}},
        "body": body, "isBase64Encoded": False,
    }).encode()


def lambda_env(function: str, api: str) -> dict[str, str]:
    """Lambda's own variables (the X-Ray daemon on loopback rather than its link-local
    address) and the function's configuration as the SAM template sets it. Nothing else: no
    HOME, no SSL_CERT_FILE / SSL_CERT_DIR."""
    env = {
        "AWS_LAMBDA_RUNTIME_API": api, "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/bench",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/01/[$LATEST]bench",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": "AWS_Lambda_provided.al2023", "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "ASIABENCHBENCHBENCH0",
        "AWS_SECRET_ACCESS_KEY": "bench", "AWS_SESSION_TOKEN": "bench",
        "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000", "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/var/runtime",
        "LANG": "en_US.UTF-8", "TZ": ":UTC", "PATH": "/usr/local/bin:/usr/bin/:/bin:/opt/bin",
        "_HANDLER": "bootstrap",
        "TOLLGATE_TABLE": "tollgate", "TOLLGATE_SERVICE": "tollgate",
        "TOLLGATE_RESOURCE_URL": "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/mcp",
        "TOLLGATE_AUTH_METHODS": "api_key",
        "TOLLGATE_HASH_KEY_SECRET":
            "arn:aws:secretsmanager:us-east-1:000000000000:secret:tollgate-hash-key",
    }
    if function == "gateway":
        env["TOLLGATE_FUNCTION_PREFIX"] = "tollgate-"
    return env


class RuntimeApi:
    """A Lambda Runtime API on loopback for one start: the first `/next` gets the event, a
    second poll is held open (the process is killed meanwhile)."""

    def __init__(self, function: str):
        self.marks: dict[str, float] = {}
        self.pid: int | None = None
        self.init_cpu: float | None = None
        self.status = None
        self.done = threading.Event()
        payload = event(function)
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Buffered: each answer's head and body leave in one write, as Lambda's Runtime API
            # (a Go net/http server) sends a small answer; the client then keeps the connection.
            wbufsize = 1 << 16

            def log_message(self, *_):
                pass

            def do_GET(self):
                now = time.perf_counter()
                if "next" in api.marks:
                    api.done.wait(30)
                    return
                api.marks["next"] = now
                api.init_cpu = cpu_of(api.pid)
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", "bench-1")
                self.send_header("Lambda-Runtime-Deadline-Ms",
                                 str(int(time.time() * 1000) + 10000))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                                 "arn:aws:lambda:us-east-1:000000000000:function:bench")
                self.send_header("Lambda-Runtime-Trace-Id",
                                 "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                now = time.perf_counter()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if "response" not in api.marks:
                    api.marks["response"] = now
                    try:
                        api.status = json.loads(body or b"{}").get("statusCode")
                    except ValueError:
                        api.status = None
                self.send_response(202)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                api.done.set()

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, *_):
                pass  # the held second poll's connection is reset when the process is killed

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.done.set()
        self.server.shutdown()
        self.server.server_close()


SETTLE = 0.05


def cpu_of(pid: int | None) -> float | None:
    """CPU time in seconds that every thread of `pid` has used so far (`schedstat`, in ns),
    None when unknown. Read while the process waits for its first event, it is what the start
    cost in CPU: the spawn (fork and exec), the loader and the init."""
    if pid is None:
        return None
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def spawn_once(binary: Path, function: str) -> tuple[float, float, float | None]:
    """One start of `binary`, until its first response: (exec -> first poll, exec -> first
    response) in seconds, and the CPU time the process used before its first poll (None when
    /proc could not tell)."""
    api = RuntimeApi(function)
    env = lambda_env(function, api.address)
    # A moment for the work before this spawn (the copy, its fsync, the eviction, the last
    # process's exit) to settle: each start is timed on an otherwise idle machine, as a cold
    # Lambda environment starts.
    time.sleep(SETTLE)
    try:
        start = time.perf_counter()
        proc = subprocess.Popen([str(binary)], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        api.pid = proc.pid
        ok = api.done.wait(20)
        proc.kill()
        proc.wait()
    finally:
        api.close()
    if not ok:
        sys.exit(f"{function}: no response within 20 s")
    if api.status != 401:
        sys.exit(f"{function}: answered {api.status}, not 401")
    return api.marks["next"] - start, api.marks["response"] - start, api.init_cpu


def fresh_copy(binary: Path, tmp: Path, n: int, evict: bool) -> Path:
    """A fresh copy of `binary`, written out (and, with `evict`, dropped from the page cache)."""
    copy = tmp / f"{binary.name}.{n}.{'disk' if evict else 'new'}"
    shutil.copyfile(binary, copy)
    os.chmod(copy, 0o755)
    with open(copy, "rb") as f:
        os.fsync(f.fileno())
    if evict:
        # GNU dd: `count=0` with `iflag=nocache` drops the whole file from the page cache.
        subprocess.run(["dd", f"if={copy}", "iflag=nocache", "count=0", "status=none"],
                       check=True)
    return copy


FLOOR_SOURCE = r"""
use std::io::{Read, Write};
fn main() {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").unwrap();
    let mut s = std::net::TcpStream::connect(&api).unwrap();
    write!(s, "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: {api}\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let _ = s.read(&mut buf).unwrap();
    let body = r#"{"statusCode":401}"#;
    let mut r = std::net::TcpStream::connect(&api).unwrap();
    write!(r, "POST /2018-06-01/runtime/invocation/bench-1/response HTTP/1.1\r\nHost: {api}\r\n\
               Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let _ = r.read(&mut buf).unwrap();
}
"""


def floor_binary(tmp: Path) -> Path | None:
    """The floor program, built with `rustc -O`; None when rustc is not on PATH."""
    rustc = shutil.which("rustc")
    if not rustc:
        return None
    src, out = tmp / "floor.rs", tmp / "floor"
    src.write_text(FLOOR_SOURCE)
    subprocess.run([rustc, "-O", "-C", "strip=symbols", "-o", str(out), str(src)], check=True,
                   capture_output=True)
    return out


def resident(path: Path) -> int | None:
    """Bytes of `path` in the page cache (`fincore`), when the tool is there."""
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True)
    try:
        return int(out.stdout.strip())
    except ValueError:
        return None


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round((len(s) - 1) * p))] * 1000


def row(samples: list[tuple[float, float, float | None]]) -> dict[str, float | None]:
    polls = [s[0] for s in samples]
    responses = [s[1] for s in samples]
    cpus = [s[2] for s in samples if s[2] is not None]
    return {"poll_p50": pct(polls, .5), "poll_p99": pct(polls, .99),
            "response_p50": pct(responses, .5), "response_p99": pct(responses, .99),
            "cpu_p50": pct(cpus, .5) if cpus else None}


MODES = ("new file", "disk", "warm")


def measure(function: str, binary: Path, tmp: Path, spawns: int) -> dict:
    samples: dict[str, list] = {m: [] for m in MODES}
    left = None
    spawn_once(binary, function)  # the page cache now holds the binary
    for n in range(spawns):
        for mode in MODES:
            if mode == "warm":
                samples[mode].append(spawn_once(binary, function))
                continue
            copy = fresh_copy(binary, tmp, n, evict=mode == "disk")
            if n == 0 and mode == "disk":
                left = resident(copy)
            samples[mode].append(spawn_once(copy, function))
            copy.unlink()
    return {**{m: row(samples[m]) for m in MODES}, "disk_resident_bytes": left}


def opens_at_init(function: str, binary: Path, tmp: Path) -> list[str] | None:
    """Files one start opens before its first poll (`strace`), None without strace."""
    if not shutil.which("strace"):
        return None
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(20)
    port = listener.getsockname()[1]
    trace = tmp / f"{function}.strace"
    # Nothing answers on this port after the connect: the trace ends at the first poll.
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", "trace=open,openat,connect", "-o", str(trace),
         str(binary)],
        env=lambda_env(function, f"127.0.0.1:{port}"), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn, _ = listener.accept()
        time.sleep(0.1)
        conn.close()
    except OSError:
        pass
    proc.kill()
    proc.wait()
    listener.close()
    opened = []
    marker = f"sin_port=htons({port})"
    for line in trace.read_text().splitlines():
        if "connect(" in line and marker in line:
            break
        if ("openat(" in line or "open(" in line) and "= -1" not in line and '"' in line:
            opened.append(line.split('"')[1])
    trace.unlink()
    return opened


def stripped_size(binary: Path, tmp: Path) -> int:
    """Size without symbols (the release profile strips them; a build with symbols for a
    size breakdown is stripped here to compare)."""
    out = subprocess.run(["file", "-b", str(binary)], capture_output=True, text=True).stdout
    if "not stripped" not in out or not shutil.which("strip"):
        return binary.stat().st_size
    copy = tmp / f"{binary.name}.stripped"
    subprocess.run(["strip", "-o", str(copy), str(binary)], check=True)
    size = copy.stat().st_size
    copy.unlink()
    return size


def arm64_size(function: str) -> int | None:
    logical = "".join(p.capitalize() for p in function.split("_")) + "Function"
    for candidate in (ROOT / ".aws-sam/build" / logical / "bootstrap",
                      ROOT / "target/aarch64-unknown-linux-gnu/release" / function,
                      ROOT / "target/lambda" / function / "bootstrap"):
        if candidate.exists():
            return candidate.stat().st_size
    return None


def functions() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "functions").glob("*/Cargo.toml"))


def cpu_cell(r: dict) -> str:
    return "-" if r["cpu_p50"] is None else f"{r['cpu_p50']:.1f}"


def mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1_000_000:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=str(ROOT / "target/release"),
                    help="where the function binaries are (default target/release)")
    ap.add_argument("-n", "--spawns", type=int, default=30)
    ap.add_argument("--only", default="", help="only the functions whose names contain this")
    ap.add_argument("--markdown", help="also write the table here (Markdown)")
    args = ap.parse_args()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    header = (f"cold start, {args.spawns} spawns per row, clean Lambda environment, Runtime API "
              f"on loopback, a 401 call; {when}, {platform.machine()}, {os.cpu_count()} CPUs, "
              f"load average {load:.1f}")
    print(header, file=sys.stderr)
    lines = ["| function | size MB (x86_64, stripped) | arm64 MB | mode | exec -> first poll "
             "p50 / p99 ms | exec -> first response p50 / p99 ms | CPU to first poll p50 ms |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    tmp = Path(tempfile.mkdtemp(prefix="cold-", dir=ROOT / "target"))

    def emit(cells: list[str]) -> None:
        lines.append("| " + " | ".join(cells) + " |")
        print(f"{cells[0]:<16} {cells[1]:>6} {cells[2]:>6}  {cells[3]:<8}  first poll "
              f"{cells[4]:>13} ms   first response {cells[5]:>13} ms   CPU {cells[6]:>5} ms",
              file=sys.stderr, flush=True)

    try:
        floor = floor_binary(tmp)
        if floor is None:
            notes.append("floor: rustc not on PATH, not measured")
        else:
            spawn_once(floor, "floor")
            r = row([spawn_once(floor, "floor") for _ in range(args.spawns)])
            emit(["(floor)", mb(floor.stat().st_size), "-", "warm",
                  f"{r['poll_p50']:.1f} / {r['poll_p99']:.1f}",
                  f"{r['response_p50']:.1f} / {r['response_p99']:.1f}", cpu_cell(r)])
        for function in [f for f in functions() if args.only in f]:
            binary = Path(args.dir) / function
            if not binary.exists():
                sys.exit(f"build it first: cargo build --release -p {function}")
            size, arm = stripped_size(binary, tmp), arm64_size(function)
            m = measure(function, binary, tmp, args.spawns)
            for mode in MODES:
                r = m[mode]
                first = mode == MODES[0]
                cells = [function if first else "", mb(size) if first else "",
                         mb(arm) if first else "", mode,
                         f"{r['poll_p50']:.1f} / {r['poll_p99']:.1f}",
                         f"{r['response_p50']:.1f} / {r['response_p99']:.1f}", cpu_cell(r)]
                emit(cells)
            if m["disk_resident_bytes"]:
                notes.append(f"{function}: the page cache kept {m['disk_resident_bytes']} bytes "
                             "of an evicted copy (not fully read from disk)")
            opened = opens_at_init(function, binary, tmp)
            notes.append(f"{function}: strace not installed" if opened is None else
                         f"{function}: {len(opened)} files opened before the first poll: "
                         + " ".join(opened))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for note in notes:
        print(note, file=sys.stderr)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join([header, "", *lines, "", *notes, ""]))


if __name__ == "__main__":
    main()
