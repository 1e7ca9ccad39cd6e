"""Webhook alerts: timestamped signatures against replays (issue 15).

A real local HTTP server plays the receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx
import pytest

from resilience import alerts
from resilience.settings import get_settings
from resilience.webhook_receiver import WebhookReceiver

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
