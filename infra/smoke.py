#!/usr/bin/env python3
"""Post-deploy smoke test of a tollgate endpoint with the official MCP Python SDK.

    .venv/bin/python infra/smoke.py URL TOKEN [--tool NAME] [--arguments JSON] [--expect-success]

URL is the stack output McpUrl (https://.../mcp), TOKEN an agent key (`tollgate keys create`).
Checks, in order, and prints one line each:
  1. without a token the endpoint answers 401 with WWW-Authenticate (authentication is on);
  2. initialize, tools/list and one tools/call through the aggregating endpoint POST /mcp;
  3. initialize and tools/list on the tool's own endpoint POST /tools/<tool>/mcp.
The call's result may be a tool error (`isError`, e.g. no such customer on a fresh table): the
request still crossed API Gateway, auth, scope, budget, the forward and the tool. With
--expect-success it must not be. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx2 as httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

DEFAULT_TOOL = "lookup_customer"
DEFAULT_ARGUMENTS = '{"email": "ada@example.com"}'


class SmokeFailure(Exception):
    """A check failed; the message says which and why."""


def ok(step: str, detail: str, started: float) -> None:
    print(f"ok   {step:<36} {detail} ({(time.monotonic() - started) * 1000:.0f} ms)")


async def check_unauthenticated(url: str) -> None:
    started = time.monotonic()
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(url, json=body, headers=headers)
    challenge = resp.headers.get("www-authenticate", "")
    if resp.status_code != 401 or not challenge.lower().startswith("bearer"):
        raise SmokeFailure(f"no token: expected 401 with WWW-Authenticate: Bearer, got {resp.status_code} {challenge!r}")
    ok("no token -> 401", challenge, started)


async def session_checks(label: str, url: str, token: str, tool: str | None, arguments: dict, expect_success: bool) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                started = time.monotonic()
                init = await session.initialize()
                server = init.server_info
                ok(f"initialize {label}", f"{server.name} {server.version}, protocol {init.protocol_version}", started)

                started = time.monotonic()
                listed = [t.name for t in (await session.list_tools()).tools]
                ok(f"tools/list {label}", ", ".join(listed) or "(no tools for this token's scopes)", started)
                if tool is None:
                    return listed
                if tool not in listed:
                    raise SmokeFailure(f"tools/list does not offer {tool!r} to this token (scopes?): {listed}")

                started = time.monotonic()
                result = await session.call_tool(tool, arguments)
                text = " ".join(getattr(c, "text", "") for c in result.content)[:160]
                if result.is_error and expect_success:
                    raise SmokeFailure(f"tools/call {tool}: isError: {text}")
                outcome = "tool error (isError)" if result.is_error else "success"
                ok(f"tools/call {tool}", f"{outcome}: {text}", started)
                return listed


async def run(args: argparse.Namespace) -> None:
    url = args.url.rstrip("/")
    if not url.endswith("/mcp"):
        raise SmokeFailure(f"URL must be the MCP endpoint ending in /mcp (stack output McpUrl), got {url}")
    arguments = json.loads(args.arguments)
    await check_unauthenticated(url)
    await session_checks("/mcp", url, args.token, args.tool, arguments, args.expect_success)
    if not args.no_direct:
        direct = f"{url[: -len('/mcp')]}/tools/{args.tool}/mcp"
        listed = await session_checks(f"/tools/{args.tool}/mcp", direct, args.token, None, arguments, args.expect_success)
        if listed != [args.tool]:
            raise SmokeFailure(f"{direct}: expected exactly [{args.tool!r}] from tools/list, got {listed}")


def leaves(e: BaseException) -> list[BaseException]:
    """The underlying errors of an exception group (the SDK runs its transport in a task group)."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for inner in e.exceptions for leaf in leaves(inner)]
    return [e]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the MCP endpoint, stack output McpUrl (https://.../mcp)")
    parser.add_argument("token", help="an agent key (tg_...) or OAuth access token")
    parser.add_argument("--tool", default=DEFAULT_TOOL, help=f"tool to call (default {DEFAULT_TOOL})")
    parser.add_argument("--arguments", default=DEFAULT_ARGUMENTS, help=f"JSON arguments (default {DEFAULT_ARGUMENTS})")
    parser.add_argument("--expect-success", action="store_true", help="fail when the call returns isError")
    parser.add_argument("--no-direct", action="store_true", help="skip the tool's own endpoint /tools/<tool>/mcp")
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except SmokeFailure as e:
        print(f"FAIL {e}", file=sys.stderr)
        return 1
    except Exception as e:  # transport errors from the SDK: report, never a traceback with the token
        for leaf in leaves(e):
            print(f"FAIL {type(leaf).__name__}: {leaf}", file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
