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
from http.server import BaseHTTPRequestHandler

from resilience.testing.localserver import LocalHTTPServer, QuietHandler

__all__ = ["FlakyAPI"]


class FlakyAPI(LocalHTTPServer):
    """A local HTTP server whose health a test or the demo controls."""

    def __init__(self, mode: str = "ok", slow_sec: float = 2.0) -> None:
        self.mode = mode
        self.slow_sec = slow_sec
        self.requests = 0
        self._schedule: tuple[float, float] | None = None
        self._lock = threading.Lock()
        super().__init__(self._handler(), name="flaky-api")

    @property
    def url(self) -> str:
        return self.base_url

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

        class Handler(QuietHandler):
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

        return Handler
