"""A loopback HTTP server on a background thread: the one shared piece behind
the demo's flaky "external API", the demo's webhook receiver and test stand-ins.

``LocalHTTPServer(handler_class)`` binds 127.0.0.1 on a free port; ``start``/
``stop`` or ``with`` run it; ``base_url`` is where it answers. Handlers'
request logging is silenced by :class:`QuietHandler`.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["LocalHTTPServer", "QuietHandler"]


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps test and demo output clean."""

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that gave up (its timeout) is expected here, not an error."""


class LocalHTTPServer:
    """``handler`` served on ``host``:``port`` (0: a free port) from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, host: str = "127.0.0.1", port: int = 0,
                 name: str = "local-http") -> None:
        self.server = _Server((host, port), handler)
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
