"""A local HTTP server standing in for Sentry: it keeps the envelopes sentry-sdk posts.

sentry-sdk posts to ``<DSN host>/api/<project>/envelope/``, gzip-compressed; an
envelope is newline-separated JSON (a header, then item header / payload pairs).
"""

from __future__ import annotations

import gzip
import json
import threading
from typing import Any

from resilience.testing.localserver import LocalHTTPServer, QuietHandler


class SentryStandIn(LocalHTTPServer):
    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        self._lock = threading.Lock()
        standin = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.rstrip("/").endswith("/envelope"):
                    with standin._lock:
                        standin.envelopes.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

        super().__init__(Handler, name="sentry-standin")

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/1"

    def events(self) -> list[dict[str, Any]]:
        """The error events received (items of type "event")."""
        with self._lock:
            raw = list(self.envelopes)
        events = []
        for envelope in raw:
            lines = envelope.split(b"\n")
            for i, line in enumerate(lines[1:], start=1):
                try:
                    header = json.loads(line)
                except ValueError:
                    continue
                if isinstance(header, dict) and header.get("type") == "event" and i + 1 < len(lines):
                    events.append(json.loads(lines[i + 1]))
        return events

    def raw(self) -> bytes:
        with self._lock:
            return b"\n".join(self.envelopes)
