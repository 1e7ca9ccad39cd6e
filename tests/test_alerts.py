"""Webhook alerts: signed, off the job's path, once per window with a summary; the rules."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from resilience import alert_rules, alerts, tracking
from resilience.keys import keys
from resilience.testing import configure, free_port, wait_for
from resilience.testing.webhook_receiver import WebhookReceiver
from tests import jobs

SECRET = "whsec-test-secret"


pytestmark = pytest.mark.usefixtures("alerts_delivered")


@pytest.fixture
def receiver():
    with WebhookReceiver(SECRET) as rcv:
        yield rcv


@pytest.fixture
def alerting(receiver):
    """Alerts go to the local receiver; errors are flushed quickly."""
    with configure(alert_webhook_url=receiver.url, alert_webhook_secret=SECRET, alert_window_sec=60,
                   error_flush_interval_sec=0.1):
        yield receiver


def _of_rule(receiver, rule):
    return [p for p in receiver.payloads() if p["context"].get("rule") == rule]


def test_an_alert_is_posted_with_the_contract_payload_and_a_signature_that_verifies(alerting):
    alerts.alert("breaker_state", "payments:open", level="critical", title="Breaker payments open",
                 message="5 failures", component="breaker", context={"breaker": "payments"})
    wait_for(lambda: alerting.alerts, 10, message="the alert to arrive")
    [received] = alerting.alerts
    expected = "sha256=" + hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert received.signature == expected and received.verified
    payload = received.payload
    assert set(payload) == {"level", "title", "message", "component", "context", "timestamp", "environment"}
    assert payload["level"] == "critical" and payload["component"] == "breaker"
    assert payload["context"]["breaker"] == "payments" and payload["environment"] == "development"
    assert not alerts.verify(received.body + b" ", received.signature, SECRET)


def test_repeats_within_the_window_are_suppressed_then_summarised(receiver):
    with configure(alert_webhook_url=receiver.url, alert_webhook_secret=SECRET, alert_window_sec=1):
        for i in range(5):
            alerts.alert("queue_backlog", "celery", level="warning", title="Backlog", message=f"depth {i}",
                         component="queue")
        wait_for(lambda: len(_of_rule(receiver, "queue_backlog")) == 2, 20, message="alert and summary")
        first, summary = _of_rule(receiver, "queue_backlog")
        assert "summary" not in first["context"]
        assert summary["context"]["summary"] is True and summary["context"]["suppressed"] == 4


def test_a_hundred_identical_failures_send_one_alert_and_one_summary_and_count_a_hundred(app, worker, receiver, r):
    window = 120  # far longer than the failures take; its end is then stepped to (clock seam, no waiting)
    with configure(alert_webhook_url=receiver.url, alert_webhook_secret=SECRET, alert_window_sec=window,
                   error_flush_interval_sec=0.2):
        for _ in range(100):
            jobs.fail_permanent.delay("the same bad input")
        pattern = "task:tests.fail_permanent:PermanentError"
        wait_for(lambda: int(r.hget(keys().errors_patterns, pattern) or 0) == 100, 60,
                 message="100 failures counted")
        wait_for(lambda: sum(int(c) for c in r.hvals(keys().alert_suppressed)) == 99, 30,
                 message="99 repeats suppressed")
        assert alerts.flush(30)
        assert len(_of_rule(receiver, "job_failed")) == 1

        assert alerts.send_due_summaries(now=time.time() + window + 1) == 1
        first, summary = _of_rule(receiver, "job_failed")
        assert first["context"]["fingerprint"] == summary["context"]["fingerprint"]
        assert summary["context"]["summary"] is True and summary["context"]["suppressed"] == 99
        assert all(a.verified for a in receiver.alerts)
        assert alerts.send_due_summaries(now=time.time() + 2 * window) == 0  # one summary, not two


def test_an_unreachable_webhook_is_reported_and_never_breaks_jobs(app, worker, r, caplog):
    dead_url = f"http://127.0.0.1:{free_port()}/hook"
    with configure(alert_webhook_url=dead_url, alert_webhook_timeout_sec=0.5, alert_webhook_retries=1,
                   error_flush_interval_sec=0.1):
        assert alerts.check_webhook() is False
        assert "ALERT_WEBHOOK_URL is unreachable" in caplog.text
        failed = jobs.fail_permanent.delay("no receiver")
        wait_for(lambda: tracking.timeline(), 30, message="the failure to be recorded")
        assert jobs.add.delay(2, 3).get(timeout=30) == 5
        assert r.exists(f"celery-task-meta-{failed.id}")
        assert alerts.flush(30)


def test_alerting_switched_off_sends_nothing(receiver):
    with configure(alert_webhook_url=receiver.url, feature_alerting=False):
        alerts.alert("error_rate", "all", level="warning", title="t", message="m", component="tracking")
        assert alert_rules.evaluate() == []
        assert alerts.flush(10)
    assert receiver.alerts == []


def test_alert_context_is_redacted(alerting):
    alerts.alert("job_failed", "fp", level="warning", title="failed", message="password=hunter2",
                 component="task", context={"kwargs": {"api_key": "sk-live-9"}, "url": "https://u:pw9@host/x"})
    wait_for(lambda: alerting.alerts, 10, message="the alert")
    body = alerting.alerts[0].body.decode()
    assert "hunter2" not in body and "sk-live-9" not in body and "pw9" not in body


def test_a_failed_post_is_retried_with_backoff_until_the_receiver_takes_it(receiver):
    receiver.fail_first = 2
    with configure(alert_webhook_url=receiver.url, alert_webhook_secret=SECRET, alert_webhook_retries=3):
        alerts.alert("x", "retried", level="info", title="t", message="m", component="c")
        wait_for(lambda: receiver.alerts, 30, message="the alert after two refusals")
    assert receiver.attempts == 3 and receiver.alerts[0].verified


def test_a_malformed_webhook_url_fails_settings_validation_naming_it():
    from resilience.errors import SettingsError
    from resilience.settings import load_settings

    with pytest.raises(SettingsError, match="ALERT_WEBHOOK_URL"):
        load_settings({"ALERT_WEBHOOK_URL": "hooks.example.com/alerts"})


# -- the rules -----------------------------------------------------------------------------

def test_error_rate_rule_fires_over_its_threshold(alerting):
    with configure(alert_error_rate_per_min=3, error_flush_interval_sec=60):
        for _ in range(3):
            tracking.record_error("task", "t", ValueError("boom"))
        tracking.flush()
        assert alert_rules.check_error_rate() is False
        tracking.record_error("task", "t", ValueError("boom"))
        tracking.flush()
        assert alert_rules.check_error_rate() is True
    wait_for(lambda: _of_rule(alerting, "error_rate"), 10, message="the error-rate alert")


def test_queue_backlog_rule_fires_over_its_threshold(alerting, r):
    with configure(alert_queue_backlog=3):
        r.rpush("backlogged", *["x"] * 3)
        assert alert_rules.check_queue_backlog(["backlogged"]) == []
        r.rpush("backlogged", "x")
        assert alert_rules.check_queue_backlog(["backlogged"]) == ["backlogged"]
    wait_for(lambda: _of_rule(alerting, "queue_backlog"), 10, message="the backlog alert")
    assert _of_rule(alerting, "queue_backlog")[0]["context"]["depth"] == 4


def test_workers_low_rule_fires_when_too_few_heartbeats_are_recent(alerting, r):
    now = time.time()
    with configure(alert_min_workers=2, worker_heartbeat_timeout_sec=30):
        r.zadd(keys().worker_heartbeats, {"a|1": now, "b|1": now - 10})
        assert alert_rules.check_workers(now) is False
        r.zadd(keys().worker_heartbeats, {"b|1": now - 100})  # b's heartbeat is stale
        assert alert_rules.check_workers(now) is True
    wait_for(lambda: _of_rule(alerting, "workers_low"), 10, message="the workers alert")


def test_dead_letter_growth_rule_fires_when_the_queue_grows_within_the_window(alerting, r):
    with configure(alert_dead_letter_growth=3):
        now = time.time()
        r.lpush(keys().dead_letter, "{}")
        assert alert_rules.check_dead_letter_growth(now) is False
        r.lpush(keys().dead_letter, "{}", "{}")
        assert alert_rules.check_dead_letter_growth(now + 1) is False
        r.lpush(keys().dead_letter, "{}")
        assert alert_rules.check_dead_letter_growth(now + 2) is True
        # the growth happened long ago: outside the window it no longer counts
        assert alert_rules.check_dead_letter_growth(now + 1000) is False
    wait_for(lambda: _of_rule(alerting, "dead_letter_growth"), 10, message="the dead-letter alert")


def test_redis_unreachable_rule_fires_past_its_threshold(alerting):
    with configure(alert_redis_down_sec=30):
        assert alert_rules.redis_unreachable(10) is False
        assert alert_rules.redis_unreachable(31) is True
    wait_for(lambda: _of_rule(alerting, "redis_unreachable"), 10, message="the Redis alert")
    assert _of_rule(alerting, "redis_unreachable")[0]["level"] == "critical"


def test_redis_unreachable_alert_is_delivered_while_redis_is_down(receiver):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with configure(redis_url=dead, redis_connect_timeout_sec=0.2, redis_socket_timeout_sec=0.2,
                   alert_webhook_url=receiver.url, alert_webhook_secret=SECRET, alert_redis_down_sec=1):
        alert_rules.redis_unreachable(5)
        alert_rules.redis_unreachable(6)  # same window, kept in this process
        wait_for(lambda: receiver.alerts, 20, message="the Redis alert without Redis")
        assert alerts.flush(20)
    assert len(_of_rule(receiver, "redis_unreachable")) == 1


def test_breaker_state_changes_and_stuck_job_recoveries_alert(alerting):
    alert_rules.breaker_state_changed("payments", "open", failures=5)
    alert_rules.breaker_state_changed("payments", "closed")
    alert_rules.stuck_jobs_recovered(2, ["j1", "j2"])
    wait_for(lambda: len(alerting.alerts) == 3, 10, message="three alerts")
    states = [p["context"]["state"] for p in _of_rule(alerting, "breaker_state")]
    assert sorted(states) == ["closed", "open"]
    assert _of_rule(alerting, "stuck_jobs_recovered")[0]["context"]["count"] == 2


def test_the_beat_task_evaluates_the_rules_in_a_worker(app, worker, alerting):
    evaluate_alerts = app.tasks["resilience.evaluate_alerts"]
    entry = app.conf.beat_schedule["resilience.evaluate_alerts"]
    assert entry["task"] == evaluate_alerts.name
    with configure(alert_min_workers=50):
        evaluate_alerts.apply_async(**entry["options"]).get(timeout=30)  # as beat sends it
        wait_for(lambda: _of_rule(alerting, "workers_low"), 20, message="the workers alert from the beat task")


def test_payload_json_is_the_exact_signed_body(alerting):
    alerts.alert("x", "y", level="info", title="t", message="m", component="c")
    wait_for(lambda: alerting.alerts, 10, message="the alert")
    received = alerting.alerts[0]
    assert json.loads(received.body)["title"] == "t"
    assert alerts.verify(received.body, received.signature, SECRET)


@pytest.mark.slow
def test_a_worker_with_an_unreachable_webhook_reports_it_at_start_up_and_keeps_running_jobs(app, r, log_dir):
    from resilience.testing import SubprocessWorker, settings_env

    env = settings_env(ALERT_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hook", ALERT_WEBHOOK_TIMEOUT_SEC=0.3,
                       ALERT_WEBHOOK_RETRIES=1, ERROR_FLUSH_INTERVAL_SEC=0.2)
    with SubprocessWorker(log_dir, concurrency=1, include=["tests.jobs"], env=env) as worker:
        wait_for(lambda: "ALERT_WEBHOOK_URL is unreachable" in worker.log(), 30,
                 message=lambda: f"the start-up warning; log:\n{worker.log()[-2000:]}")
        jobs.fail_permanent.delay("nobody listens")
        wait_for(lambda: tracking.timeline(), 30, message="the failure to be recorded")
        assert jobs.add.delay(20, 22).get(timeout=30) == 42
        assert worker.alive()
