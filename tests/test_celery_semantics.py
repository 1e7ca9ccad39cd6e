"""Issue 18: Celery's semantics kept. Canvas, arguments and results behave as in plain Celery.

Every test runs real workers with the platform installed. Celery's own
integration tests run against the platform with ``make celery-compat``.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import time
import uuid
from decimal import Decimal

import pytest
from celery import Celery, chain, chord, group
from celery.result import ResultSet

from resilience import ResilientTask, idempotency, install, runtime, scheduler
from resilience.errors import UnserializableArgument
from resilience.keys import keys
from resilience.testing import SubprocessWorker, in_process_worker, wait_for
from tests.jobs import runs
from tests.jobs import semantics as jobs

pytestmark = pytest.mark.usefixtures("app")


def dead_lettered(r, job_id: str) -> bool:
    return any(json.loads(e)["job_id"] == job_id for e in r.lrange(keys().dead_letter, 0, -1))


# -- results and the task tree --------------------------------------------------------------

def test_a_result_set_of_submitted_jobs_returns(worker):
    results = ResultSet([jobs.add.delay(i, i) for i in range(4)])
    assert results.get(timeout=30) == [0, 2, 4, 6]


def test_a_job_sent_from_a_job_is_its_child(worker):
    parent = jobs.spawn.delay(2)
    ids = parent.get(timeout=30)
    child = jobs.add.AsyncResult(ids["child"])
    assert child.get(timeout=30) == 3
    for job_id in [ids["child"], *ids["group"]]:
        wait_for(lambda job_id=job_id: jobs.seen_request(job_id), 30, message=f"job {job_id} to run")
        seen = jobs.seen_request(job_id)
        assert seen["parent_id"] == parent.id
        assert seen["root_id"] == parent.id
    parent = jobs.spawn.AsyncResult(parent.id)
    assert ids["child"] in [c.id for c in parent.children]


# -- arguments -------------------------------------------------------------------------------

def test_arguments_kombus_json_carries_arrive_as_celery_delivers_them(worker):
    when = dt.datetime(2026, 5, 1, 12, 30, tzinfo=dt.UTC)
    values = (b"raw", b"\xff\x00", when, dt.date(2026, 5, 1), dt.time(8, 15), Decimal("12.50"),
              uuid.UUID("12345678-1234-5678-1234-567812345678"))
    received = jobs.typed.delay(*values, key=b"kw").get(timeout=30)
    assert received == [[type(v).__name__, repr(v)] for v in (*values, b"kw")]


def test_a_pydantic_task_takes_a_model(worker):
    moved = jobs.move.delay(jobs.Point(x=1, y=2), 3).get(timeout=30)
    assert moved == {"x": 4, "y": 5}


def test_what_the_serializer_cannot_encode_still_fails_in_the_caller(app, r, tmp_path):
    with pytest.raises(UnserializableArgument, match=r"args\[1\]"):
        jobs.typed.delay(1, {1, 2})
    with open(tmp_path / "f", "w") as handle, pytest.raises(UnserializableArgument, match=r"kwargs\['f'\]"):
        jobs.typed.delay(f=handle)
    assert r.llen(app.conf.task_default_queue) == 0


def test_a_link_callback_with_bytes_does_not_fail_its_parent(worker):
    parent = jobs.add.apply_async((1, 1), link=jobs.typed.si(b"payload"))
    assert parent.get(timeout=30) == 2
    wait_for(lambda: parent.children, 30, message="the callback to be sent")
    assert parent.children[0].get(timeout=30) == [["bytes", "b'payload'"]]
    assert jobs.add.AsyncResult(parent.id).state == "SUCCESS"


# -- the execution guard and Celery's own re-publishes ---------------------------------------------

def test_applying_a_frozen_signature_again_runs_it_again(worker):
    signature = jobs.add.s(2, 2)
    signature.freeze()
    first = signature.apply_async()
    assert first.get(timeout=30) == 4
    again = signature.apply_async()
    assert again.id == first.id
    wait_for(lambda: runs(first.id) == 2, 30, message="the second publish to run")


def test_the_same_publish_delivered_twice_runs_once(app, r):
    result = jobs.add.delay(5, 5)
    [message] = r.lrange(app.conf.task_default_queue, 0, -1)
    r.lpush(app.conf.task_default_queue, message)  # a redelivery: the same message, its token included
    with in_process_worker(app):
        assert result.get(timeout=30) == 10
        wait_for(lambda: r.llen(app.conf.task_default_queue) + r.hlen("unacked") == 0, 30,
                 message="both deliveries to be handled")
    assert runs(result.id) == 1


def test_an_earlier_publish_delivered_after_a_newer_one_ran_is_stale(app, r):
    signature = jobs.add.s(3, 3)
    signature.freeze()
    first = signature.apply_async()
    [first_message] = r.lrange(app.conf.task_default_queue, 0, -1)
    with in_process_worker(app):
        assert first.get(timeout=30) == 6
        signature.apply_async()
        wait_for(lambda: runs(first.id) == 2, 30, message="the newer publish to run")
        r.lpush(app.conf.task_default_queue, first_message)  # a late redelivery of the first publish
        wait_for(lambda: idempotency.counters()["skipped_stale"] == 1, 30, message="the late delivery to be skipped")
    assert runs(first.id) == 2


def test_a_chord_runs_its_body_and_stores_its_result(worker):
    result = chord(jobs.add.s(i, i) for i in range(4))(jobs.tsum.s())
    assert result.get(timeout=30) == 12


def test_reapplying_a_frozen_chord_runs_its_body_again(worker):
    canvas = chord([jobs.add.s(1, 1), jobs.add.s(2, 2)], jobs.tsum.s())
    frozen = canvas.freeze()
    assert canvas.apply_async().get(timeout=30) == 6
    assert canvas.apply_async().get(timeout=30) == 6
    wait_for(lambda: runs(frozen.id) == 2, 30, message="the body to run again")


# -- error paths -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["job", "chain", "group", "chord"])
def test_link_error_is_called_when_a_member_is_dead_lettered(r, worker, shape):
    failing = jobs.fail.s()
    failing_id = failing.freeze().id
    errback = jobs.on_error.s()
    if shape == "job":
        result = failing.apply_async(link_error=errback)
    elif shape == "chain":
        result = chain(jobs.add.s(1, 1), failing).on_error(errback).apply_async()
    elif shape == "group":
        result = group(jobs.add.s(1, 1), failing).on_error(errback).apply_async()
    else:
        result = chord([jobs.add.s(1, 1), failing], jobs.tsum.s()).on_error(errback).apply_async()
    wait_for(lambda: jobs.errbacks(), 30, message="the errback to be called")
    wait_for(lambda: dead_lettered(r, failing_id), 30, message="the failing member's dead letter")
    # Celery calls the errback with the failed job's id; a chord's errback hangs on its body.
    assert jobs.errbacks() == [result.id if shape == "chord" else failing_id]
    with pytest.raises(Exception, match="refused"):
        result.get(timeout=30, propagate=True)


def test_a_waiting_retry_shows_retry_state(worker, r):
    result = jobs.retry_later.delay(60)
    wait_for(lambda: result.state == "RETRY", 30, message=lambda: f"RETRY state (now {result.state})")
    assert scheduler.waiting() == 1
    scheduler.promote_due(now=time.time() + 120)
    assert result.get(timeout=30) == "second attempt"


# -- delays ----------------------------------------------------------------------------------------

def test_a_durable_delayed_run_sees_its_eta(worker):
    due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    eta = jobs.when.apply_async(eta=due).get(timeout=30)
    assert dt.datetime.fromisoformat(eta) == due
    countdown = jobs.when.apply_async(countdown=0.5).get(timeout=30)
    assert countdown is not None


def test_a_countdown_on_a_canvas_member_is_honoured(worker):
    started = time.monotonic()
    last = jobs.add.s(10).set(countdown=1.5)
    result = chain(jobs.add.s(1, 1), last).apply_async()
    assert result.get(timeout=30) == 12
    assert time.monotonic() - started >= 1.5
    assert jobs.seen_request(result.id)["eta"] is not None


# -- apps --------------------------------------------------------------------------------------------

def test_install_recognises_a_new_app_that_reuses_a_dead_apps_id():
    """Issue 18: install() remembered apps by id(), and a new app at a dead one's address was skipped."""
    served = runtime.bound_app()
    seen_ids = set()
    try:
        for _ in range(50):
            app = Celery("fresh", task_cls=ResilientTask, set_as_current=False)
            install(app)
            assert "resilience.sweep_stuck_jobs" in app.tasks
            reused = id(app) in seen_ids
            seen_ids.add(id(app))
            del app
            gc.collect()
            if reused:
                return
        pytest.skip("no app address was reused in 50 tries")
    finally:
        runtime.bind(served)  # this process goes on serving the bundled app


def test_a_dead_letter_leaves_the_worker_on_its_own_app(r, log_dir):
    """Issue 18: dead-lettering imported the bundled app in the worker, which made itself current_app."""
    url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/1"  # tests.semantics_app's (not imported here)
    client = Celery("client", broker=url, backend=url, set_as_current=False)
    with SubprocessWorker(log_dir, app="tests.semantics_app"):
        failed = client.send_task("semantics.fail")
        wait_for(lambda: dead_lettered(r, failed.id), 60, message="the dead letter")
        seen = client.send_task("semantics.probe").get(timeout=60)
        assert seen["current_app"] == "semantics"
        assert not seen["bundled_imported"]
        assert [client.AsyncResult(child).get(timeout=60) for child in seen["children"]] == [5, 9]
