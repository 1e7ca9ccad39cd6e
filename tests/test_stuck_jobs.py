"""Stuck jobs (issue 5): heartbeats, the sweep, progress timeouts.

Real prefork workers in subprocesses, a real redis-server, small timeouts:
heartbeat timeout 3 s, heartbeat every 0.5 s, sweep interval 1 s. The test
runs the sweep itself (as beat would) while it waits.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from resilience import sweeper
from resilience.keys import keys
from resilience.locks import Lock
from resilience.testing import SubprocessWorker, configure, in_process_worker, wait_for
from tests.jobs import runs

TIGHT = dict(worker_heartbeat_timeout_sec=3, worker_heartbeat_interval_sec=0.5, stuck_sweep_interval_sec=1,
             job_progress_timeout_sec=60)
READY_SEC = 120  # generous: the machine may be loaded


def completed(r, job_id: str) -> int:
    return int(r.hget(keys().custom("test:completed"), job_id) or 0)


def state(r, job_id: str) -> dict:
    raw = r.get(keys().job_state(job_id))
    return json.loads(raw) if raw else {}


def sweep_until(app, predicate, timeout: float, message: str):
    """Run the sweep (as beat would, about every half second) until ``predicate`` holds."""
    reports = []

    def check():
        reports.append(sweeper.sweep(app))
        return predicate()

    wait_for(check, timeout, interval=0.5, message=message)
    return reports


def worker(log_dir, name: str, **kwargs) -> SubprocessWorker:
    return SubprocessWorker(log_dir, name=name, include=["tests.jobs"], **kwargs).start()


def is_dead(r, w: SubprocessWorker, timeout: float) -> bool:
    beats = dict(r.zrange(keys().worker_heartbeats, 0, -1, withscores=True))
    return all(time.time() - t > timeout for wid, t in beats.items() if wid.startswith(w.name + "|"))


# -- crash recovery -----------------------------------------------------------------------
@pytest.mark.slow
def test_a_job_of_a_killed_worker_completes_once_on_a_live_worker(app, r, log_dir):
    with configure(**TIGHT):
        workers = {name: worker(log_dir, name) for name in ("left@test", "right@test")}
        try:
            for w in workers.values():
                w.wait_ready(READY_SEC)
            job = app.tasks["tests.sleep"].apply_async((2.0,))
            holder = wait_for(lambda: json.loads(r.hget(keys().active, job.id) or "{}").get("hostname"), 60,
                              message="the job to start")
            workers[holder].kill(signal.SIGKILL)
            (survivor,) = set(workers) - {holder}

            reports = sweep_until(app, lambda: completed(r, job.id) == 1, 60,
                                  "the job to complete on the live worker")
            assert any(a["job_id"] == job.id for rep in reports for a in rep.restored + rep.requeued)
            wait_for(lambda: state(r, job.id).get("s") == "done", 30, message="the job's record to say done")
            assert completed(r, job.id) == 1
            assert state(r, job.id)["w"].startswith(survivor + "|")
            # no stale bookkeeping left for kombu to restore by age (the survivor acks just after "done")
            wait_for(lambda: not r.hlen("unacked"), 30, message="kombu's unacked hash to empty")
        finally:
            for w in workers.values():
                w.stop()


@pytest.mark.slow
def test_a_job_whose_pool_process_is_killed_completes_once(app, r, log_dir):
    with configure(**TIGHT):
        w = worker(log_dir, "pool@test").wait_ready(READY_SEC)
        try:
            job = app.tasks["tests.sleep"].apply_async((1.0,))
            wait_for(lambda: runs(job.id) == 1, 60, message="the job to start")
            children = w.pool_pids()
            assert children
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            sweep_until(app, lambda: completed(r, job.id) == 1, 60, "the job to complete after the crash")
            wait_for(lambda: state(r, job.id).get("s") == "done", 30, message="the job's record to say done")
            assert completed(r, job.id) == 1
        finally:
            w.stop()


@pytest.mark.slow
def test_a_healthy_long_job_runs_once_with_an_idle_worker_up(app, r, log_dir):
    # Longer than the heartbeat timeout (3 s), the progress timeout (2 s, while
    # reporting progress) and a 2 s broker visibility timeout.
    settings = dict(TIGHT, job_progress_timeout_sec=2, broker_visibility_timeout_sec=2)
    with configure(**settings):
        busy = worker(log_dir, "busy@test").wait_ready(READY_SEC)
        idle = None
        try:
            job = app.tasks["tests.sleep"].apply_async((7.0,), {"progress_every": 0.3})
            wait_for(lambda: runs(job.id) == 1, 60, message="the job to start")
            idle = worker(log_dir, "idle@test").wait_ready(READY_SEC)
            reports = sweep_until(app, lambda: completed(r, job.id) == 1, 90, "the long job to complete")
            assert runs(job.id) == 1
            assert completed(r, job.id) == 1
            assert not any(rep.stopped or rep.requeued for rep in reports)
        finally:
            for w in (busy, idle):
                if w:
                    w.stop()


# -- progress timeouts ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_job_without_progress_is_stopped_retried_then_dead_lettered(app, r, log_dir):
    settings = dict(TIGHT, job_progress_timeout_sec=2, retry_max=1, retry_backoff_base_sec=0.2,
                    retry_backoff_max_sec=0.5)
    with configure(**settings):
        w = worker(log_dir, "stuck@test").wait_ready(READY_SEC)
        try:
            job = app.tasks["tests.sleep"].apply_async((600.0,))
            reports = sweep_until(app, lambda: r.llen(keys().dead_letter) == 1, 90,
                                  "the stuck job to be dead-lettered")
            stopped = [a for rep in reports for a in rep.stopped]
            assert [a["outcome"] for a in stopped] == ["retried", "dead_lettered"]
            assert runs(job.id) == 2
            assert completed(r, job.id) == 0
            entry = json.loads(r.lindex(keys().dead_letter, 0))
            assert entry["job_id"] == job.id
            assert entry["failure_reason"].startswith("no progress for ")
            assert entry["retry_count"] == 1
            assert state(r, job.id)["s"] == "dead"
            # the worker survives: its next job runs
            nxt = app.tasks["tests.add"].apply_async((1, 2))
            assert nxt.get(timeout=60) == 3
        finally:
            w.stop()


# -- two sweeps at once ------------------------------------------------------------------------
@pytest.mark.slow
def test_two_sweeps_at_once_requeue_a_dead_workers_job_once(app, r, log_dir):
    with configure(**TIGHT):
        w = worker(log_dir, "doomed@test").wait_ready(READY_SEC)
        job = app.tasks["tests.sleep"].apply_async((30.0,))
        wait_for(lambda: runs(job.id) == 1, 60, message="the job to start")
        w.kill(signal.SIGKILL)
        wait_for(lambda: is_dead(r, w, 3), 30, message="the worker's heartbeat to age out")

        barrier = threading.Barrier(2)
        reports = []

        def run():
            barrier.wait()
            reports.append(sweeper.sweep(app))

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        acted = [a for rep in reports for a in rep.restored + rep.requeued if a["job_id"] == job.id]
        assert len(acted) == 1
        assert r.llen("celery") == 1
        # later sweeps find nothing left to do
        later = sweeper.sweep(app)
        assert later.acted == 0
        assert r.llen("celery") == 1


def test_without_the_lock_the_restore_still_pushes_once(app, r):
    """The compare-and-swap in sweep_restore.lua: a second unlocked sweep finds the entry gone."""
    with configure(**TIGHT):
        payload = {"body": "", "headers": {"id": "j1", "task": "tests.add"},
                   "properties": {"delivery_tag": "tag-1", "delivery_info": {}}}
        r.hset("unacked", "tag-1", json.dumps([payload, "celery", "celery"]))
        r.zadd("unacked_index", {"tag-1": time.time() - 60})
        settings = sweeper.get_settings()
        first = sweeper._sweep(app, settings, time.time())
        second = sweeper._sweep(app, settings, time.time())
        assert len(first.restored) == 1 and not second.restored
        assert r.llen("celery") == 1
        pushed = json.loads(r.lindex("celery", 0))
        assert pushed["headers"]["redelivered"] is True
        assert not r.hexists("unacked", "tag-1") and not r.zscore("unacked_index", "tag-1")


def test_a_message_a_live_worker_just_received_is_left_alone(app, r):
    with configure(**TIGHT):
        now = time.time()
        r.zadd(keys().worker_heartbeats, {"live@test|b": now})
        r.hset(keys().worker_info, "live@test|b", json.dumps({"at": now, "tags": ["held"]}))
        for tag, delivered in (("held", now - 60), ("fresh", now + 0.1), ("orphan", now - 60)):
            payload = {"body": "", "headers": {"id": tag, "task": "tests.add"}, "properties": {"delivery_tag": tag}}
            r.hset("unacked", tag, json.dumps([payload, "celery", "celery"]))
            r.zadd("unacked_index", {tag: delivered})
        report = sweeper.sweep(app, now=now)
        assert [a["delivery_tag"] for a in report.restored] == ["orphan"]
        assert r.hexists("unacked", "held") and r.hexists("unacked", "fresh")


def test_a_job_waiting_for_its_countdown_on_a_live_worker_is_left_alone(app, r):
    # With smart retries off, a countdown is Celery's ETA message held in the worker's memory.
    with configure(**TIGHT, feature_smart_retry=False), in_process_worker(app):
        job = app.tasks["tests.add"].apply_async((1, 2), countdown=30)
        tag = wait_for(lambda: (r.hkeys("unacked") or [None])[0], 30, message="the worker to take the message")
        delivered = r.zscore("unacked_index", tag)

        def listed_after_delivery():
            info = json.loads(r.hget(keys().worker_info, next(iter(r.hkeys(keys().worker_info)))))
            return tag in info["tags"] and info["at"] > delivered + 1

        wait_for(listed_after_delivery, 30, message="a heartbeat to list the scheduled job's delivery tag")
        report = sweeper.sweep(app)
        assert report.restored == [] and report.requeued == []
        assert r.hexists("unacked", tag) and runs(job.id) == 0


# -- the lock, the flag, heartbeats -------------------------------------------------------------
def test_a_lock_is_released_only_by_its_holder(r):
    holder = Lock("t", ttl_ms=5000)
    other = Lock("t", ttl_ms=5000)
    assert holder.acquire()
    assert not other.acquire()
    assert not other.release()
    assert r.get(keys().lock("t")) == holder.token
    assert holder.extend(10000)
    assert holder.release()
    assert other.acquire()


def test_a_held_sweep_lock_makes_a_second_sweep_skip(app):
    with configure(**TIGHT):
        lock = Lock(sweeper.LOCK_NAME, ttl_ms=5000)
        assert lock.acquire()
        report = sweeper.sweep(app)
        assert not report.ran and "lock" in report.skipped
        lock.release()


def test_the_sweep_lock_expires_before_the_next_run():
    with configure(stuck_sweep_interval_sec=30):
        assert sweeper._lock_ttl_ms(sweeper.get_settings()) < 30_000


def test_feature_flag_off_turns_the_sweep_off(app):
    with configure(feature_stuck_jobs=False):
        report = sweeper.sweep(app)
        assert not report.ran and "FEATURE_STUCK_JOBS" in report.skipped


@pytest.mark.slow
def test_a_worker_records_held_delivery_tags_and_removes_its_heartbeat_on_clean_shutdown(app, r, log_dir):
    with configure(**TIGHT):
        w = worker(log_dir, "beater@test").wait_ready(READY_SEC)
        try:
            job = app.tasks["tests.sleep"].apply_async((3.0,))
            wait_for(lambda: runs(job.id) == 1, 60, message="the job to start")

            def held():
                infos = [json.loads(v) for k, v in r.hgetall(keys().worker_info).items()
                         if k.startswith("beater@test|")]
                return infos and infos[0].get("tags") and set(infos[0]["tags"]) <= set(r.hkeys("unacked"))

            wait_for(held, 30, message="the heartbeat to list the running job's delivery tag")
        finally:
            w.stop()
        assert not [m for m in r.zrange(keys().worker_heartbeats, 0, -1) if m.startswith("beater@test|")]
        assert completed(r, job.id) == 1  # the warm shutdown let the job finish


def test_the_sweep_cli_reports_json(app):
    from click.testing import CliRunner

    from resilience.cli import main

    result = CliRunner().invoke(main, ["sweep", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ran"] is True and report["restored"] == []


def test_the_beat_task_runs_the_sweep_on_a_worker(app, r, worker):
    assert app.conf.beat_schedule["resilience.sweep_stuck_jobs"]["task"] == "resilience.sweep_stuck_jobs"
    app.tasks["resilience.sweep_stuck_jobs"].apply_async()
    wait_for(lambda: int(r.hget(keys().stats("sweeper"), "runs") or 0) >= 1, 30,
             message="the sweep task to run on the worker")


def test_workers_dead_for_a_day_are_forgotten_and_recent_ones_kept(app, r):
    now = time.time()
    r.zadd(keys().worker_heartbeats, {"old@test|a": now - 2 * 86400, "recent@test|b": now - 600})
    r.hset(keys().worker_info, mapping={"old@test|a": "{}", "recent@test|b": "{}"})
    report = sweeper.sweep(app, now=now)
    assert report.forgotten_workers == ["old@test|a"]
    assert r.zrange(keys().worker_heartbeats, 0, -1) == ["recent@test|b"]
    assert r.hkeys(keys().worker_info) == ["recent@test|b"]
