"""No secret form reaches a store: dead letters, error records, alert bodies, Sentry, worker logs (issue 15).

One real prefork worker runs a failing job per form of tests/secret_forms.py
(the form in its argument, in a keyword argument and in its error message; a
secret-named keyword argument too). Each job is retried once, so Celery logs a
retry line, then dead-lettered, so it logs "raised unexpected" with the
traceback, error tracking records both attempts, Sentry (a local stand-in)
receives the failure and the job_failed rule posts alerts. This process also
posts one alert per form through the real sender to the local receiver.
"""

from __future__ import annotations

import json

import pytest

import tests.jobs.redact as rj
from resilience import alerts, deadletter, tracking
from resilience.keys import keys
from resilience.testing import SubprocessWorker, configure, settings_env, wait_for
from resilience.testing.webhook_receiver import WebhookReceiver
from tests.secret_forms import FORMS
from tests.sentry_standin import SentryStandIn

SECRET = "whsec-leaks"
WAIT = 180


def _kwarg_secret(index: int) -> str:
    return f"zqkw{index:02d}"


def _leaks(places: dict[str, str]) -> list[str]:
    found = []
    for index, form in enumerate(FORMS):
        for secret in (*form.secrets, _kwarg_secret(index)):
            found += [f"{form.name}: {secret!r} in {place}" for place, text in places.items() if secret in text]
    return found


@pytest.mark.slow
def test_no_secret_form_reaches_dead_letters_error_records_alerts_sentry_or_worker_logs(app, r, log_dir):
    assert len(FORMS) >= 30
    with SentryStandIn() as sentry, WebhookReceiver(SECRET) as receiver:
        env = settings_env(SENTRY_DSN=sentry.dsn, ALERT_WEBHOOK_URL=receiver.url, ALERT_WEBHOOK_SECRET=SECRET,
                           ERROR_FLUSH_INTERVAL_SEC=0.2, SCHEDULER_POLL_INTERVAL_SEC=0.1)
        with SubprocessWorker(log_dir, concurrency=1, include=["tests.jobs.redact"], env=env) as worker:
            jobs = [rj.leak.delay(form.text, api_key=_kwarg_secret(i), note=form.text) for i, form in enumerate(FORMS)]
            wait_for(lambda: deadletter.count() == len(jobs), WAIT,
                     message=lambda: f"every job dead-lettered; log:\n{worker.log()[-3000:]}")
            wait_for(lambda: r.zcard(keys().errors_timeline) == 2 * len(jobs), WAIT,
                     message="a record of each attempt")
            wait_for(lambda: len([e for e in sentry.events() if e.get("exception")]) >= len(jobs), WAIT,
                     message="a Sentry event of each failure")
            wait_for(lambda: receiver.alerts, WAIT, message="the job_failed alerts")

        with configure(alert_webhook_url=receiver.url, alert_webhook_secret=SECRET, alert_window_sec=600):
            for index, form in enumerate(FORMS):
                alerts.alert("secret_forms", f"form-{index}", level="warning", title=f"failed: {form.text}",
                             message=form.text, component="tests",
                             context={"text": form.text, "password": _kwarg_secret(index)})
            assert alerts.flush(60)
            wait_for(lambda: len([a for a in receiver.alerts if a.payload["context"].get("rule") == "secret_forms"])
                     == len(FORMS), WAIT, message="an alert of each form")

        places = {
            "jobs:dead_letter": json.dumps(r.lrange(keys().dead_letter, 0, -1)),
            "errors:timeline": json.dumps(r.zrange(keys().errors_timeline, 0, -1)),
            "alert bodies": "\n".join(a.body.decode() for a in receiver.alerts),
            "Sentry events": sentry.raw().decode(errors="replace"),
            "the worker log": worker.log(),
        }

    assert _leaks(places) == []
    # the forms did go through each place, masked: the check above is not vacuous
    entries = {e.job_id: e.data for e in deadletter.list_entries(limit=len(jobs))}
    assert set(entries) == {job.id for job in jobs}
    assert all("***" in entry["failure_reason"] and entry["kwargs"]["api_key"] == "***" for entry in entries.values())
    assert {record["context"]["outcome"] for record in tracking.timeline(limit=2 * len(jobs))} == {"failed",
                                                                                                    "retrying"}
    assert all(a.verified for a in receiver.alerts)
    log = places["the worker log"]
    assert log.count("raised unexpected") == len(jobs) and log.count(" retry: Retry in ") == len(jobs)
    assert "Authorization: ***" in log and "redis://:***@redis.internal:6379/0" in log
