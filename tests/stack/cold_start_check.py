#!/usr/bin/env python3
"""Cross-check of the cold-start bench from outside it (standard library only).

Starts BINARY N times (default 30) under a minimal Lambda Runtime API on loopback, with a
clean environment (what Lambda sets, plus the function's configuration), hands it one
unauthenticated call and prints exec -> first /next poll and exec -> first response, p50 and
p99, for the warm page cache (the same file each time) and, with --cold, for a fresh copy of
the binary evicted from the page cache before each spawn (GNU dd iflag=nocache).

    tests/stack/cold_start_check.py target/release/lookup_customer [--cold] [-n 30]
"""

import argparse
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time


def event(function):
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
                           "time": "30/Nov/2026:00:00:00 +0000", "timeEpoch": 0,
                           "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "198.51.100.7", "userAgent": "bench"}},
        "body": body, "isBase64Encoded": False,
    }).encode()


def lambda_env(function, api):
    env = {
        "AWS_LAMBDA_RUNTIME_API": api, "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/bench", "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
        "AWS_EXECUTION_ENV": "AWS_Lambda_provided.al2023", "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "ASIABENCHBENCHBENCH0",
        "AWS_SECRET_ACCESS_KEY": "bench", "AWS_SESSION_TOKEN": "bench",
        "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000", "LAMBDA_TASK_ROOT": "/var/task",
        "LANG": "en_US.UTF-8", "TZ": ":UTC", "PATH": "/usr/local/bin:/usr/bin/:/bin:/opt/bin",
        "TOLLGATE_TABLE": "tollgate", "TOLLGATE_SERVICE": "tollgate",
        "TOLLGATE_RESOURCE_URL": "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/mcp",
        "TOLLGATE_AUTH_METHODS": "api_key",
        "TOLLGATE_HASH_KEY_SECRET":
            "arn:aws:secretsmanager:us-east-1:000000000000:secret:tollgate-hash-key",
    }
    if function == "gateway":
        env["TOLLGATE_FUNCTION_PREFIX"] = "tollgate-"
    return env


def spawn_once(binary, function):
    marks = {}
    done = threading.Event()
    payload = event(function)

    class Api(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_GET(self):
            if "next" in marks:
                time.sleep(30)  # the second poll: the process is killed meanwhile
                return
            marks["next"] = time.perf_counter()
            self.send_response(200)
            self.send_header("Lambda-Runtime-Aws-Request-Id", "bench-1")
            self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 10000))
            self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                             "arn:aws:lambda:us-east-1:000000000000:function:bench")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):
            marks.setdefault("response", time.perf_counter())
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            marks["status"] = json.loads(body or b"{}").get("statusCode")
            self.send_response(202)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            done.set()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = lambda_env(function, f"127.0.0.1:{server.server_address[1]}")
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = done.wait(20)
    proc.kill()
    proc.wait()
    server.shutdown()
    if not ok:
        sys.exit(f"{binary}: no response within 20 s")
    return marks["next"] - start, marks["response"] - start, marks["status"]


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, round((len(s) - 1) * p))] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--function", help="function name (default: the binary's file name)")
    ap.add_argument("--cold", action="store_true", help="a fresh, evicted copy per spawn")
    ap.add_argument("-n", type=int, default=30)
    args = ap.parse_args()
    function = args.function or os.path.basename(args.binary)
    polls, responses = [], []
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(args.binary)))
    try:
        if not args.cold:
            spawn_once(args.binary, function)  # warm the page cache
        for i in range(args.n):
            binary = args.binary
            if args.cold:
                binary = os.path.join(tmp, f"{function}.{i}")
                shutil.copyfile(args.binary, binary)
                os.chmod(binary, 0o755)
                with open(binary, "rb") as f:
                    os.fsync(f.fileno())
                subprocess.run(["dd", f"if={binary}", "iflag=nocache", "count=0", "status=none"],
                               check=True)
            poll, response, status = spawn_once(binary, function)
            if status != 401:
                sys.exit(f"{function}: answered {status}, not 401")
            polls.append(poll)
            responses.append(response)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mode = "cold" if args.cold else "warm"
    print(f"{function} {mode}, {args.n} spawns: exec -> first poll p50 {pct(polls, .5):.1f} ms "
          f"p99 {pct(polls, .99):.1f} ms; exec -> first response p50 {pct(responses, .5):.1f} ms "
          f"p99 {pct(responses, .99):.1f} ms")


if __name__ == "__main__":
    main()
