"""Retries with backoff, durable delayed runs and dead-lettering in a real worker (issue 3)."""

from __future__ import annotations

import json
import threading

import pytest

from resilience import deadletter, executions, scheduler
from resilience.backoff import ExponentialBackoff
from resilience.keys import keys
from resilience.testing import configure, in_process_worker, wait_for
from tests.jobs import add, fail_permanent, runs
from tests.jobs import retry as retry_jobs

WAIT = 30  # generous: the machine may be loaded


def only_entry() -> dict:
    entries = deadletter.list_entries()
    assert len(entries) == 1, entries
    return entries[0].data


def test_a_retryable_failure_runs_max_retries_plus_one_times_with_backoff_gaps_then_dead_letters(worker):
    job = retry_jobs.steady.delay()

    wait_for(lambda: deadletter.count() == 1, WAIT, message="the job to be dead-lettered")

    assert runs(job.id) == 3 + 1
    times = retry_jobs.run_times(job.id)
    policy = ExponentialBackoff(base=0.4, cap=1.0, jitter=False)
    for attempt, (before, after) in enumerate(zip(times, times[1:], strict=False)):
        assert after - before >= policy.compute(attempt) - 0.02, (attempt, after - before)
        assert after - before <= policy.compute(attempt) + 10, (attempt, after - before)
    entry = only_entry()
    for field in deadletter.REQUIRED_FIELDS:
        assert entry[field] not in (None, ""), field
    assert entry["job_id"] == job.id and entry["task"] == "tests.retry.steady"
    assert entry["error_type"] == "ConnectionError" and entry["retry_count"] == 3
    assert "ConnectionError" in entry["traceback"] and "retries exhausted" in entry["failure_reason"]
    assert entry["options"]["queue"] == "celery"
    assert executions.job_state(job.id)["s"] == "dead"


def test_a_permanent_error_is_dead_lettered_after_one_run(worker):
    job = fail_permanent.delay("no such customer")

    wait_for(lambda: deadletter.count() == 1, WAIT, message="the job to be dead-lettered")

    assert runs(job.id) == 1
    entry = only_entry()
    assert entry["error_type"] == "PermanentError" and entry["retry_count"] == 0
    assert "no such customer" in entry["failure_reason"]


def test_an_error_outside_retry_for_is_dead_lettered_at_once(worker):
    job = retry_jobs.unlisted.delay()

    wait_for(lambda: deadletter.count() == 1, WAIT, message="the job to be dead-lettered")

    assert runs(job.id) == 1
    assert only_entry()["error_type"] == "KeyError"


def test_self_retry_honours_an_explicit_countdown_and_dead_letters_past_max_retries(worker):
    job = retry_jobs.manual.delay(0.8)

    wait_for(lambda: deadletter.count() == 1, WAIT, message="the job to be dead-lettered")

    assert runs(job.id) == 2  # max_retries=1
    first, second = retry_jobs.run_times(job.id)
    assert second - first >= 0.8 - 0.02
    entry = only_entry()
    assert entry["error_type"] == "ValueError" and entry["retry_count"] == 1


def test_a_waiting_retry_lives_in_redis_not_in_a_worker(worker, r):
    job = retry_jobs.slow_backoff.delay()
    k = keys()

    wait_for(lambda: r.zcard(k.scheduled) == 1, WAIT, message="the retry to wait in jobs:scheduled")

    assert r.llen("celery") == 0 and r.hlen("unacked") == 0  # no ETA message held anywhere
    payload = json.loads(r.hget(k.scheduled_payloads, job.id))
    message = json.loads(payload["message"])
    assert payload["queue"] == "celery" and message["headers"]["id"] == job.id
    assert message["headers"]["retries"] == 1 and message["headers"].get("eta") is None
    assert executions.job_state(job.id)["s"] == "retrying"
    assert job.id not in r.hgetall(k.active)
    from resilience.status import collect

    assert collect()["scheduled_retries"] == 1
    assert job.get(timeout=WAIT) == "done"
    assert runs(job.id) == 2


def test_a_countdown_submission_is_kept_durably_and_runs_when_due(r):
    job = add.apply_async((2, 3), countdown=0.3)

    assert scheduler.waiting() == 1 and r.llen("celery") == 0
    from tests.jobs import app

    with in_process_worker(app):
        assert job.get(timeout=WAIT) == 5
    assert scheduler.waiting() == 0


def test_concurrent_promoters_move_each_due_run_once(r):
    jobs = [add.apply_async((n, n), countdown=0) for n in range(60)]
    barrier = threading.Barrier(4)

    def promote():
        barrier.wait()
        while scheduler.promote_due(limit=7):
            pass

    threads = [threading.Thread(target=promote) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)

    assert r.llen("celery") == len(jobs)
    assert scheduler.waiting() == 0 and r.hlen(keys().scheduled_payloads) == 0


def test_with_smart_retry_off_delays_are_celery_eta_messages(r):
    with configure(feature_smart_retry=False):
        add.apply_async((1, 1), countdown=30)

        assert scheduler.waiting() == 0
        message = json.loads(r.lindex("celery", 0))
        assert message["headers"]["eta"] is not None


def test_with_dead_letter_off_no_entry_is_written_and_old_ones_stay_readable(app, r):
    deadletter.bury_entry({"job_id": "old", "task": "tests.add", "args": [], "kwargs": {}, "options": {},
                           "failure_reason": "earlier", "error_type": "PermanentError", "traceback": "",
                           "retry_count": 0, "worker": "w"})
    with configure(feature_dead_letter=False), in_process_worker(app):
        job = fail_permanent.delay()
        wait_for(lambda: (executions.job_state(job.id) or {}).get("s") == "dead", WAIT,
                 message="the job to fail for good")

    assert [e.job_id for e in deadletter.list_entries()] == ["old"]


def test_arguments_reason_and_traceback_are_redacted(worker):
    retry_jobs.secretive.delay("ann", password="hunter2", options={"api_token": "tok-123", "page": 2})

    wait_for(lambda: deadletter.count() == 1, WAIT, message="the job to be dead-lettered")

    raw = deadletter.list_entries()[0].raw
    assert "hunter2" not in raw and "tok-123" not in raw
    entry = only_entry()
    assert entry["args"] == ["ann"]
    assert entry["kwargs"] == {"password": "***", "options": {"api_token": "***", "page": 2}}
    assert "password=***" in entry["failure_reason"] and "password=***" in entry["traceback"]


def test_dead_lettering_releases_the_idempotency_key_and_the_registry_entry(worker, r):
    job = fail_permanent.apply_async(("x",), idempotency_key="invoice-7")

    wait_for(lambda: deadletter.count() == 1, WAIT, message="the job to be dead-lettered")

    assert r.get(keys().idempotency("invoice-7")) is None
    assert job.id not in r.hgetall(keys().active)
    assert only_entry()["options"]["idempotency_key"] == "invoice-7"


def test_bury_entry_removes_the_job_everywhere_in_one_step(r):
    k = keys()
    r.set(k.job_state("j1"), json.dumps({"s": "running", "a": 0, "w": "w1", "t": 0, "n": 1}))
    r.hset(k.active, "j1", json.dumps({"job_id": "j1", "worker": "w1"}))
    r.zadd(k.active_deadlines, {"j1": 1})
    r.set(k.idempotency("key-1"), "j1")
    r.hset("unacked", "tag-1", "[]")
    r.zadd("unacked_index", {"tag-1": 1})

    deadletter.bury_entry({"job_id": "j1", "task": "tests.add", "args": [1], "kwargs": {"password": "pw"},
                           "options": {"queue": "celery", "idempotency_key": "key-1"},
                           "failure_reason": "stuck", "error_type": "JobStuck", "traceback": "",
                           "retry_count": 0, "worker": "w1"},
                          job_id="j1", worker_id="w1", delivery_tag="tag-1")

    assert r.hlen(k.active) == 0 and r.zcard(k.active_deadlines) == 0
    assert r.get(k.idempotency("key-1")) is None
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
    assert executions.job_state("j1")["s"] == "dead"
    entry = only_entry()
    assert entry["kwargs"] == {"password": "***"} and entry["failed_at"].endswith("Z")


@pytest.mark.parametrize("owner", ["another-worker"])
def test_bury_entry_leaves_a_registry_entry_owned_by_another_run(r, owner):
    k = keys()
    r.hset(k.active, "j2", json.dumps({"job_id": "j2", "worker": owner}))

    deadletter.bury_entry({"job_id": "j2", "task": "t", "args": [], "kwargs": {}, "options": {},
                           "failure_reason": "x", "error_type": "E", "traceback": "", "retry_count": 0,
                           "worker": "w1"}, worker_id="w1")

    assert r.hexists(k.active, "j2")


def test_a_delayed_submission_keeps_its_links_and_headers(r):
    job = add.apply_async((1, 1), countdown=60, link=add.s(10), headers={"trace": "t-1"})

    payload = json.loads(r.hget(keys().scheduled_payloads, job.id))
    message = json.loads(payload["message"])
    import base64

    _, _, embed = json.loads(base64.b64decode(message["body"]))
    assert [s["task"] for s in embed["callbacks"]] == ["tests.add"]
    assert message["headers"]["trace"] == "t-1" and message["headers"]["eta"] is None


@pytest.mark.slow
def test_delayed_submissions_keep_working_after_a_redis_restart(r, redis_server):
    add.apply_async((1, 1), countdown=60)

    redis_server.restart()
    wait_for(redis_server.ping, WAIT, message="Redis to come back")
    job = add.apply_async((2, 2), countdown=60)

    assert r.zscore(keys().scheduled, job.id) is not None
    assert r.llen("celery") == 0
