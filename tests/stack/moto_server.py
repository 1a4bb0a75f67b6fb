#!/usr/bin/env python3
"""Single-threaded moto server for tests and `make dev`.

Usage: python tests/stack/moto_server.py [PORT]
  PORT: argv[1], else $MOTO_PORT, else 8000.  Host: $MOTO_HOST, else 127.0.0.1; loopback
  only (anything else is refused at start).

Serves every moto backend (DynamoDB, Secrets Manager, ...) on one port, like the
stock `moto_server`, but with threaded=False: the stock server is multi-threaded
and loses updates under concurrent conditional writes, this one serialises
requests.  Point the AWS SDK at it with AWS_ENDPOINT_URL=http://127.0.0.1:PORT
plus static dummy credentials and a region.

Handy endpoints: GET /moto-api/ (dashboard, doubles as a readiness probe),
POST /moto-api/reset (wipe all state).

Requests are unsigned and the server holds the dev stack's keys and hashing key, so no web page
the developer visits may reach it: moto's global CORS is off (no Access-Control-Allow-* on any
answer, preflights included), any request carrying an Origin header (browsers add one to
cross-origin requests; AWS SDKs never do) is refused with 403, and so is a Host header that is
not a loopback name (DNS rebinding).
Exits cleanly (status 0) on SIGTERM / SIGINT.
"""

import ipaddress
import os
import signal
import sys

LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, without port) is a loopback host."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a Host header value (`127.0.0.1:8000`, `[::1]:8000`, `localhost`)."""
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def guard(app):
    """WSGI middleware: 403 for a request with an Origin header or a non-loopback Host."""

    def guarded(environ, start_response):
        origin = environ.get("HTTP_ORIGIN")
        host = environ.get("HTTP_HOST", "")
        if origin is not None or not is_loopback(host_of(host)):
            body = b"cross-origin or non-loopback requests are refused by the local test server\n"
            start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return guarded


def main(argv: list[str]) -> None:
    port = int(argv[1] if len(argv) > 1 else os.environ.get("MOTO_PORT", "8000"))
    host = os.environ.get("MOTO_HOST", "127.0.0.1")
    if not is_loopback(host):
        sys.exit(f"moto_server.py: MOTO_HOST={host!r} is not a loopback address; refusing to serve")
    # moto builds some URLs (e.g. SQS queue URLs) from MOTO_PORT.
    os.environ["MOTO_PORT"] = str(port)
    # Read by moto.settings at import: no flask-cors on any backend.
    os.environ["MOTO_DISABLE_GLOBAL_CORS"] = "true"

    from werkzeug.serving import run_simple
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )

    def _exit(_signum, _frame):
        sys.exit(0)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)

    app = guard(DomainDispatcherApplication(create_backend_app))
    run_simple(
        host,
        port,
        app,
        threaded=False,
        processes=1,
        use_reloader=False,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main(sys.argv)
