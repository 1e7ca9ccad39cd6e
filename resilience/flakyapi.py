"""A small local HTTP "external API" that can be told to fail, for the demo and tests.

It serves on 127.0.0.1 (port 0: a free port) in a background thread. Every
path answers JSON; the status depends on the mode: ``ok`` (200), ``failing``
(503), ``slow`` (200 after ``slow_sec``). ``GET /missing`` always answers 404,
a business error. ``fail_between(start, end)`` fails on a schedule (epoch
seconds), which the demo uses to show a breaker opening and closing.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FlakyAPI"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that gave up (its timeout) is expected here, not an error."""


class FlakyAPI:
    """A local HTTP server whose health a test or the demo controls."""

    def __init__(self, mode: str = "ok", slow_sec: float = 2.0) -> None:
        self.mode = mode
        self.slow_sec = slow_sec
        self.requests = 0
        self._schedule: tuple[float, float] | None = None
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="flaky-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail_between(self, start: float, end: float) -> None:
        """Answer 503 from ``start`` to ``end`` (epoch seconds), 200 otherwise."""
        self._schedule = (start, end)

    def current_mode(self) -> str:
        if self._schedule is not None:
            start, end = self._schedule
            return "failing" if start <= time.time() < end else "ok"
        return self.mode

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                with api._lock:
                    api.requests += 1
                mode = api.current_mode()
                if self.path.startswith("/missing"):
                    status = 404
                elif mode == "failing":
                    status = 503
                else:
                    status = 200
                    if mode == "slow":
                        time.sleep(api.slow_sec)
                body = json.dumps({"status": status, "path": self.path}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:  # keep test and demo output clean
                pass

        return Handler

    def start(self) -> FlakyAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FlakyAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
