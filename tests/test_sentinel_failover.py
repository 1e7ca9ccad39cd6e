"""Issue 16 acceptance: the Redis primary dies under load and Sentinel promotes a replica.

Real processes throughout: a primary, two replicas and three sentinels
(:class:`~resilience.testing.SentinelTopology`, ``down-after-milliseconds``
1000), two worker subprocesses and, where a test says so, a producer
subprocess. Job bodies record their runs in a local file, which the failover
cannot lose. Figures (promotion, resume time, lost and doubled jobs) are
printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from resilience.testing import SentinelTopology, SubprocessWorker, settings_env, wait_for
from tests.jobs.sentinel import runs, submitted

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sentinel-failover")]

CHECKOUT = Path(__file__).resolve().parents[1]
JOBS = 2000


@pytest.fixture
def ha(tmp_path):
    with SentinelTopology(tmp_path / "ha").start() as topology:
        yield topology


def _env(ha: SentinelTopology, tmp_path: Path, ack: int) -> dict[str, str]:
    return {**ha.env(), **settings_env(data_dir=str(tmp_path / "data"), redis_min_replicas_ack=ack,
                                       redis_replica_ack_timeout_ms=1000, health_port=0,
                                       redis_reconnect_max_sec=0.5, publish_timeout_sec=2.0)}


@pytest.fixture
def started():
    """The worker and producer subprocesses a test starts: each is stopped when the test ends,
    whatever happened."""
    processes: list[SubprocessWorker | subprocess.Popen] = []
    yield processes
    for process in processes:
        if isinstance(process, subprocess.Popen):
            if process.poll() is None:
                process.kill()
                process.wait(10)
        else:
            process.stop()


def _workers(started: list, tmp_path: Path, env: dict[str, str],
             n: int = 2) -> list[SubprocessWorker]:
    workers = []
    for _ in range(n):
        worker = SubprocessWorker(tmp_path / "logs", concurrency=2, include=["tests.jobs.sentinel"], env=env)
        started.append(worker)
        workers.append(worker.start())
    for w in workers:
        w.wait_ready(120)
    return workers


def _produce(started: list, tmp_path: Path, env: dict[str, str], count: int) -> subprocess.Popen:
    pythonpath = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    producer = subprocess.Popen([sys.executable, "-m", "tests.jobs.sentinel", str(tmp_path / "marks"),
                                 str(tmp_path / "ids"), str(count)],
                                env={**os.environ, **env, "PYTHONPATH": pythonpath}, cwd=CHECKOUT,
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "producer.log", "ab"))
    started.append(producer)
    return producer


def _drained(ha: SentinelTopology) -> bool:
    """Nothing waits or runs any more, as the current primary says."""
    client = ha.primary().client()
    try:
        return client.llen("celery") == 0 and client.hlen("jobs:active") == 0 and client.zcard("jobs:scheduled") == 0
    finally:
        client.close()


def _settled(ha: SentinelTopology, marks: Path, quiet_sec: float = 5.0) -> None:
    """Wait until the queue is empty and no job body ran for ``quiet_sec``.

    Without replica acknowledgement a failover may leave records the new
    primary cannot finish by itself (a "running" entry whose outcome was lost
    waits for the stuck-job sweep), so "drained" is: nothing queued, nothing
    running any more.
    """
    def quiet() -> bool:
        client = ha.primary().client()
        try:
            queued = client.llen("celery")
        finally:
            client.close()
        latest = max((t for times in runs(str(marks)).values() for t in times), default=0.0)
        return queued == 0 and time.time() - latest >= quiet_sec

    wait_for(quiet, 240, interval=0.5, message="the queue to drain and the workers to fall quiet")


def _fail_over(ha: SentinelTopology, marks: Path, after: int) -> tuple[float, float]:
    """Wait until ``after`` jobs ran, SIGKILL the primary, wait for the promotion.

    Returns (promotion time, seconds from the promotion to the first job that completed after it).
    """
    wait_for(lambda: len(runs(str(marks))) >= after, 120, message=f"{after} jobs to run before the failover")
    killed_at = time.time()
    old = ha.kill_primary()
    _, promoted_at = ha.wait_promoted(old)
    first = wait_for(lambda: min((t for times in runs(str(marks)).values() for t in times if t > promoted_at),
                                 default=None), 60, message="a job to complete after the promotion")
    print(f"\nprimary {old.address} killed; promoted after {promoted_at - killed_at:.2f}s; "
          f"processing resumed {first - promoted_at:.2f}s after the promotion")
    return promoted_at, first - promoted_at


def _report(ids: list[str], marks: Path, label: str) -> tuple[list[str], list[str]]:
    ran = runs(str(marks))
    lost = [i for i in ids if i not in ran]
    doubled = [i for i in ids if len(ran.get(i, ())) > 1]
    print(f"{label}: {len(ids)} jobs, {len(ids) - len(lost)} ran, {len(lost)} lost, {len(doubled)} doubled")
    return lost, doubled


def _submit_all(started: list, tmp_path: Path, env: dict[str, str], count: int) -> list[str]:
    producer = _produce(started, tmp_path, env, count)
    assert producer.wait(300) == 0, (tmp_path / "producer.log").read_text()[-2000:]
    return submitted(str(tmp_path / "ids"))


def test_with_replica_acknowledgement_every_job_runs_exactly_once_across_a_failover(ha, tmp_path, started):
    env = _env(ha, tmp_path, ack=1)
    marks = tmp_path / "marks"
    ids = _submit_all(started, tmp_path, env, JOBS)
    workers = _workers(started, tmp_path, env)
    _, resumed_after = _fail_over(ha, marks, after=JOBS // 4)
    wait_for(lambda: set(runs(str(marks))) >= set(ids), 240,
             message=lambda: f"every job to run ({len(runs(str(marks)))}/{len(ids)})")
    lost, doubled = _report(ids, marks, "replica acknowledgement on")
    assert not lost and not doubled
    assert all(w.alive() for w in workers), "a worker exited during the failover"
    assert resumed_after < 60  # the figure is printed; 5 s is the goal, measured, not asserted tightly


def test_without_replica_acknowledgement_the_test_reports_what_a_failover_loses(ha, tmp_path, started):
    env = _env(ha, tmp_path, ack=0)
    marks = tmp_path / "marks"
    ids = _submit_all(started, tmp_path, env, JOBS)
    workers = _workers(started, tmp_path, env)
    _fail_over(ha, marks, after=JOBS // 4)
    _settled(ha, marks)
    _report(ids, marks, "replica acknowledgement off")
    assert all(w.alive() for w in workers), "a worker exited during the failover"


def test_a_producer_submitting_across_a_failover_gets_every_job_run_once(ha, tmp_path, started):
    env = _env(ha, tmp_path, ack=1)
    marks = tmp_path / "marks"
    workers = _workers(started, tmp_path, env)
    producer = _produce(started, tmp_path, env, 1000)
    _fail_over(ha, marks, after=200)
    assert producer.wait(300) == 0, (tmp_path / "producer.log").read_text()[-2000:]
    ids = submitted(str(tmp_path / "ids"))
    assert len(ids) == 1000
    wait_for(lambda: set(runs(str(marks))) >= set(ids), 240,
             message=lambda: f"every submitted job to run ({len(runs(str(marks)))}/{len(ids)})")
    lost, doubled = _report(ids, marks, "producer across the failover")
    assert not lost and not doubled
    assert all(w.alive() for w in workers)


def test_the_demoted_primary_back_as_a_replica_runs_nothing_twice(ha, tmp_path, started):
    env = _env(ha, tmp_path, ack=1)
    marks = tmp_path / "marks"
    ids = _submit_all(started, tmp_path, env, 600)
    workers = _workers(started, tmp_path, env)
    old = ha.primary()
    wait_for(lambda: len(runs(str(marks))) >= 150, 120, message="150 jobs to run")
    old.kill()
    ha.wait_promoted(old)
    # Back with its AOF, believing it is the primary, until the sentinels demote it to a replica.
    ha.restart(old, as_replica=False)
    assert old.role() == "slave"
    wait_for(lambda: set(runs(str(marks))) >= set(ids), 240,
             message=lambda: f"every job to run ({len(runs(str(marks)))}/{len(ids)})")
    wait_for(lambda: _drained(ha), 60, message="the queues to drain")
    lost, doubled = _report(ids, marks, "demoted primary restarted as a replica")
    assert not lost and not doubled
    assert all(w.alive() for w in workers)
    client = old.client()
    try:
        with pytest.raises(redis.ReadOnlyError):
            client.set("probe", "1")
    finally:
        client.close()


@pytest.mark.parametrize("ack", [1, 0], ids=["acknowledged", "unacknowledged"])
def test_a_primary_that_dies_with_its_replicas_behind(ha, tmp_path, started, ack):
    """The loss window made visible: a producer and two workers busy, the replicas 0.5 s
    behind when the primary dies (they receive nothing in that time)."""
    env = _env(ha, tmp_path, ack=ack)
    marks = tmp_path / "marks"
    workers = _workers(started, tmp_path, env)
    producer = _produce(started, tmp_path, env, 1000)
    wait_for(lambda: len(runs(str(marks))) >= 200, 120, message="200 jobs to run before the failover")
    lag_from = time.time()
    old = ha.kill_primary_with_replicas_behind(0.5)
    lag_to = time.time()
    ha.wait_promoted(old)
    assert producer.wait(300) == 0, (tmp_path / "producer.log").read_text()[-2000:]
    ids = submitted(str(tmp_path / "ids"))
    ran_in_lag = sum(1 for times in runs(str(marks)).values() for t in times if lag_from <= t <= lag_to)
    if ack:
        wait_for(lambda: set(runs(str(marks))) >= set(ids), 240,
                 message=lambda: f"every job to run ({len(runs(str(marks)))}/{len(ids)})")
    _settled(ha, marks)
    lost, doubled = _report(ids, marks, f"replicas 0.5 s behind ({ran_in_lag} bodies ran in that time), "
                                        f"acknowledgement {'on' if ack else 'off'}")
    assert all(w.alive() for w in workers), "a worker exited during the failover"
    if ack:
        assert not lost and not doubled
