"""Error tracking: failures and retries recorded in errors:timeline / errors:patterns."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import tests.jobs.tracking as tj
from resilience import alerts, tracking
from resilience.keys import keys
from resilience.testing import configure, free_port, wait_for
from tests import jobs


@pytest.fixture(autouse=True)
def _fast_flush():
    """Records are written quickly, and none is left buffered for the next test."""
    with configure(error_flush_interval_sec=0.1):
        yield
        tracking.flush()
        alerts.flush(30)


def _pattern_count(r, pattern: str) -> int:
    return int(r.hget(keys().errors_patterns, pattern) or 0)


def test_a_failed_job_is_recorded_with_its_details_and_counted_in_its_pattern(app, worker, r):
    result = jobs.fail_permanent.delay("customer 42 does not exist")
    pattern = "task:tests.fail_permanent:PermanentError"
    wait_for(lambda: _pattern_count(r, pattern) == 1, 30, message="the failure's pattern count")

    [record] = tracking.timeline()
    assert record["job_id"] == result.id
    assert record["component"] == "task"
    assert record["operation"] == record["task"] == "tests.fail_permanent"
    assert record["error_type"] == "PermanentError"
    assert record["error_message"] == "customer 42 does not exist"
    assert record["worker"] and record["error_id"] and record["timestamp"]
    assert len(record["fingerprint"]) == 16
    assert record["context"]["outcome"] == "failed"
    assert record["context"]["args"] == ["customer 42 does not exist"]
    assert tracking.patterns()[0] == {"pattern": pattern, "component": "task", "operation": "tests.fail_permanent",
                                      "error_type": "PermanentError", "count": 1}


def test_a_retried_failure_is_recorded_as_retrying(app, worker, r):
    result = jobs.fail_transient.delay(times=1)
    assert result.get(timeout=60) == "recovered"
    wait_for(lambda: _pattern_count(r, "task:tests.fail_transient:ConnectionError") == 1, 30,
             message="the retry to be recorded")
    [record] = tracking.timeline()
    assert record["context"]["outcome"] == "retrying"
    assert record["job_id"] == result.id


def test_control_flow_and_declared_expected_errors_are_not_tracked(app, worker, r):
    for job in (tj.expected, tj.ignored, tj.rejected):
        job.delay()
    marker = jobs.fail_permanent.delay("marker")  # submitted last: once it is tracked, the others ran
    wait_for(lambda: _pattern_count(r, "task:tests.fail_permanent:PermanentError") == 1, 30,
             message="the marker failure to be recorded")
    wait_for(lambda: r.exists(f"celery-task-meta-{marker.id}"), 30, message="the marker to finish")
    tracking.flush()
    assert [p["pattern"] for p in tracking.patterns()] == ["task:tests.fail_permanent:PermanentError"]
    assert [rec["job_id"] for rec in tracking.timeline()] == [marker.id]


def test_the_same_error_with_other_values_has_the_same_fingerprint():
    frames = ["tasks.billing:charge"]
    first = tracking.fingerprint("billing.charge", "ValueError", "order 41 for 'alice' failed at 0x7f3a", frames)
    second = tracking.fingerprint("billing.charge", "ValueError", "order 97 for 'bob' failed at 0x11aa", frames)
    assert first == second
    assert first != tracking.fingerprint("billing.charge", "KeyError", "order 41 for 'alice' failed", frames)
    assert first != tracking.fingerprint("billing.refund", "ValueError", "order 41 for 'alice' failed", frames)
    assert first != tracking.fingerprint("billing.charge", "ValueError", "order 41 for 'alice' failed",
                                         ["tasks.billing:refund"])


def test_context_secrets_are_masked_before_they_are_stored(r):
    tracking.record_error("payments", "charge", ValueError("declined: token=abc123"),
                          context={"api_key": "sk-live-1", "nested": {"password": "hunter2"}, "order": 7})
    assert tracking.flush() == 1
    raw = r.zrange(keys().errors_timeline, 0, -1)[0]
    assert "sk-live-1" not in raw and "hunter2" not in raw and "abc123" not in raw
    assert json.loads(raw)["context"]["order"] == 7


def test_tracking_switched_off_records_nothing(app, worker, r):
    with configure(feature_error_tracking=False):
        assert tracking.record_error("task", "x", ValueError("boom")) is None
        result = jobs.fail_permanent.delay("untracked")
        wait_for(lambda: r.exists(f"celery-task-meta-{result.id}"), 30, message="the job to finish")
        tracking.flush()
        assert r.exists(keys().errors_timeline, keys().errors_patterns) == 0


def test_recording_while_redis_is_unreachable_neither_raises_nor_loses_the_record(r):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with configure(redis_url=dead, redis_connect_timeout_sec=0.2, redis_socket_timeout_sec=0.2,
                   error_flush_interval_sec=60):
        assert tracking.record_error("task", "t", RuntimeError("boom")) is not None
        assert tracking.flush() == 0  # logged and swallowed; the record stays buffered
        assert tracking.pending() == 1
    assert tracking.flush() == 1
    assert _pattern_count(r, "task:t:RuntimeError") == 1


def test_the_timeline_is_trimmed_to_its_maximum_and_retention(r):
    with configure(error_timeline_max_entries=5, error_flush_interval_sec=60):
        for i in range(8):
            tracking.record_error("task", "t", ValueError(f"boom {i}"))
        tracking.record_error("task", "t", ValueError("ancient"), now=1.0)  # far beyond the retention
        tracking.flush()
    assert r.zcard(keys().errors_timeline) == 5
    assert "ancient" not in " ".join(r.zrange(keys().errors_timeline, 0, -1))
    assert _pattern_count(r, "task:t:ValueError") == 9


def test_errors_command_prints_patterns_and_timeline_as_json(r):
    from resilience.cli import main

    tracking.record_error("task", "tests.cli", ValueError("boom"), job_id="job-1")
    tracking.flush()
    out = CliRunner().invoke(main, ["errors", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["patterns"][0]["pattern"] == "task:tests.cli:ValueError"
    assert data["timeline"][0]["job_id"] == "job-1"
    human = CliRunner().invoke(main, ["errors"])
    assert human.exit_code == 0 and "task:tests.cli:ValueError" in human.output
