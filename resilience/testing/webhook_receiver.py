"""A tiny local webhook receiver: what ``resilience demo`` shows alerts with, and tests use.

It listens on 127.0.0.1 (port 0 picks a free one) in a daemon thread, keeps
every alert it receives with whether it verified, and answers 200 (or
``status`` if set, to play a failing receiver). It verifies as a receiver
should: the timestamped signature, with replay protection
(:func:`resilience.observability.alerts.verify_request`, ``tolerance_sec``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from resilience.core.settings import get_settings, reset_settings
from resilience.observability.alerts import DEFAULT_TOLERANCE_SEC, SIGNATURE_HEADER, verify_request
from resilience.testing.localserver import LocalHTTPServer, QuietHandler

__all__ = ["ReceivedAlert", "WebhookReceiver"]


@dataclass
class ReceivedAlert:
    """One POST the receiver got."""

    body: bytes
    signature: str | None  # X-Resilience-Signature (over the body alone)
    verified: bool | None  # the timestamped signature within the tolerance; None: no secret to check against
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


class WebhookReceiver(LocalHTTPServer):
    """``with WebhookReceiver(secret) as receiver: ... receiver.url ... receiver.alerts``."""

    def __init__(self, secret: str | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 tolerance_sec: float = DEFAULT_TOLERANCE_SEC) -> None:
        self.secret = secret
        self.tolerance_sec = tolerance_sec
        self.status = 200
        self.fail_first = 0  # answer this many POSTs with 503 first (a flaky receiver)
        self.attempts = 0
        self.alerts: list[ReceivedAlert] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.attempts += 1
                    flaky = receiver.fail_first > 0
                    receiver.fail_first -= 1 if flaky else 0
                if flaky:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                # http.server's headers are a Message: a case-insensitive mapping in all but its type
                verified = (verify_request(body, self.headers, receiver.secret,  # type: ignore[arg-type]
                                           tolerance_sec=receiver.tolerance_sec) if receiver.secret else None)
                with receiver._lock:
                    receiver.alerts.append(ReceivedAlert(body, self.headers.get(SIGNATURE_HEADER), verified,
                                                         dict(self.headers.items())))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(Handler, host=host, port=port, name="webhook-receiver")

    @property
    def url(self) -> str:
        return f"{self.base_url}/alerts"

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [a.payload for a in self.alerts]


def start_demo_receiver() -> WebhookReceiver | None:
    """For ``resilience demo``: when ``ALERT_WEBHOOK_URL`` is unset, receive the alerts locally.

    The URL and a fresh secret go into this process's environment before the
    platform starts, so its worker and beat send their alerts here.
    """
    import os
    import secrets

    settings = get_settings()
    if settings.alert_webhook_url or not settings.feature_alerting:
        return None
    receiver = WebhookReceiver(secrets.token_hex(16)).start()
    os.environ["ALERT_WEBHOOK_URL"] = receiver.url
    os.environ["ALERT_WEBHOOK_SECRET"] = receiver.secret or ""
    reset_settings()
    return receiver


def render_alerts(receiver: WebhookReceiver, last: int = 6):
    """A rich table of the newest alerts the receiver got."""
    from rich.table import Table

    table = Table(title=f"Alerts received at {receiver.url} ({len(receiver.alerts)} in total)")
    for column in ("level", "title", "rule", "signature"):
        table.add_column(column)
    with receiver._lock:
        newest = list(receiver.alerts[-last:])
    for received in reversed(newest):
        payload = received.payload
        table.add_row(payload.get("level", ""), payload.get("title", "")[:70],
                      str((payload.get("context") or {}).get("rule", "")),
                      "verified" if received.verified else "INVALID")
    return table
