#!/usr/bin/env python3
"""Cost per million calls, measured from outside the local stack (`make bench`).

For the gateway route (`POST /mcp`) and the direct route (`POST /tools/lookup_customer/mcp`),
N warm sequential `tools/call lookup_customer` calls on a release `tollgate-dev`, measuring per
call:

- store requests by operation, from a counting proxy between the stack and its
  DynamoDB-protocol server (tests/benches/store_proxy.py): write request units (every write,
  failed conditional ones too), read request units (0.5 for an eventually consistent read);
- Lambda invocations and each one's duration: the SERVER spans the stack exports as X-Ray
  segments to a UDP receiver standing in for the daemon (one per function invocation), billed
  rounded up to the millisecond;
- log bytes: what the stack wrote on stdout (audit record, EMF line, anything else), plus the
  platform lines Lambda adds per invocation (estimated from their documented JSON format);
- traces: distinct trace ids among the segments, times the sampled fraction in prices.toml;

then multiplies them by tests/benches/prices.toml and prints a table of cost per million calls by
line and in total, next to Bedrock AgentCore Gateway's price.

Usage: python tests/benches/cost.py [--calls 200] [--mode exact|leases]
"""

from __future__ import annotations

import argparse
import json
import re
import math
import statistics
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "e2e"))
import stackrun  # noqa: E402
from span_sinks import XrayDaemon  # noqa: E402

# Lambda's system log lines per invocation in the JSON log format the SAM template configures
# (LoggingConfig: LogFormat JSON, SystemLogLevel INFO): at INFO Lambda sends platform.start and
# platform.report (platform.runtimeDone, END in the text format, is a DEBUG event), each with
# the invocation's X-Ray tracing block. Shapes as documented in the Lambda developer guide
# (JSON format system logs); ids and times at their real lengths. SystemLogLevel WARN sends none.
_TRACING = ('"tracing":{"spanId":"54565fb41ac79632","type":"X-Amzn-Trace-Id",'
            '"value":"Root=1-6939a0b2-710d76f009d6e7785905449a;Parent=0efbd19962d95b05;Sampled=1"}')
_RID = '"requestId":"6d68ca91-49c9-448d-89b8-7ca3e6dc66aa"'
PLATFORM_LINES = [
    '{"time":"2026-11-30T12:00:00.000Z","type":"platform.start","record":{' + _RID + ',"version":"$LATEST",' + _TRACING + "}}",
    '{"time":"2026-11-30T12:00:00.009Z","type":"platform.report","record":{' + _RID + ',"metrics":{"durationMs":7.226,'
    '"billedDurationMs":8,"memorySizeMB":128,"maxMemoryUsedMB":24},' + _TRACING + ',"status":"success"}}',
]

WRITE_OPS = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem")
READ_OPS = ("GetItem", "Query", "Scan", "BatchGetItem")


def price(prices: dict, key: str) -> float:
    """USD per unit."""
    p = prices[key]
    return p["usd"] / p["per"]


def store_units(counts: dict) -> dict[str, float]:
    wru = rru = sm = 0.0
    by_op: dict[str, int] = {}
    for key, c in counts["ops"].items():
        service, _, op = key.split(" ")[0].partition(".")
        by_op[op] = by_op.get(op, 0) + c["requests"]
        if service.startswith("DynamoDB"):
            if op == "TransactWriteItems":
                wru += 2 * c["items"]
            elif op == "TransactGetItems":
                rru += 2 * c["items"]
            elif op in WRITE_OPS:
                wru += c["items"]
            elif op in READ_OPS:
                rru += c["items"] - 0.5 * c["eventual"]
        elif service == "secretsmanager":
            sm += c["requests"]
    return {"wru": wru, "rru": rru, "secrets_api": sm, "by_op": by_op,
            "failed_writes": sum(c["failed"] for c in counts["ops"].values())}


def measure_route(stack: stackrun.Stack, xray: XrayDaemon, route: str, calls: int) -> dict:
    inst = stack.live[0]
    caller = stackrun.Caller(inst, stack.token, route)
    for _ in range(20):
        assert stackrun.ok_result(*caller.call())
    time.sleep(0.5)
    stack.reset_counts()
    seg_mark = len(xray.datagrams)
    out = inst.stdout()
    offset = out.stat().st_size
    latencies = []
    for _ in range(calls):
        t0 = time.perf_counter()
        status, body = caller.call()
        latencies.append((time.perf_counter() - t0) * 1e3)
        assert stackrun.ok_result(status, body), (status, body[:300])
    time.sleep(1.0)  # the last call's spans and logs
    caller.close()
    counts = stack.counts()
    with out.open("rb") as f:
        f.seek(offset)
        logged = f.read()
    lines = [ln for ln in logged.split(b"\n") if ln.strip()]
    docs = [json.loads(d[d.index(b"\n") + 1:]) for d in xray.datagrams[seg_mark:]]
    # Function invocations: the SERVER spans, sent as segments (everything else is a subsegment).
    server = [d for d in docs if d.get("type") != "subsegment"]
    invocations = len(server) / calls
    durations = [(d["end_time"] - d["start_time"]) * 1e3 for d in server if "end_time" in d]
    billed = [math.ceil(ms) for ms in durations]
    traces = len({d["trace_id"] for d in docs}) / calls
    units = store_units(counts)
    return {
        "route": route, "calls": calls, "invocations": invocations,
        "duration_ms_p50": statistics.median(durations) if durations else 0.0,
        "billed_ms_per_call": sum(billed) / calls,
        "wru": units["wru"] / calls, "rru": units["rru"] / calls, "secrets_api": units["secrets_api"] / calls,
        "failed_writes": units["failed_writes"] / calls,
        "by_op": {k: v / calls for k, v in sorted(units["by_op"].items())},
        "app_log_bytes": len(logged) / calls, "app_log_events": len(lines) / calls,
        "traces": traces, "segments": len(docs) / calls,
        "latency_p50_ms": statistics.median(latencies),
    }


def system_log_level() -> str:
    """The functions' `LoggingConfig.SystemLogLevel` in the deployed template."""
    template = (Path(__file__).resolve().parents[2] / "infra" / "template.yaml").read_text()
    found = re.search(r"SystemLogLevel:\s*(\w+)", template)
    return found.group(1) if found else "INFO"


def cost_lines(m: dict, prices: dict) -> list[tuple[str, str, float]]:
    """(line, measured quantity per call, USD per million calls)."""
    a = prices["assumptions"]
    gb = a["memory_mb"] / 1024
    lines = PLATFORM_LINES if system_log_level() in ("INFO", "DEBUG") else []
    platform = sum(len(line) + 1 for line in lines)
    log_bytes = m["app_log_bytes"] + m["invocations"] * platform
    events = m["app_log_events"] + m["invocations"] * len(lines)
    metered_log = log_bytes + events * a["log_event_overhead_bytes"]
    million = 1_000_000
    rows = [
        ("API Gateway HTTP API", "1 request", price(prices, "api_gateway_http") * million),
        ("Lambda requests", f"{m['invocations']:.2f} invocations", m["invocations"] * price(prices, "lambda_requests") * million),
        ("Lambda duration (arm64)", f"{m['billed_ms_per_call']:.1f} billed ms at {a['memory_mb']} MB",
         m["billed_ms_per_call"] / 1000 * gb * price(prices, "lambda_duration_arm64") * million),
        ("DynamoDB writes", f"{m['wru']:.2f} WRU", m["wru"] * price(prices, "dynamodb_write_request_unit") * million),
        ("DynamoDB reads", f"{m['rru']:.2f} RRU", m["rru"] * price(prices, "dynamodb_read_request_unit") * million),
        ("CloudWatch Logs", f"{log_bytes:.0f} B ({events:.1f} events)", metered_log * price(prices, "cloudwatch_logs_ingestion") * million),
        ("X-Ray traces", f"{m['traces']:.2f} x {a['xray_sampled_fraction']:.0%} sampled",
         m["traces"] * a["xray_sampled_fraction"] * price(prices, "xray_traces_recorded") * million),
    ]
    if m["secrets_api"]:
        rows.append(("Secrets Manager", f"{m['secrets_api']:.3f} calls", m["secrets_api"] * price(prices, "secrets_manager_api") * million))
    return rows


def table(results: dict[str, dict], prices: dict, mode: str) -> str:
    routes = list(results)
    per = {r: cost_lines(results[r], prices) for r in routes}
    head = "| line | " + " | ".join(f"{r} route: per call | $ per million" for r in routes) + " |"
    sep = "|---|" + "---|---|" * len(routes)
    out = [head, sep]
    for i, (name, _, _) in enumerate(per[routes[0]]):
        cells = []
        for r in routes:
            row = next((x for x in per[r] if x[0] == name), (name, "0", 0.0))
            cells.append(f"{row[1]} | {row[2]:.3f}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = {r: sum(x[2] for x in per[r]) for r in routes}
    out.append("| **total** | " + " | ".join(f" | **{totals[r]:.2f}**" for r in routes) + " |")
    # AgentCore Gateway: its InvokeTool price plus the Lambda target (the direct route's tool
    # function: one invocation, its duration and its own logs and store use are the same work).
    direct = results.get("direct")
    agentcore = price(prices, "agentcore_gateway_invoke_tool") * 1_000_000
    lines = ["", f"mode: {mode}"]
    if direct:
        target = sum(x[2] for x in per["direct"] if x[0] != "API Gateway HTTP API")
        lines.append(f"Bedrock AgentCore Gateway: ${agentcore:.2f} per million InvokeTool calls, "
                     f"+ ${target:.2f} for the Lambda target doing the same work (its invocation, duration, "
                     f"store, logs, traces) = ${agentcore + target:.2f} per million calls")
    lines.append(prices["meta"]["note"])
    return "\n".join(out + lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--mode", choices=("exact", "leases"), default="leases")
    ap.add_argument("--prices", default=str(HERE / "prices.toml"))
    ap.add_argument("--json", help="also write the measured figures here")
    args = ap.parse_args()
    prices = tomllib.loads(Path(args.prices).read_text())
    xray = XrayDaemon()
    env = dict(stackrun.lease_env(args.mode), AWS_XRAY_DAEMON_ADDRESS=xray.address,
               OTEL_TRACES_SAMPLER="always_on", OTEL_SERVICE_NAME="tollgate-bench")
    try:
        with stackrun.Stack(instances=1, proxy=True, env_extra=env) as stack:
            results = {r: measure_route(stack, xray, r, args.calls) for r in ("gateway", "direct")}
    finally:
        xray.close()
    for r, m in results.items():
        print(f"{r}: {json.dumps(m)}", file=sys.stderr)
    print(table(results, prices, args.mode))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
