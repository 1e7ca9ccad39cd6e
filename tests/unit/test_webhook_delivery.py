"""Webhook alerts: timestamped signatures against replays, bounded delivery, no redirects (issue 15).

Real local HTTP servers play the receivers: one that verifies, one that
redirects, one that trickles its reply a byte at a time.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time

import httpx
import pytest

from resilience import alerts
from resilience.settings import get_settings
from resilience.testing.localserver import LocalHTTPServer, QuietHandler
from resilience.testing.webhook_receiver import WebhookReceiver

SECRET = "whsec-test-secret"
PAYLOAD = {"level": "warning", "title": "Backlog", "message": "depth 10001", "component": "queue",
           "context": {"rule": "queue_backlog", "subject": "celery"}, "timestamp": "2026-01-01T00:00:00Z",
           "environment": "test"}


def webhook(url: str, **overrides):
    """Settings that post to ``url``, signed with SECRET."""
    return get_settings().replace(alert_webhook_url=url, alert_webhook_secret=SECRET, **overrides)


@pytest.fixture
def receiver():
    with WebhookReceiver(SECRET) as rcv:
        yield rcv


@pytest.fixture
def received(receiver):
    """One alert as the receiver got it: its raw body and headers."""
    before = int(time.time())
    assert alerts.post(PAYLOAD, settings=webhook(receiver.url))
    [alert] = receiver.alerts
    assert before <= int(alert.headers[alerts.TIMESTAMP_HEADER]) <= time.time()
    return alert


# -- signatures ----------------------------------------------------------------------------

def test_an_alert_carries_the_contract_signature_a_timestamp_and_a_timestamped_signature(received):
    timestamp = received.headers[alerts.TIMESTAMP_HEADER]
    expected = "sha256=" + hmac.new(SECRET.encode(), f"{timestamp}.".encode() + received.body,
                                    hashlib.sha256).hexdigest()
    assert received.headers[alerts.TIMESTAMPED_SIGNATURE_HEADER] == expected
    contract = "sha256=" + hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert received.headers[alerts.SIGNATURE_HEADER] == contract == received.signature
    assert alerts.verify(received.body, received.signature, SECRET), "the documented verify() still holds"
    assert received.verified, "the receiver's verify_request accepted it"


def test_verify_request_accepts_within_the_tolerance_and_refuses_stale_or_future_timestamps(received):
    body, headers = received.body, received.headers
    signed_at = int(headers[alerts.TIMESTAMP_HEADER])
    assert alerts.DEFAULT_TOLERANCE_SEC == 300
    assert alerts.verify_request(body, headers, SECRET, now=signed_at + 300)
    assert alerts.verify_request(body, headers, SECRET, now=signed_at - 300)
    assert not alerts.verify_request(body, headers, SECRET, now=signed_at + 301), "a replay five minutes on"
    assert not alerts.verify_request(body, headers, SECRET, now=signed_at - 301), "a timestamp from the future"
    assert not alerts.verify_request(body, headers, SECRET, tolerance_sec=10, now=signed_at + 11)
    assert alerts.verify_request(body, headers, SECRET, tolerance_sec=10, now=signed_at + 10)


def test_verify_request_refuses_a_changed_body_timestamp_secret_or_signature(received):
    body, headers = received.body, dict(received.headers)
    signed_at = int(headers[alerts.TIMESTAMP_HEADER])
    now = signed_at + 1
    assert alerts.verify_request(body, headers, SECRET, now=now)
    assert not alerts.verify_request(body + b" ", headers, SECRET, now=now)
    assert not alerts.verify_request(body, headers, "another-secret", now=now)
    moved = {**headers, alerts.TIMESTAMP_HEADER: str(signed_at + 1)}  # a fresher timestamp on the old signature
    assert not alerts.verify_request(body, moved, SECRET, now=now)
    contract_only = {**headers, alerts.TIMESTAMPED_SIGNATURE_HEADER: headers[alerts.SIGNATURE_HEADER]}
    assert not alerts.verify_request(body, contract_only, SECRET, now=now)
    for timestamp in ("", "abc", "1e9", f"-{signed_at}", f"{signed_at}.0", "١٢٣"):
        assert not alerts.verify_request(body, {**headers, alerts.TIMESTAMP_HEADER: timestamp}, SECRET, now=now)
    for signature in ("", "sha256=", "sha256=" + "é" * 64, "sha256=" + "0" * 64):
        assert not alerts.verify_request(body, {**headers, alerts.TIMESTAMPED_SIGNATURE_HEADER: signature}, SECRET,
                                         now=now)
    unsigned = {k: v for k, v in headers.items() if k != alerts.TIMESTAMPED_SIGNATURE_HEADER}
    assert not alerts.verify_request(body, unsigned, SECRET, now=now)
    assert not alerts.verify(body, "sha256=" + "é" * 64, SECRET), "non-ASCII text is refused, not a TypeError"


def test_verify_request_matches_header_names_in_any_case(received):
    lowered = {name.lower(): value for name, value in received.headers.items()}
    assert alerts.verify_request(received.body, lowered, SECRET)


def test_the_receiver_refuses_a_replayed_alert_and_accepts_a_fresh_one(receiver):
    body = b'{"level":"info","title":"captured"}'
    for signed_at, verified in ((time.time() - 600, False), (time.time() + 600, False), (time.time(), True)):
        headers = {"Content-Type": "application/json", **alerts.signature_headers(body, SECRET, now=signed_at)}
        assert httpx.post(receiver.url, content=body, headers=headers, timeout=5).status_code == 200
        assert receiver.alerts[-1].verified is verified


# -- delivery ------------------------------------------------------------------------------

class Redirector(LocalHTTPServer):
    """Answers every POST with ``302 Found`` pointing at ``location``."""

    def __init__(self, location: str) -> None:
        self.posts = 0
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.posts += 1
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(Handler, name="redirector")


def test_a_redirect_is_not_delivered_not_followed_and_not_retried(receiver, caplog):
    with Redirector(receiver.url) as redirector:
        assert alerts.post(PAYLOAD, settings=webhook(f"{redirector.base_url}/old-hook", alert_webhook_retries=3)) \
            is False
        assert redirector.posts == 1
    assert receiver.attempts == 0, "the redirect's target never saw the alert"
    assert "HTTP 302" in caplog.text and "not followed" in caplog.text


def test_a_client_error_is_not_retried_but_a_rate_limit_is(receiver):
    receiver.status = 404
    assert alerts.post(PAYLOAD, settings=webhook(receiver.url, alert_webhook_retries=3)) is False
    assert receiver.attempts == 1
    receiver.status, receiver.attempts = 429, 0
    assert alerts.post(PAYLOAD, settings=webhook(receiver.url, alert_webhook_retries=1)) is False
    assert receiver.attempts == 2


class Trickler(LocalHTTPServer):
    """Reads the POST, then sends a 200 reply one byte every ``pace`` seconds: each read is quick,
    the whole reply takes far longer than any timeout."""

    REPLY = b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"." * 400 + b"\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, pace: float = 0.1) -> None:
        self.connections = 0
        self.stopped = threading.Event()
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.connections += 1
                try:
                    for i in range(len(Trickler.REPLY)):
                        self.wfile.write(Trickler.REPLY[i:i + 1])
                        self.wfile.flush()
                        if server.stopped.wait(pace):  # the server's pace, not a test's synchronisation
                            return
                except OSError:  # the client hung up: what the test wants
                    return

        super().__init__(Handler, name="trickler")

    def stop(self) -> None:
        self.stopped.set()
        super().stop()


def test_one_attempt_ends_at_its_timeout_against_a_receiver_that_trickles_its_reply():
    with Trickler(pace=0.1) as trickler:  # a byte every 0.1 s: a read timeout of 1 s never fires
        started = time.monotonic()
        delivered = alerts.post(PAYLOAD, settings=webhook(f"{trickler.base_url}/hook", alert_webhook_timeout_sec=1.0,
                                                          alert_webhook_retries=0))
        took = time.monotonic() - started
    assert delivered is False
    assert trickler.connections == 1
    assert 0.9 <= took < 2.5, f"one attempt took {took:.1f}s; its reply alone takes {0.1 * len(Trickler.REPLY):.0f}s"


def test_the_whole_delivery_ends_at_its_deadline_whatever_the_retries(caplog):
    with Trickler(pace=0.1) as trickler:
        started = time.monotonic()
        delivered = alerts.post(PAYLOAD, settings=webhook(f"{trickler.base_url}/hook", alert_webhook_timeout_sec=1.0,
                                                          alert_webhook_retries=20, alert_webhook_deadline_sec=2.5))
        took = time.monotonic() - started
    assert delivered is False
    assert 2.0 <= took < 4.0, f"the delivery took {took:.1f}s with a 2.5 s deadline"
    assert 2 <= trickler.connections <= 3
    assert "not delivered" in caplog.text and "TimeoutError" in caplog.text
