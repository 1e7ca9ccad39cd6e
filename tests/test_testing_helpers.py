"""The test helpers users get (resilience.testing), on the bundled app and real workers:
the recorder counts body runs and retries, JobInspector asserts on them."""

from __future__ import annotations

import re

import pytest

from resilience import idempotency
from resilience.testing import JobInspector, PrivateRedis, SubprocessWorker, recorder, wait_for


@pytest.fixture
def jobs(app):
    recorder.enable()
    yield JobInspector(app, timeout=30)
    recorder.disable()


def test_a_run_counts_the_body_once_and_not_a_redelivery_the_guard_absorbed(app, worker, jobs):
    job = app.tasks["tests.add"].delay(1, 2)
    jobs.assert_ran_once(job)
    # Given the same message again (a redelivery), the guard acknowledges it without running the body.
    app.tasks["tests.add"].plain_apply_async((1, 2), task_id=job.id)
    wait_for(lambda: idempotency.counters()["skipped_done"] == 1, 30, message="the redelivery to be absorbed")
    assert jobs.runs(job) == 1


def test_a_job_that_ran_twice_fails_assert_ran_once_saying_so(app, worker, jobs):
    job = app.tasks["tests.fail_transient"].delay(times=1)  # fails once, retried, then succeeds
    with pytest.raises(AssertionError, match="ran 2 times, not once"):
        jobs.assert_ran_once(job)
    assert jobs.state(job) == "done"


def test_retries_are_recorded_with_the_delays_the_backoff_chose(app, worker, jobs):
    # tests.fail_transient: max_retries=2, base 0.2 s, cap 1 s, equal jitter on.
    job = app.tasks["tests.fail_transient"].delay()
    retries = jobs.assert_retried(job, 2, delays=[(0.1, 0.2), (0.2, 0.4)], tolerance=0)
    assert [r.attempt for r in retries] == [0, 1]
    assert {r.error_type for r in retries} == {"ConnectionError"}
    jobs.assert_dead_lettered(job, "retries exhausted after 2 retries", error_type="ConnectionError")
    assert jobs.runs(job) == 3
    with pytest.raises(AssertionError, match="retried 2 times, not 1"):
        jobs.assert_retried(job, 1)
    with pytest.raises(AssertionError, match="retry 1 of job .* was due after"):
        jobs.assert_retried(job, 2, delays=[5, 10])


def test_a_permanent_error_is_dead_lettered_after_one_run_with_its_reason(app, worker, jobs):
    job = app.tasks["tests.fail_permanent"].delay("card declined")
    entry = jobs.assert_dead_lettered(job, re.compile(r"^permanent error: card declined$"),
                                      error_type="PermanentError")
    assert entry["job_id"] == job.id
    jobs.assert_ran_once(job)
    assert jobs.retries(job) == []
    with pytest.raises(AssertionError, match="dead-lettered with 'permanent error: card declined', not 'timeout'"):
        jobs.assert_dead_lettered(job, "timeout")


def test_a_wait_that_times_out_says_what_was_recorded(app, jobs):
    job = app.tasks["tests.add"].delay(1, 2)  # no worker: it never starts
    with pytest.raises(AssertionError, match=r"job .* to finish \(record None, 0 runs, 0 retries"):
        jobs.wait_finished(job, timeout=0.5)


def test_a_subprocess_worker_runs_the_app_it_is_given_with_its_queues(log_dir):
    w = SubprocessWorker(log_dir, app="tasks", queues=["celery", "maintenance"], include=["tests.jobs"])
    assert w.argv[w.argv.index("-A") + 1] == "tasks"
    assert w.argv[w.argv.index("-Q") + 1] == "celery,maintenance"
    default = SubprocessWorker(log_dir)
    assert default.argv[default.argv.index("-A") + 1] == "resilience.bundled:app"


def test_a_private_redis_keeps_what_it_acknowledged_across_a_crash(tmp_path):
    server = PrivateRedis.in_directory(tmp_path / "redis").start()
    try:
        import redis

        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        server.crash()
        assert client.get("kept") == b"yes"
        client.close()
    finally:
        server.stop()
