"""What a record keeps is bounded in bytes: dead letters, error records, alert bodies (issue 15)."""

from __future__ import annotations

import json

import pytest

import tests.jobs.redact as rj
from resilience import alerts, deadletter, executions, tracking
from resilience.keys import keys
from resilience.testing import SubprocessWorker, configure, settings_env, wait_for

BIG = "x" * 1_000_000  # a 1 MB argument (MAX_PAYLOAD_BYTES is 1 MiB)
DEAD_LETTER_BOUND = (deadletter.MAX_ARGS_BYTES + deadletter.MAX_KWARGS_BYTES + deadletter.MAX_REASON_BYTES
                     + deadletter.MAX_TRACEBACK_BYTES + 1024)
ERROR_RECORD_BOUND = (tracking.MAX_MESSAGE_BYTES + tracking.MAX_TRACEBACK_BYTES + tracking.MAX_CONTEXT_BYTES
                      + 1024)
ALERT_BOUND = alerts.MAX_TITLE_BYTES + alerts.MAX_MESSAGE_BYTES + alerts.MAX_CONTEXT_BYTES + 512


def _huge_entry(job_id: str) -> dict:
    return {"job_id": job_id, "task": "tests.add", "args": [BIG, list(range(100_000))],
            "kwargs": {"note": BIG, "password": BIG, "rows": [{"n": i} for i in range(50_000)]},
            "options": {"queue": "celery"}, "failure_reason": "stuck: " + BIG, "error_type": "Stuck",
            "traceback": "Traceback (most recent call last):\n" + "  frame\n" * 200_000 + "Stuck: the end",
            "retry_count": 0, "worker": "w@test"}


def test_a_dead_letter_entry_keeps_bounded_fields_and_says_which_were_cut(r):
    deadletter.bury_entry(_huge_entry("big-1"))

    [raw] = r.lrange(keys().dead_letter, 0, -1)
    entry = json.loads(raw)
    assert len(raw) < DEAD_LETTER_BOUND
    assert entry["clipped"] == ["args", "kwargs", "failure_reason", "traceback"]
    assert len(json.dumps(entry["args"])) <= deadletter.MAX_ARGS_BYTES
    assert len(json.dumps(entry["traceback"])) <= deadletter.MAX_TRACEBACK_BYTES
    assert entry["kwargs"]["password"] == "***"
    assert "…[truncated" in entry["failure_reason"]
    assert entry["traceback"].startswith("Traceback") and entry["traceback"].endswith("Stuck: the end")


def test_an_entry_whose_arguments_were_cut_is_not_replayed(r):
    deadletter.bury_entry(_huge_entry("big-2"))

    outcome = deadletter.replay(["big-2"])

    assert outcome.refused == ["big-2"] and outcome.done == []
    assert r.llen("celery") == 0 and deadletter.count() == 1
    with pytest.raises(ValueError, match="cut"):
        deadletter.replay_entry(deadletter.get("big-2"))


def test_an_error_record_keeps_bounded_fields(r):
    with configure(error_flush_interval_sec=60):
        try:
            raise ValueError("bad input " + BIG)
        except ValueError as exc:
            tracking.record_error("task", "tests.add", exc, context={"args": [BIG], "kwargs": {"k": BIG},
                                                                     "retries": 0})
        assert tracking.flush() == 1

    [raw] = r.zrange(keys().errors_timeline, 0, -1)
    record = json.loads(raw)
    assert len(raw) < ERROR_RECORD_BOUND
    assert len(json.dumps(record["error_message"])) <= tracking.MAX_MESSAGE_BYTES
    assert len(json.dumps(record["context"])) <= tracking.MAX_CONTEXT_BYTES
    assert set(record["context"]) == {"args", "kwargs", "retries"}
    assert record["traceback"].startswith("Traceback") and "…[truncated" in record["traceback"]


def test_an_alert_body_is_bounded():
    payload = alerts.build_payload(level="warning", title="T" * 100_000, message="M" * 100_000, component="task",
                                   context={"args": [BIG], "kwargs": {"k": BIG}, "api_key": "zq-9"})

    body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    assert len(body) < ALERT_BOUND
    assert payload["context"]["api_key"] == "***"


@pytest.mark.slow
def test_a_job_failing_with_a_1_mb_argument_is_dead_lettered_within_a_second_of_its_failure(app, log_dir):
    """Measured in the worker: from the job's raise to the dead-letter write (the execution record's time)."""
    env = settings_env(ERROR_FLUSH_INTERVAL_SEC=0.2)
    with SubprocessWorker(log_dir, concurrency=1, include=["tests.jobs.redact"], env=env) as worker:
        job = rj.fail_big.delay(BIG)
        after = rj.stamp.delay()  # the same pool process takes it once it is done with the failure
        wait_for(lambda: deadletter.count() == 1, 60, message=lambda: f"the dead letter; log:\n{worker.log()[-2000:]}")
        wait_for(lambda: rj.started_at(after.id), 60, message="the next job to start")

    buried_at = executions.job_state(job.id)["t"]
    assert buried_at - rj.raised_at(job.id) < 1.0
    [entry] = deadletter.list_entries()
    assert len(entry.raw) < DEAD_LETTER_BOUND and "args" in entry.data["clipped"]
    assert len(worker.log()) < 200_000  # the worker's log lines are bounded too
