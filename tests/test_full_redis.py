"""Issue 15: a full Redis (``maxmemory`` reached, ``noeviction``) is an outage, not a crash.

Workers stay up and resume when writes are accepted again, producers spool,
and a producer that exits with spooled jobs leaves them to the workers on the
same data dir. Job bodies record their runs in a local file, which a full
Redis cannot refuse.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from resilience.testing import SubprocessWorker, configure, hold_outage, settings_env, wait_for, worker_health_url
from tests.jobs.outage import mark, marks

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("outage-chaos")]

ROOT = Path(__file__).resolve().parent.parent


BALLAST_KEYS = 512  # 32 MiB: far more than the workers can free by taking the queued jobs


def fill_up(client: redis.Redis) -> int:
    """Make Redis full and keep it so: 32 MiB of ballast, then ``maxmemory`` 16 MiB below the
    ballast alone, under ``noeviction``. Neither draining the queues nor Redis releasing its own
    buffers frees that much, so every write is refused until the test frees memory. Returns the
    ballast keys written."""
    blob = "x" * 64 * 1024
    for n in range(BALLAST_KEYS):
        client.set(f"ballast:{n}", blob)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(16 * 1024 * 1024))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "refused")
    return BALLAST_KEYS


def free_up(client: redis.Redis, ballast: int) -> None:
    client.config_set("maxmemory", "0")
    for n in range(0, ballast, 500):
        client.delete(*[f"ballast:{i}" for i in range(n, min(n + 500, ballast))])


def short_lived_producer(marks_path: str, count: int, log_path: Path) -> subprocess.CompletedProcess:
    code = ("import sys\n"
            "from tests.jobs.outage import mark\n"
            "ids = [mark.delay(sys.argv[1], n).id for n in range(int(sys.argv[2]))]\n"
            "print('\\n'.join(ids))\n")
    with open(log_path, "wb") as log:
        return subprocess.run([sys.executable, "-c", code, marks_path, str(count)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=log,
                              timeout=120)


def _ready(url: str, state: str) -> dict | None:
    body = httpx.get(f"{url}/ready", timeout=5).json()
    return body if body["state"] == state else None


def test_a_full_redis_stops_no_worker_and_loses_or_doubles_no_job(redis_server, r, tmp_path, log_dir):
    marks_path = str(tmp_path / "marks")
    client = redis.Redis.from_url(redis_server.url)
    ballast = 0
    with configure(data_dir=str(tmp_path / "data"), publish_timeout_sec=1.0):
        env = settings_env(HEALTH_PORT=0, HEALTH_REFRESH_INTERVAL_SEC=0.2)
        workers = [SubprocessWorker(log_dir, concurrency=2, include=["tests.jobs.outage"], env=env).start()
                   for _ in range(2)]
        try:
            for worker in workers:
                worker.wait_ready(120)
            pids = [w.pid for w in workers]
            urls = [worker_health_url(r, w) for w in workers]
            ids = [mark.delay(marks_path, n).id for n in range(1000)]
            wait_for(lambda: len(marks(marks_path)) >= 100, 120, message="the workers to drain the first jobs")

            ballast = fill_up(client)
            spooled = short_lived_producer(marks_path, 200, tmp_path / "producer.log")
            assert spooled.returncode == 0, (tmp_path / "producer.log").read_text()[-3000:]
            late_ids = spooled.stdout.decode().split()
            assert len(late_ids) == 200
            assert "spooled" in (tmp_path / "producer.log").read_text()  # it said where its jobs wait
            for url in urls:  # each worker says so, and that a restart would not help
                ready = wait_for(lambda url=url: _ready(url, "redis_full"), 30,
                                 message=f"{url}/ready to say redis_full")
                assert ready["restart"] is False
                assert "redis_full" in httpx.get(f"{url}/health", timeout=5).json()["failed"]
            hold_outage(5)  # Redis stays full for a while: no worker may give up meanwhile
            assert all(w.alive() for w in workers), "a worker exited while Redis was full"

            free_up(client, ballast)
            ballast = 0
            everyone = ids + late_ids

            def all_ran():
                seen = marks(marks_path)
                return all(seen.get(job) for job in everyone)

            wait_for(all_ran, 180, message=lambda: f"all 1,200 jobs to run: {len(marks(marks_path))} ran")
            for url in urls:
                wait_for(lambda url=url: _ready(url, "serving"), 30, message=f"{url}/ready to serve again")
            seen = marks(marks_path)
            assert {job: n for job, n in seen.items() if n != 1} == {}, "a job ran twice"
            assert [w.pid for w in workers] == pids and all(w.alive() for w in workers)
        finally:
            if ballast:
                free_up(client, ballast)
            for worker in workers:
                worker.stop()
            client.close()


def test_the_spool_command_lists_and_flushes_what_a_producer_left(tmp_path, redis_server, r):
    """`resilience spool` shows spooled jobs and publishes them (here, after Redis filled up and was freed)."""
    import json

    from click.testing import CliRunner

    from resilience.cli import main

    client = redis.Redis.from_url(redis_server.url)
    marks_path = str(tmp_path / "marks")
    with configure(data_dir=str(tmp_path / "data"), publish_timeout_sec=0.5):
        ballast = fill_up(client)
        try:  # a short-lived producer: its job is refused by the full Redis, spooled, and left behind
            produced = short_lived_producer(marks_path, 1, tmp_path / "producer.log")
        finally:
            free_up(client, ballast)
        (job,) = produced.stdout.decode().split()
        runner = CliRunner()
        listed = runner.invoke(main, ["spool", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        assert [row["job_id"] for row in json.loads(listed.output)["jobs"]] == [job]
        flushed = runner.invoke(main, ["spool", "flush", "--json"])
        assert flushed.exit_code == 0, flushed.output
        assert json.loads(flushed.output) == {"published": 1, "left": 0, "busy": False}
        assert any(job in raw for raw in r.lrange("celery", 0, -1))  # on its queue
    client.close()
