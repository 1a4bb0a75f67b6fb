#!/usr/bin/env python3
"""A small command-line MCP client on the official MCP Python SDK, for the local stack.

  mcp_client.py --url http://127.0.0.1:9000/mcp --token TOKEN list
  mcp_client.py --url ... --token ... call lookup_customer '{"email": "ada@example.com"}'
"""

import argparse
import asyncio
import json
import sys

import httpx2 as httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def run(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        async with streamable_http_client(args.url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                if args.command == "list":
                    tools = await session.list_tools()
                    for tool in tools.tools:
                        print(f"{tool.name}\t{tool.description}")
                    return 0
                arguments = json.loads(args.arguments) if args.arguments else {}
                result = await session.call_tool(args.tool, arguments)
                print(json.dumps(result.model_dump(mode="json", exclude_none=True), indent=2))
                return 1 if result.is_error else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:9000/mcp")
    parser.add_argument("--token", help="bearer token (e.g. $(cat target/dev/demo-token))")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the tools this token may call")
    call = sub.add_parser("call", help="call a tool")
    call.add_argument("tool")
    call.add_argument("arguments", nargs="?", help="JSON object of arguments")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
