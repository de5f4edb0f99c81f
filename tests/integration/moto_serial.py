"""moto's server with one request at a time: `python3 moto_serial.py HOST PORT`.

DynamoDB applies every write, conditional or transactional, atomically. moto's backends take
no lock: under concurrent requests, two conditional UpdateItems on one item can both pass their
condition (a seal race with two winners was seen), and TransactWriteItems checks and writes
without isolation. Connections are still served by a thread each (keep-alive clients never
wait for a connection), but a request runs, response body included, only while no other does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class OneAtATime:
    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            body = self.app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))  # as moto's own server: URLs it returns
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(
        host, port, OneAtATime(DomainDispatcherApplication(create_backend_app)), threaded=True
    )


if __name__ == "__main__":
    main()
