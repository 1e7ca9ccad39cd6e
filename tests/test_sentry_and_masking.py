"""Sentry (a local stand-in) and secret masking across Redis, Sentry and alerts, in a real prefork worker."""

from __future__ import annotations

import json

import pytest

import tests.jobs.tracking as tj
from resilience import tracking
from resilience.keys import keys
from resilience.testing import SubprocessWorker, settings_env, wait_for
from resilience.testing.webhook_receiver import WebhookReceiver
from tests.sentry_standin import SentryStandIn

SECRET = "whsec-masking"
API_KEY = "sk-live-4f9Qz7SECRET"
PASSWORD = "hunter2-SECRET-pw"


@pytest.mark.slow
def test_a_failing_jobs_error_reaches_sentry_with_its_fingerprint_and_its_secrets_masked_everywhere(
        app, r, log_dir):
    with SentryStandIn() as sentry, WebhookReceiver(SECRET) as receiver:
        env = settings_env(SENTRY_DSN=sentry.dsn, ALERT_WEBHOOK_URL=receiver.url, ALERT_WEBHOOK_SECRET=SECRET,
                           ERROR_FLUSH_INTERVAL_SEC=0.2)
        with SubprocessWorker(log_dir, concurrency=1, include=["tests.jobs.tracking"], env=env) as worker:
            result = tj.charge_card.apply_async(("order-7",), {"api_key": API_KEY, "password": PASSWORD})
            [record] = wait_for(lambda: tracking.timeline(), 60,
                                message=lambda: f"the error record; worker log:\n{worker.log()[-3000:]}")
            event = wait_for(lambda: next((e for e in sentry.events() if e.get("exception")), None), 60,
                             message=lambda: f"the Sentry event; worker log:\n{worker.log()[-3000:]}")
            wait_for(lambda: receiver.alerts, 60, message="the job_failed alert")

        assert record["job_id"] == result.id
        assert event["fingerprint"] == [record["fingerprint"]]
        assert event["tags"]["resilience.fingerprint"] == record["fingerprint"]
        alert = receiver.alerts[0]
        assert alert.verified
        assert alert.payload["context"]["fingerprint"] == record["fingerprint"]

        stored = json.dumps(r.zrange(keys().errors_timeline, 0, -1))
        for place, text in (("Redis", stored), ("Sentry", sentry.raw().decode(errors="replace")),
                            ("alert", alert.body.decode())):
            assert API_KEY not in text, f"api key leaked to {place}"
            assert PASSWORD not in text, f"password leaked to {place}"
        assert record["context"]["kwargs"] == {"api_key": "***", "password": "***"}
        assert "order-7" in record["context"]["args"]
