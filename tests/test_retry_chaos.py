"""Delayed retries and poison jobs with subprocess workers that die (issue 3)."""

from __future__ import annotations

import pytest

from resilience import deadletter, scheduler
from resilience.keys import keys
from resilience.testing import SubprocessWorker, settings_env, wait_for
from tests.jobs import retry as retry_jobs
from tests.jobs import runs

WAIT = 90  # worker start-up on a loaded machine


def completed(r, job_id: str) -> int:
    return int(r.hget(keys().custom("test:completed"), job_id) or 0)


def quiet(r) -> bool:
    """Nothing left anywhere that could run the job again."""
    return scheduler.waiting() == 0 and r.llen("celery") == 0 and r.hlen("unacked") == 0 \
        and r.hlen(keys().active) == 0


def leftovers(r) -> dict:
    return {"scheduled": scheduler.waiting(), "queue": r.lrange("celery", 0, -1), "unacked": r.hgetall("unacked"),
            "active": r.hgetall(keys().active)}


def worker(log_dir, **overrides) -> SubprocessWorker:
    return SubprocessWorker(log_dir, include=["tests.jobs.retry"], env=settings_env(**overrides))


@pytest.mark.slow
def test_a_worker_killed_while_a_retry_waits_loses_nothing_and_the_retry_runs_once(r, log_dir):
    first = worker(log_dir).start().wait_ready(WAIT)
    try:
        job = retry_jobs.slow_backoff.delay()  # fails once, retry due 3 s later
        wait_for(lambda: scheduler.waiting() == 1, WAIT, message=lambda: "the retry to wait\n" + first.log()[-2000:])

        first.kill()  # SIGKILL while the retry waits

        assert scheduler.waiting() == 1
        with worker(log_dir) as second:
            wait_for(lambda: completed(r, job.id) == 1, WAIT,
                     message=lambda: "the retry to run\n" + second.log()[-2000:])
            wait_for(lambda: quiet(r), WAIT, message=lambda: f"the queues to drain: {leftovers(r)}")
    finally:
        first.stop()

    assert runs(job.id) == 2 and completed(r, job.id) == 1


@pytest.mark.slow
def test_a_backoff_longer_than_the_visibility_timeout_runs_the_job_once(r, log_dir):
    from tests.jobs import add

    with worker(log_dir, broker_visibility_timeout_sec=1) as w:
        job = retry_jobs.slow_backoff.delay()  # 3 s backoff, visibility timeout 1 s
        wait_for(lambda: completed(r, job.id) == 1, WAIT, message=lambda: "the retry to run\n" + w.log()[-2000:])
        # a later job through the same worker: anything restored by the visibility timeout would run first
        assert add.delay(1, 1).get(timeout=WAIT) == 2
        wait_for(lambda: quiet(r), WAIT, message=lambda: f"the queues to drain: {leftovers(r)}")

    assert runs(job.id) == 2 and completed(r, job.id) == 1


@pytest.mark.slow
def test_a_job_that_kills_its_pool_process_is_dead_lettered_as_poison(r, log_dir):
    with worker(log_dir, poison_max_deliveries=2) as w:
        job = retry_jobs.poison.delay()

        wait_for(lambda: deadletter.count() == 1, WAIT, message=lambda: "the poison job to be dead-lettered\n"
                 + w.log()[-3000:])
        wait_for(lambda: quiet(r), WAIT, message=lambda: f"the queues to drain: {leftovers(r)}")

    assert runs(job.id) == 2  # each delivery killed its pool process; the third was not run
    assert job.state == "FAILURE", "failed as Celery would fail it (issue 18: its link_error is called)"
    entry = deadletter.list_entries()[0].data
    assert entry["job_id"] == job.id and "poison" in entry["failure_reason"]
    assert entry["task"] == "tests.retry.poison"
