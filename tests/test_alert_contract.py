"""Every alert a production path sends, captured from a real run and checked against DESIGN.md.

The contract (shared DESIGN.md, "Alerts"): ``POST ALERT_WEBHOOK_URL`` with JSON
``{level, title, message, component, context, timestamp, environment}``, levels
``critical``, ``warning``, ``info``, and ``X-Resilience-Signature:
sha256=<hex HMAC-SHA256 of the body>``. Each alert is raised the way production
raises it: a breaker opening and closing on real HTTP failures, the sweep
recovering the job of a killed worker, a Redis outage noticed by the
spool flusher, and beat's evaluation task run on a worker. A real local
receiver takes them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import time
from datetime import datetime

import httpx
import pytest

from resilience import alerts, connection, sweeper, tracking
from resilience.alerts import LEVELS
from resilience.errors import CircuitOpenError
from resilience.httpclient import BreakerClient
from resilience.testing import SubprocessWorker, configure, in_process_worker, wait_for
from resilience.testing.flakyapi import FlakyAPI
from resilience.testing.webhook_receiver import WebhookReceiver
from tests.jobs import fail_permanent, runs
from tests.jobs.outage import mark

SECRET = "contract-secret"
FIELDS = {"level", "title", "message", "component", "context", "timestamp", "environment"}


pytestmark = pytest.mark.usefixtures("alerts_delivered")


@pytest.fixture
def receiver():
    with WebhookReceiver(SECRET) as rcv, configure(alert_webhook_url=rcv.url, alert_webhook_secret=SECRET,
                                                   alert_window_sec=60, error_flush_interval_sec=0.1):
        yield rcv


def of_rule(receiver, rule: str) -> list:
    return [a for a in receiver.alerts if a.payload.get("context", {}).get("rule") == rule]


def assert_contract(received, *, rule: str, level: str, component: str) -> dict:
    """The body is the DESIGN.md payload, signed as DESIGN.md says, and raised by ``rule``."""
    payload = json.loads(received.body)
    assert set(payload) == FIELDS
    assert payload["level"] in LEVELS and payload["level"] == level
    assert all(isinstance(payload[name], str) and payload[name] for name in ("title", "message", "component"))
    assert payload["component"] == component
    assert isinstance(payload["context"], dict) and payload["context"]["rule"] == rule
    assert datetime.fromisoformat(payload["timestamp"]).utcoffset().total_seconds() == 0
    assert isinstance(payload["environment"], str)
    expected = "sha256=" + hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert received.signature == expected and received.verified
    return payload


def test_a_breaker_opening_and_closing_sends_the_contract_alerts(receiver):
    with FlakyAPI(mode="failing") as api, BreakerClient("contract-api", base_url=api.url) as client:
        client.breaker.configure(fail_max=3, reset_timeout_sec=0.5)
        for _ in range(3):
            with pytest.raises(httpx.HTTPStatusError):
                client.get("/quotes/1")
        with pytest.raises(CircuitOpenError):
            client.get("/quotes/1")
        api.mode = "ok"
        wait_for(lambda: client.get("/quotes/2").status_code == 200, 15, message="a trial call to succeed")
    wait_for(lambda: len(of_rule(receiver, "breaker_state")) >= 2, 15, message="the open and closed alerts")
    by_state = {a.payload["context"]["state"]: a for a in of_rule(receiver, "breaker_state")}
    opened = assert_contract(by_state["open"], rule="breaker_state", level="critical", component="breaker")
    closed = assert_contract(by_state["closed"], rule="breaker_state", level="info", component="breaker")
    assert opened["context"]["breaker"] == "contract-api" and opened["context"]["failures"] == 3
    assert closed["context"]["previous"] == "half-open"


@pytest.mark.slow
def test_the_sweep_recovering_the_job_of_a_killed_worker_sends_the_contract_alert(app, r, receiver, log_dir):
    with configure(worker_heartbeat_timeout_sec=3, worker_heartbeat_interval_sec=0.5, job_progress_timeout_sec=60):
        w = SubprocessWorker(log_dir, name="contract@test", include=["tests.jobs"]).start().wait_ready(120)
        try:
            job = app.tasks["tests.sleep"].apply_async((1.0,))
            wait_for(lambda: runs(job.id) == 1, 60, message="the job to start")
            w.kill(signal.SIGKILL)  # the worker and its pool: its heartbeat stops
            wait_for(lambda: sweeper.sweep(app).acted, 60, interval=0.5, message="the sweep to recover the job")
        finally:
            w.stop()
    wait_for(lambda: of_rule(receiver, "stuck_jobs_recovered"), 15, message="the stuck-jobs alert")
    payload = assert_contract(of_rule(receiver, "stuck_jobs_recovered")[0], rule="stuck_jobs_recovered",
                              level="warning", component="sweeper")
    assert job.id in payload["context"]["job_ids"] and payload["context"]["count"] >= 1


def test_a_redis_outage_noticed_by_the_spool_flusher_sends_the_contract_alert(app, redis_server, receiver,
                                                                                 tmp_path):
    assert app.conf.broker_url  # the app is configured: its features are wired
    connection.reset()
    with configure(data_dir=str(tmp_path / "data"), publish_timeout_sec=5.0, redis_reconnect_max_sec=0.2,
                   alert_redis_down_sec=1):
        redis_server.stop()
        try:
            mark.delay(str(tmp_path / "marks.txt"))  # spooled; the flusher keeps trying and notices the outage
            wait_for(lambda: of_rule(receiver, "redis_unreachable"), 30, message="the Redis alert")
        finally:
            redis_server.restart()
        assert alerts.flush(30)
    connection.reset()
    payload = assert_contract(of_rule(receiver, "redis_unreachable")[0], rule="redis_unreachable",
                              level="critical", component="redis")
    assert payload["context"]["connection"] in connection.COMPONENTS
    assert payload["context"]["down_for_sec"] >= 1


def test_the_beat_task_sends_the_periodic_rules_alerts(app, receiver):
    with configure(alert_min_workers=50, alert_error_rate_per_min=1), in_process_worker(app):
        for _ in range(2):
            fail_permanent.delay("contract")
        wait_for(lambda: tracking.error_count_since(time.time() - 60) >= 2, 30, message="two errors recorded")
        evaluate = app.tasks["resilience.evaluate_alerts"]
        entry = app.conf.beat_schedule["resilience.evaluate_alerts"]
        evaluate.apply_async(**entry.get("options", {}))  # as beat sends it
        wait_for(lambda: of_rule(receiver, "error_rate") and of_rule(receiver, "workers_low"), 60,
                 message="the error-rate and workers alerts from the beat task")
    assert_contract(of_rule(receiver, "workers_low")[0], rule="workers_low", level="critical", component="workers")
    assert_contract(of_rule(receiver, "error_rate")[0], rule="error_rate", level="warning", component="tracking")
