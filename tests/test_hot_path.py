"""The hot path (issue 14): a job's state writes ride on the execution guard's scripts,
and a submit subscribes to nothing until its caller waits.

Real redis-server, real workers (in-process, or a subprocess where one is killed).
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from resilience import sweeper
from resilience.keys import keys
from resilience.testing import SubprocessWorker, configure, wait_for
from tests.jobs import runs

TIGHT = dict(worker_heartbeat_timeout_sec=3, worker_heartbeat_interval_sec=0.5, stuck_sweep_interval_sec=1)


def calls(r, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def meta(r, job_id: str) -> dict:
    raw = r.get(f"celery-task-meta-{job_id}")
    return json.loads(raw) if raw else {}


def test_a_submit_does_not_subscribe_to_its_result(app, r):
    before = calls(r, "subscribe")
    for i in range(5):
        app.tasks["tests.add"].delay(i, 1)
    assert calls(r, "subscribe") == before


def test_a_result_stored_before_the_caller_waits_is_returned(app, r, worker):
    job = app.tasks["tests.add"].delay(2, 3)
    wait_for(lambda: meta(r, job.id).get("status") == "SUCCESS", 30, message="the result to be stored")
    assert job.get(timeout=30) == 5


def test_a_caller_waiting_before_the_job_ends_gets_its_result(app, r, worker):
    job = app.tasks["tests.sleep"].delay(0.5)
    assert job.get(timeout=30) == "slept"


def test_the_started_state_and_the_result_are_stored_by_the_guard_scripts(app, r, worker):
    setex = calls(r, "setex")
    job = app.tasks["tests.sleep"].delay(1.0)
    wait_for(lambda: job.state == "STARTED", 30, message="the job to show STARTED")
    assert meta(r, job.id)["result"]["hostname"]
    assert job.get(timeout=30) == "slept"
    stored = meta(r, job.id)
    assert stored["status"] == "SUCCESS" and stored["result"] == "slept" and stored["task_id"] == job.id
    assert 0 < r.ttl(f"celery-task-meta-{job.id}") <= app.backend.expires
    assert calls(r, "setex") == setex  # Celery's own writes (MULTI SETEX PUBLISH EXEC) never ran


def test_a_job_with_a_callback_stores_its_result_with_its_children(app, r, worker):
    job = app.tasks["tests.add"].apply_async((1, 2), link=app.tasks["tests.add"].s(10))
    assert job.get(timeout=30) == 3
    children = meta(r, job.id)["children"]
    assert len(children) == 1  # Celery stores the result after publishing the callback


def test_a_stored_success_is_never_overwritten_by_a_redelivery(app, r, worker):
    job_id = str(uuid.uuid4())
    r.set(f"celery-task-meta-{job_id}", json.dumps({"status": "SUCCESS", "result": 99, "task_id": job_id,
                                                   "traceback": None, "children": [], "date_done": None}))
    app.tasks["tests.add"].apply_async((1, 1), task_id=job_id)
    wait_for(lambda: (json.loads(r.get(keys().job_state(job_id)) or "{}")).get("s") == "done", 30,
             message="the job to run")
    assert meta(r, job_id)["result"] == 99


def _kill_at(app, r, log_dir, point: str, expected_status: str) -> tuple[str, object]:
    """Run tests.add(20, 22) on a worker killed at ``point``, then on a survivor; return its id and result."""
    job_id = str(uuid.uuid4())
    with configure(**TIGHT):
        doomed = SubprocessWorker(log_dir, name="doomed@test", include=["tests.jobs.crash_points"],
                                  env={point: job_id}).start().wait_ready(120)
        survivor = None
        try:
            job = app.tasks["tests.add"].apply_async((20, 22), task_id=job_id)
            wait_for(lambda: not doomed.alive(), 60, message="the worker to die at the crash point")
            assert r.hlen("unacked") == 1  # never acknowledged
            assert meta(r, job_id)["status"] == expected_status
            survivor = SubprocessWorker(log_dir, name="survivor@test", include=["tests.jobs"]).start()
            survivor.wait_ready(120)

            def recovered():
                sweeper.sweep(app)  # as beat would: requeues the dead worker's message
                return not r.hlen("unacked") and not r.llen("celery") and meta(r, job_id)["status"] == "SUCCESS"

            wait_for(recovered, 60, interval=0.5, message="the message to be redelivered and acknowledged")
            return job_id, job.get(timeout=30)
        finally:
            doomed.stop()
            if survivor is not None:
                survivor.stop()


@pytest.mark.slow
def test_a_worker_killed_right_after_recording_done_leaves_the_result_and_no_second_run(app, r, log_dir):
    """Killed between the finish script and the ack: the result is stored, the redelivery is absorbed.

    Before the result rode on the finish script, the record said done and the result was never
    stored: the redelivery was acknowledged unrun and a caller waiting on the result hung.
    """
    job_id, result = _kill_at(app, r, log_dir, "TEST_KILL_AFTER_FINISH_JOB", expected_status="SUCCESS")
    assert result == 42
    assert runs(job_id) == 1


@pytest.mark.slow
def test_a_worker_killed_right_after_claiming_the_run_shows_started_and_runs_the_job_once(app, r, log_dir):
    """Killed between the start script (claim + STARTED) and the body: the job runs once, on the survivor."""
    job_id, result = _kill_at(app, r, log_dir, "TEST_KILL_AFTER_START_JOB", expected_status="STARTED")
    assert result == 42
    assert runs(job_id) == 1
    record = json.loads(r.get(keys().job_state(job_id)))
    assert record["s"] == "done" and record["w"].startswith("survivor@test|")


def _events(message: dict) -> list[dict]:
    """The events in one fanout message of Celery's event exchange (kombu's envelope, base64 body)."""
    envelope = json.loads(message["data"])
    body = json.loads(base64.b64decode(envelope["body"]))
    return body if isinstance(body, list) else [body]


@pytest.mark.slow
def test_a_busy_workers_task_events_go_out_in_batches(app, r, log_dir):
    """Celery publishes its buffered task events on every event-loop tick (about 2.5 per job)."""
    listener = r.pubsub(ignore_subscribe_messages=True)
    listener.psubscribe("*celeryev*")
    publishes, succeeded = 0, set()
    with SubprocessWorker(log_dir, name="events@test", concurrency=2, include=["tests.jobs"], extra_args=["-E"]):
        jobs = [app.tasks["tests.add"].delay(i, 1) for i in range(30)]

        def all_succeeded():
            nonlocal publishes
            while (message := listener.get_message(timeout=0.1)) is not None:
                events = [e for e in _events(message) if e.get("type", "").startswith("task-")]
                publishes += bool(events)
                succeeded.update(e["uuid"] for e in events if e["type"] == "task-succeeded")
            return succeeded >= {job.id for job in jobs}

        wait_for(all_succeeded, 60, interval=0, message=lambda: f"every task-succeeded event ({len(succeeded)})")
    listener.close()
    assert publishes < len(jobs), f"{publishes} publishes of task events for {len(jobs)} jobs"


def test_the_demo_says_how_the_hot_path_is_taken(app):
    from resilience.demo import hot_path_line

    line = hot_path_line(app)
    assert "STARTED and results stored by the execution guard's steps" in line
    assert "result subscription when a caller waits" in line
    assert "task events for Flower batched every 0.5s" in line
    assert "task-sent events off" in line


def test_celery_stores_the_states_itself_when_the_result_backend_is_another_database(app, redis_server):
    from celery.app.task import Context

    from resilience.resultbackend import TrackedRedisBackend

    request = Context(id="job-1", resilience_worker="w@test|boot")
    here = TrackedRedisBackend(app=app, url=redis_server.url.rsplit("/", 1)[0] + "/0")
    elsewhere = TrackedRedisBackend(app=app, url=redis_server.url.rsplit("/", 1)[0] + "/1")
    assert here.folds(request)
    assert not elsewhere.folds(request)
    assert not here.folds(Context(id="job-2"))  # not a ResilientTask delivery
