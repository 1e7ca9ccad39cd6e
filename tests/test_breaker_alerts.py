"""A breaker that opens and closes is alerted: signed webhooks at a real local receiver."""

from __future__ import annotations

import hashlib
import hmac

import httpx
import pytest

from resilience import alerts
from resilience.errors import CircuitOpenError
from resilience.httpclient import BreakerClient
from resilience.testing import configure, wait_for
from resilience.testing.flakyapi import FlakyAPI
from resilience.testing.webhook_receiver import WebhookReceiver

SECRET = "breaker-alert-secret"


def _breaker_alerts(receiver, state):
    return [a for a in receiver.alerts if a.payload["context"].get("rule") == "breaker_state"
            and a.payload["context"].get("state") == state]


def test_an_opening_and_a_closing_breaker_each_send_one_signed_alert(r):
    assert alerts.flush(30)
    with WebhookReceiver(SECRET) as receiver, configure(alert_webhook_url=receiver.url,
                                                        alert_webhook_secret=SECRET, alert_window_sec=60):
        with FlakyAPI(mode="failing") as api, BreakerClient("quotes-api", base_url=api.url) as client:
            client.breaker.configure(fail_max=5, reset_timeout_sec=0.5)
            for _ in range(5):
                with pytest.raises(httpx.HTTPStatusError):
                    client.get("/quotes/1")
            for _ in range(3):  # refused while open: no further alerts
                with pytest.raises(CircuitOpenError):
                    client.get("/quotes/1")
            wait_for(lambda: _breaker_alerts(receiver, "open"), 15, message="the breaker-open alert")

            api.mode = "ok"
            wait_for(lambda: client.get("/quotes/2").status_code == 200, 15, message="a trial call to succeed")
            wait_for(lambda: _breaker_alerts(receiver, "closed"), 15, message="the breaker-closed alert")
        assert alerts.flush(30)

        [opened] = _breaker_alerts(receiver, "open")
        assert opened.payload["level"] == "critical" and opened.payload["component"] == "breaker"
        expected = "sha256=" + hmac.new(SECRET.encode(), opened.body, hashlib.sha256).hexdigest()
        assert opened.signature == expected and opened.verified
        assert len(_breaker_alerts(receiver, "closed")) == 1
