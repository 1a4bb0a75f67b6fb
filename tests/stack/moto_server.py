#!/usr/bin/env python3
"""Single-threaded moto server for tests and `make dev`.

Usage: python tests/stack/moto_server.py [PORT]
  PORT: argv[1], else $MOTO_PORT, else 8000.  Host: $MOTO_HOST, else 127.0.0.1.

Serves every moto backend (DynamoDB, Secrets Manager, ...) on one port, like the
stock `moto_server`, but with threaded=False: the stock server is multi-threaded
and loses updates under concurrent conditional writes, this one serialises
requests.  Point the AWS SDK at it with AWS_ENDPOINT_URL=http://127.0.0.1:PORT
plus static dummy credentials and a region.

Handy endpoints: GET /moto-api/ (dashboard, doubles as a readiness probe),
POST /moto-api/reset (wipe all state).
Exits cleanly (status 0) on SIGTERM / SIGINT.
"""

import os
import signal
import sys


def main(argv: list[str]) -> None:
    port = int(argv[1] if len(argv) > 1 else os.environ.get("MOTO_PORT", "8000"))
    host = os.environ.get("MOTO_HOST", "127.0.0.1")
    # moto builds some URLs (e.g. SQS queue URLs) from MOTO_PORT.
    os.environ["MOTO_PORT"] = str(port)

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

    app = DomainDispatcherApplication(create_backend_app)
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
