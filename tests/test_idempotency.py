"""Idempotency: submit-time deduplication and the execution guard, on a real Redis and real workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid

import pytest

from resilience import idempotency
from resilience.errors import InvalidIdempotencyKey, PayloadTooLarge, UnserializableArgument
from resilience.keys import keys
from resilience.testing import SubprocessWorker, configure, in_process_worker, wait_for
from tests.jobs import idempotency as jobs
from tests.jobs import runs

pytestmark = pytest.mark.usefixtures("app")


def queued(app, r) -> int:
    """Messages waiting in the default queue plus messages delivered but not yet acknowledged."""
    return r.llen(app.conf.task_default_queue) + r.hlen("unacked")


def drained(app, r) -> bool:
    return queued(app, r) == 0


def idempotency_keys(r) -> list[str]:
    return [k for k in r.scan_iter(match=keys().idempotency("*"))]


def submit_concurrently(submit, threads: int = 8, each: int = 500) -> list[str]:
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def caller():
        try:
            mine = [submit().id for _ in range(each)]
        except BaseException as err:  # reported below
            errors.append(err)
            return
        with lock:
            ids.extend(mine)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert not errors, errors
    return ids


# -- submit-time deduplication -------------------------------------------------------------

@pytest.mark.parametrize("explicit_key", [None, "order-42"], ids=["derived key", "explicit key"])
def test_concurrent_duplicate_submissions_enqueue_one_job_that_runs_once(app, r, explicit_key):
    ids = submit_concurrently(lambda: jobs.charge.apply_async(("o-42", 1000), idempotency_key=explicit_key))
    assert len(ids) == 8 * 500
    assert len(set(ids)) == 1, "every caller gets the same job id"
    assert queued(app, r) == 1, "exactly one job is enqueued"
    (job_id,) = set(ids)
    with in_process_worker(app):
        assert jobs.charge.AsyncResult(job_id).get(timeout=30) == {"order_id": "o-42", "charged": 1000}
        wait_for(lambda: drained(app, r), 30, message="the queue to drain")
    assert runs(job_id) == 1
    assert idempotency.counters()["absorbed_submissions"] == 8 * 500 - 1


def test_a_duplicate_submission_returns_the_original_result(app, r, worker):
    first = jobs.charge.apply_async(("o-1", 500))
    assert first.get(timeout=30) == {"order_id": "o-1", "charged": 500}
    again = jobs.charge.apply_async(kwargs={"amount_cents": 500, "order_id": "o-1"})
    assert again.id == first.id, "positional or keyword, in any order: the same arguments"
    assert jobs.charge.apply_async(("o-1",), {"amount_cents": 500}).id == first.id
    assert again.get(timeout=10) == {"order_id": "o-1", "charged": 500}
    assert runs(first.id) == 1


def test_different_arguments_give_a_new_job(app, r):
    a = jobs.charge.apply_async(("o-1", 500))
    b = jobs.charge.apply_async(("o-1", 501))
    c = jobs.echo.apply_async((1,), idempotency_key="k-1")
    d = jobs.echo.apply_async((1,), idempotency_key="k-2")
    assert len({a.id, b.id, c.id, d.id}) == 4
    assert queued(app, r) == 4


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"], ids=["empty", "spaces", "whitespace"])
def test_a_blank_idempotency_key_is_refused_and_nothing_is_claimed_or_enqueued(app, r, blank):
    """Issue 15: an empty key used to be one real key shared by every caller passing it."""
    with pytest.raises(InvalidIdempotencyKey, match="blank"):
        jobs.echo.apply_async((1,), idempotency_key=blank)
    assert queued(app, r) == 0
    assert idempotency_keys(r) == []


def test_an_idempotency_key_over_256_bytes_is_refused_naming_the_limit(app, r):
    with pytest.raises(InvalidIdempotencyKey, match="257 bytes, over the limit of 256 bytes"):
        jobs.echo.apply_async((1,), idempotency_key="k" * 257)
    with pytest.raises(InvalidIdempotencyKey, match="258 bytes"):  # the limit counts UTF-8 bytes, not characters
        jobs.echo.apply_async((1,), idempotency_key="é" * 129)
    assert queued(app, r) == 0 and idempotency_keys(r) == []
    longest = jobs.echo.apply_async((1,), idempotency_key="é" * 128)
    assert r.get(keys().idempotency("é" * 128)) == longest.id


def test_the_same_arguments_after_the_ttl_give_a_new_job(app, r):
    with configure(idempotency_ttl_sec=1):
        first = jobs.charge.apply_async(("o-ttl", 100))
        key = keys().idempotency(idempotency.key_for(jobs.charge, ("o-ttl", 100), {}, None))
        assert r.get(key) == first.id
        assert 0 < r.ttl(key) <= 1
        wait_for(lambda: not r.exists(key), 10, message="the idempotency key to expire")
        second = jobs.charge.apply_async(("o-ttl", 100))
    assert second.id != first.id
    assert queued(app, r) == 2


def test_derived_keys_are_canonical_and_stable_across_processes():
    key = idempotency.derived_key("t", ("é", 1.5, (1, 2)), {"b": {"y": 1, "x": [None]}, "a": True})
    assert key == idempotency.derived_key("t", ["é", 1.5, [1, 2]], {"a": True, "b": {"x": (None,), "y": 1}})
    assert key != idempotency.derived_key("t", ("é", 1.5, (1, 2)), {"b": {"y": 1, "x": [None]}, "a": 1})
    assert idempotency.derived_key("t", (), {"m": {1: "a", "b": 2}}) == \
        idempotency.derived_key("t", (), {"m": {"b": 2, "1": "a"}})
    code = ("from resilience.idempotency import derived_key;"
            "print(derived_key('t', ('é', 1.5, (1, 2)), {'b': {'y': 1, 'x': [None]}, 'a': True}))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.stdout.strip() == key


def test_a_failed_publish_releases_the_claim_and_raises(app, r):
    from kombu.exceptions import EncodeError, SerializerNotInstalled

    with pytest.raises((SerializerNotInstalled, EncodeError, KeyError)):
        jobs.charge.apply_async(("o-pub", 1), serializer="no-such-serializer")
    assert idempotency_keys(r) == [], "the claim was released"
    assert queued(app, r) == 0
    retried = jobs.charge.apply_async(("o-pub", 1))
    assert r.get(keys().idempotency(idempotency.key_for(jobs.charge, ("o-pub", 1), {}, None))) == retried.id


def test_release_only_deletes_a_key_its_job_still_owns(r):
    assert idempotency.claim("k", "job-a") is None
    assert idempotency.claim("k", "job-b") == "job-a"
    idempotency.release("k", "job-b")
    assert idempotency.owner("k") == "job-a"
    idempotency.release("k", "job-a")
    assert idempotency.owner("k") is None


# -- bad input ------------------------------------------------------------------------------

def test_unserializable_arguments_fail_in_the_caller_naming_the_argument(app, r):
    with pytest.raises(UnserializableArgument, match=r"args\[1\]"):
        jobs.charge.apply_async(("o-1", object()))
    with pytest.raises(UnserializableArgument, match=r"kwargs\['x'\]"):
        jobs.echo.apply_async(kwargs={"x": {1, 2}})
    with pytest.raises(UnserializableArgument, match=r"args\[0\]"):
        jobs.echo.delay(float("nan"))
    assert queued(app, r) == 0
    assert idempotency_keys(r) == [], "nothing is claimed for a submission that fails"


def test_an_oversized_payload_fails_in_the_caller(app, r):
    with configure(max_payload_bytes=200):
        with pytest.raises(PayloadTooLarge, match="MAX_PAYLOAD_BYTES"):
            jobs.charge.apply_async(("x" * 500, 1))
    assert queued(app, r) == 0
    assert idempotency_keys(r) == []


def test_send_task_with_an_unknown_name_fails_the_result_in_the_worker(app, r, worker):
    """Documented behaviour: app.send_task bypasses the submit path; the worker discards the message
    and records a failure the caller sees."""
    result = app.send_task("tests.idem.no_such_task", args=(1,))
    wait_for(lambda: result.state == "FAILURE", 30, message="the unknown task to fail")
    assert "tests.idem.no_such_task" in repr(result.result)
    wait_for(lambda: drained(app, r), 30, message="the worker to discard the message")


# -- execution-time guard -------------------------------------------------------------------

def test_the_same_message_published_twice_runs_once(app, r):
    job_id = str(uuid.uuid4())
    with configure(idempotency_busy_defer_sec=0.3):
        jobs.echo.plain_apply_async(("twice",), task_id=job_id)
        jobs.echo.plain_apply_async(("twice",), task_id=job_id)
        with in_process_worker(app):
            assert jobs.echo.AsyncResult(job_id).get(timeout=30) == "twice"
            wait_for(lambda: drained(app, r), 30, message="both deliveries to be handled")
    assert runs(job_id) == 1


def test_a_redelivery_after_completion_is_acked_and_the_result_stays(app, r, worker):
    first = jobs.echo.apply_async(({"v": 1},))
    assert first.get(timeout=30) == {"v": 1}
    jobs.echo.plain_apply_async(({"v": 1},), task_id=first.id)
    wait_for(lambda: idempotency.counters()["skipped_done"] == 1, 30, message="the redelivery to be skipped")
    wait_for(lambda: drained(app, r), 30, message="the redelivery to be acknowledged")
    assert runs(first.id) == 1
    assert jobs.echo.AsyncResult(first.id).get(timeout=10) == {"v": 1}
    assert jobs.echo.AsyncResult(first.id).state == "SUCCESS"


def test_a_redelivery_while_the_first_run_goes_on_does_not_run_concurrently(app, r, log_dir):
    # A subprocess worker: its pool processes know their node name, which the liveness check needs.
    with configure(idempotency_busy_defer_sec=0.2):
        with SubprocessWorker(log_dir, concurrency=2, include=["tests.jobs.idempotency"]) as w:
            first = jobs.gated.apply_async((60,))
            wait_for(lambda: runs(first.id) == 1, 60, message="the first run to start")
            jobs.gated.plain_apply_async((60,), task_id=first.id)
            wait_for(lambda: idempotency.counters()["deferred_busy"] >= 2, 60,
                     message=lambda: f"the duplicate to be deferred while the first run goes on:\n{w.log()[-2000:]}")
            assert runs(first.id) == 1
            r.set(keys().custom(jobs.GATE), 1)
            assert first.get(timeout=60) == "opened"
            wait_for(lambda: idempotency.counters()["skipped_done"] >= 1, 60,
                     message="the deferred duplicate to come back and be acknowledged")
            wait_for(lambda: drained(app, r), 60, message="the queue to drain")
    assert runs(first.id) == 1
    assert int(r.get(keys().custom(jobs.MAX_RUNNING))) == 1


@pytest.mark.slow
def test_a_deferred_duplicate_runs_once_the_first_runs_worker_has_died(app, r, log_dir):
    """The busy policy loses nothing: the deferred duplicate takes over from a dead worker."""
    settings = dict(idempotency_busy_defer_sec=0.5, worker_heartbeat_interval_sec=0.5,
                    worker_heartbeat_timeout_sec=3)
    with configure(**settings):
        doomed = SubprocessWorker(log_dir, name="doomed@test", include=["tests.jobs.idempotency"]).start()
        try:
            doomed.wait_ready()
            first = jobs.gated.apply_async((60,))
            wait_for(lambda: runs(first.id) == 1, 60, message="the first run to start on the doomed worker")
            with SubprocessWorker(log_dir, name="survivor@test", include=["tests.jobs.idempotency"]) as survivor:
                jobs.gated.plain_apply_async((60,), task_id=first.id)
                wait_for(lambda: idempotency.counters()["deferred_busy"] >= 1, 60,
                         message=lambda: f"the duplicate to be deferred:\n{survivor.log()[-2000:]}")
                assert runs(first.id) == 1, "no second run while the first one's worker lives"
                doomed.kill()
                r.set(keys().custom(jobs.GATE), 1)
                wait_for(lambda: runs(first.id) == 2, 60,
                         message=lambda: f"the deferred duplicate to run after the death:\n{survivor.log()[-2000:]}")
                assert first.get(timeout=60) == "opened"
        finally:
            doomed.stop()
    assert runs(first.id) == 2


def test_a_message_whose_key_another_job_owns_is_not_run(app, r, worker):
    first = jobs.echo.apply_async(("paid",), idempotency_key="order-7")
    assert first.get(timeout=30) == "paid"
    other_id = str(uuid.uuid4())
    jobs.echo.plain_apply_async(("paid",), task_id=other_id, headers={"idempotency_key": "order-7"})
    wait_for(lambda: idempotency.counters()["skipped_duplicate"] == 1, 30, message="the duplicate to be skipped")
    wait_for(lambda: drained(app, r), 30, message="the duplicate to be acknowledged")
    assert runs(first.id) == 1 and runs(other_id) == 0


# -- lifecycle -------------------------------------------------------------------------------

def dead_letters(r) -> list[dict]:
    return [json.loads(e) for e in r.lrange(keys().dead_letter, 0, -1)]


def test_a_dead_lettered_job_releases_its_key(app, r, worker):
    first = jobs.fail.apply_async(("o-dead",))
    wait_for(lambda: [e for e in dead_letters(r) if e["job_id"] == first.id], 30, message="the dead letter")
    key = idempotency.key_for(jobs.fail, ("o-dead",), {}, None)
    assert dead_letters(r)[0]["options"]["idempotency_key"] == key
    assert idempotency.owner(key) is None
    second = jobs.fail.apply_async(("o-dead",))
    assert second.id != first.id, "the same request can be submitted again"


def test_release_key_on_dead_letter_false_keeps_the_key(app, r, worker):
    first = jobs.fail_keep_key.apply_async(("o-keep",))
    wait_for(lambda: [e for e in dead_letters(r) if e["job_id"] == first.id], 30, message="the dead letter")
    key = idempotency.key_for(jobs.fail_keep_key, ("o-keep",), {}, None)
    assert idempotency.owner(key) == first.id
    assert jobs.fail_keep_key.apply_async(("o-keep",)).id == first.id


def test_retries_keep_the_key(app, r, worker):
    first = jobs.flaky.apply_async(("o-retry",))
    assert first.get(timeout=30) == "ok"
    key = idempotency.key_for(jobs.flaky, ("o-retry",), {}, None)
    assert r.lrange(keys().custom(jobs.SEEN_KEYS), 0, -1) == [key, key]
    assert runs(first.id) == 2
    assert idempotency.owner(key) == first.id
    assert jobs.flaky.apply_async(("o-retry",)).id == first.id


# -- the flag --------------------------------------------------------------------------------

def test_feature_idempotency_false_turns_both_guards_off(app, r):
    with configure(feature_idempotency=False):
        a = jobs.charge.apply_async(("o-off", 1))
        b = jobs.charge.apply_async(("o-off", 1))
        assert a.id != b.id
        assert idempotency_keys(r) == []
        job_id = str(uuid.uuid4())
        jobs.echo.plain_apply_async(("x",), task_id=job_id)
        with in_process_worker(app, concurrency=1):
            wait_for(lambda: runs(job_id) == 1, 30, message="the first run")
            jobs.echo.plain_apply_async(("x",), task_id=job_id)
            wait_for(lambda: runs(job_id) == 2, 30, message="the second run of the same message")
            wait_for(lambda: drained(app, r), 30, message="the queue to drain")
        assert runs(a.id) == 1 and runs(b.id) == 1
