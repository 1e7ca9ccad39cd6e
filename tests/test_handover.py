"""A worker keeps the messages it received across a broker connection loss (issue 6).

Redis is cut off at exact instants by a proxy (:class:`resilience.testing.cutproxy.CutProxy`)
in front of the real redis-server; the worker connects through it, the test
talks to Redis directly. No beat runs and the visibility timeout is the
default 12 h: the worker itself must put the messages back.
"""

from __future__ import annotations

import uuid

import pytest

from resilience import executions
from resilience.store import load_script
from resilience.testing import SubprocessWorker, hold_outage, wait_for
from resilience.testing.cutproxy import CutProxy
from tests.jobs.outage import gated_mark, mark, marks

pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(redis_server):
    with CutProxy("127.0.0.1", redis_server.port) as p:
        yield p


def _worker(log_dir, proxy: CutProxy, *extra: str) -> SubprocessWorker:
    worker = SubprocessWorker(log_dir, concurrency=1, include=["tests.jobs.outage"],
                              env={"REDIS_URL": proxy.url}, extra_args=list(extra)).start()
    return worker.wait_ready(120)


#: An outage that outlasts the clients' own retries (Celery's result backend gives up
#: after PUBLISH_TIMEOUT_SEC, 2 s by default; redis-py after 3 quick attempts).
OUTAGE_PAST_RETRIES_SEC = 6.0


def _noticed_the_loss(worker: SubprocessWorker) -> bool:
    return "cannot reach the broker" in worker.log()


def test_a_message_popped_as_redis_goes_away_runs_once_when_it_returns(proxy, r, tmp_path, log_dir):
    marks_path = str(tmp_path / "marks.txt")
    worker = _worker(log_dir, proxy)
    try:
        proxy.cut_after_next_pop()
        job = mark.delay(marks_path, 1)
        assert proxy.cut_done.wait(30), "the worker never popped the message"
        # The window: Redis no longer has the message in its queue and kombu never recorded it.
        assert r.llen("celery") == 0 and not r.hexists("unacked", job.id)
        assert all(job.id not in raw for raw in r.hvals("unacked"))
        wait_for(lambda: _noticed_the_loss(worker), timeout=30, message="the worker to notice the loss")
        proxy.restore()
        wait_for(lambda: marks(marks_path).get(job.id) == 1, timeout=60, message="the job to run")
        wait_for(lambda: r.hlen("unacked") == 0, timeout=30, message="its ack")
        assert worker.alive()
    finally:
        worker.stop()
    assert marks(marks_path) == {job.id: 1}


def test_prefetched_messages_come_back_after_a_connection_loss_without_a_sweep(proxy, r, tmp_path, log_dir):
    marks_path, started, gate = (str(tmp_path / name) for name in ("marks.txt", "started.txt", "gate"))
    worker = _worker(log_dir, proxy, "--prefetch-multiplier", "3")
    try:
        running = gated_mark.delay(marks_path, started, gate)
        wait_for(lambda: running.id in marks(started), timeout=30, message="the gated job to start")
        waiting = [mark.delay(marks_path, i).id for i in range(2)]
        # Prefetched: off the queue, in kombu's unacked, held by the busy worker.
        wait_for(lambda: r.llen("celery") == 0 and r.hlen("unacked") == 3, timeout=30,
                 message="the worker to prefetch both jobs")
        proxy.cut()
        wait_for(lambda: _noticed_the_loss(worker), timeout=30, message="the worker to notice the loss")
        proxy.restore()
        open(gate, "w").close()
        ids = [running.id, *waiting]
        wait_for(lambda: all(marks(marks_path).get(i) == 1 for i in ids), timeout=60,
                 message=lambda: f"every job to run ({marks(marks_path)})")
        wait_for(lambda: r.hlen("unacked") == 0, timeout=30, message="every ack")
        assert worker.alive()
    finally:
        open(gate, "w").close()
        worker.stop()
    assert marks(marks_path) == {i: 1 for i in ids}


@pytest.mark.parametrize("moment", ["storing STARTED", "recording its start", "recording its start, reply lost",
                                    "recording its outcome"])
def test_a_job_caught_by_the_outage_around_its_body_runs_exactly_once(moment, proxy, r, tmp_path, log_dir):
    marks_path = str(tmp_path / "marks.txt")
    job_id = str(uuid.uuid4())
    markers = {
        "storing STARTED": (f"celery-task-meta-{job_id}".encode(), b"STARTED"),
        "recording its start": (job_id.encode(), load_script("job_start").sha.encode()),
        "recording its start, reply lost": (job_id.encode(), load_script("job_start").sha.encode()),
        "recording its outcome": (job_id.encode(), load_script("job_finish").sha.encode()),
    }[moment]
    for script in ("job_start", "job_finish"):  # loaded: the worker's EVALSHA runs at once
        r.script_load(load_script(script).script)
    worker = _worker(log_dir, proxy)
    try:
        proxy.cut_on_request(*markers, reply_lost=moment.endswith("reply lost"))
        mark.apply_async((marks_path, 1), task_id=job_id)
        assert proxy.cut_done.wait(30), f"the worker never got to {moment}"
        # Longer than every client's retries (redis-py's, Celery's result backend's): they give up.
        hold_outage(OUTAGE_PAST_RETRIES_SEC)
        proxy.restore()
        wait_for(lambda: marks(marks_path).get(job_id) == 1, timeout=60, message="the job's body to run")
        wait_for(lambda: r.hlen("unacked") == 0 and r.llen("celery") == 0, timeout=60,
                 message="its message to be acknowledged")
        # Its execution record says done (an outcome written late lands once Redis is back).
        wait_for(lambda: (executions.job_state(job_id) or {}).get("s") == "done", timeout=60,
                 message=lambda: f"the record to say done ({executions.job_state(job_id)})")
        assert not executions.active_jobs()
        assert worker.alive()
    finally:
        worker.stop()
    assert marks(marks_path) == {job_id: 1}
