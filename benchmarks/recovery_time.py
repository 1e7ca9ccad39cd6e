"""Recovery time of a job whose worker is killed, and the cost of one sweep.

Standalone: ``python benchmarks/recovery_time.py [--runs N] [--default] [--sweep-size N]``.

It starts a private redis-server and two real prefork workers, submits a
2-second job, SIGKILLs the worker running it and runs the sweep every
``STUCK_SWEEP_INTERVAL_SEC`` (as beat does) until the job completes on the
other worker. Recovery time = kill -> job completed elsewhere, minus the job's
own 2 s. The tight configuration (heartbeat timeout 3 s, heartbeat every
0.5 s, sweep every 1 s) is measured by default; ``--default`` measures the
shipped defaults (120 s / 5 s / 30 s: about two and a half minutes per run).
``--sweep-size N`` times one sweep over N ``jobs:active`` entries of live
workers (nothing to do: the cost every sweep pays).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TIGHT = {"WORKER_HEARTBEAT_TIMEOUT_SEC": "3", "WORKER_HEARTBEAT_INTERVAL_SEC": "0.5",
         "STUCK_SWEEP_INTERVAL_SEC": "1"}
DEFAULT = {"WORKER_HEARTBEAT_TIMEOUT_SEC": "120", "WORKER_HEARTBEAT_INTERVAL_SEC": "5",
           "STUCK_SWEEP_INTERVAL_SEC": "30"}
JOB_SEC = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--default", action="store_true", help="measure the shipped defaults (slow)")
    parser.add_argument("--sweep-size", type=int, default=10000)
    opts = parser.parse_args()

    from resilience.embedded import RedisServerProcess, find_redis_binary
    from resilience.settings import load_settings

    workdir = Path(tempfile.mkdtemp(prefix="recovery-bench-"))
    server = RedisServerProcess(binary=find_redis_binary(load_settings()), directory=workdir / "redis")
    server.start()
    os.environ.update({"REDIS_URL": server.url, "RESILIENCE_DATA_DIR": str(workdir / "data")})
    os.environ.update(DEFAULT if opts.default else TIGHT)
    try:
        name = "default (120 s timeout, 30 s sweep)" if opts.default else "tight (3 s timeout, 1 s sweep)"
        times = [measure_recovery(workdir) for _ in range(opts.runs)]
        print(f"recovery after SIGKILL, {name}: runs={opts.runs} "
              f"min={min(times):.1f}s median={statistics.median(times):.1f}s max={max(times):.1f}s")
        if opts.sweep_size:
            print(f"one sweep over {opts.sweep_size} active jobs: {measure_sweep(opts.sweep_size):.1f} ms")
    finally:
        server.stop()


def measure_recovery(workdir: Path) -> float:
    from resilience import sweeper
    from resilience.keys import keys
    from resilience.settings import reset_settings
    from resilience.store import get_redis, reset_redis
    from resilience.testing import SubprocessWorker, wait_for

    reset_settings()
    reset_redis()
    import tests.jobs  # noqa: F401 - the benchmark job
    from tasks.app import app

    r = get_redis()
    r.flushall()
    workers = {n: SubprocessWorker(workdir / "logs", name=n, include=["tests.jobs"]).start()
               for n in ("bench-a@bench", "bench-b@bench")}
    try:
        for w in workers.values():
            w.wait_ready(180)
        job = app.tasks["tests.sleep"].apply_async((JOB_SEC,))
        holder = wait_for(lambda: json.loads(r.hget(keys().active, job.id) or "{}").get("hostname"), 60)
        killed_at = time.monotonic()
        workers[holder].kill(signal.SIGKILL)
        interval = sweeper.get_settings().stuck_sweep_interval_sec
        next_sweep = time.monotonic()  # beat's phase is arbitrary: start a sweep now, then every interval
        while not r.hget(keys().custom("test:completed"), job.id):
            if time.monotonic() >= next_sweep:
                sweeper.sweep(app)
                next_sweep += interval
            time.sleep(0.05)
        return time.monotonic() - killed_at - JOB_SEC
    finally:
        for w in workers.values():
            w.stop()


def measure_sweep(size: int) -> float:
    from resilience import sweeper
    from resilience.keys import keys
    from resilience.store import get_redis
    from tasks.app import app

    r = get_redis()
    r.flushall()
    now = time.time()
    k = keys()
    pipe = r.pipeline(transaction=False)
    for i in range(size):
        entry = {"job_id": f"j{i}", "task": "tests.sleep", "worker": "live@bench|x", "started_at": now,
                 "last_progress_at": now, "timeout": 300, "attempt": 0, "queue": "celery",
                 "delivery_tag": f"t{i}", "args": [1], "kwargs": {}}
        pipe.hset(k.active, f"j{i}", json.dumps(entry))
        pipe.zadd(k.active_deadlines, {f"j{i}": now + 300})
    pipe.execute()
    r.zadd(k.worker_heartbeats, {"live@bench|x": time.time() + 3600})  # live throughout
    samples = []
    for _ in range(5):
        report = sweeper.sweep(app)
        assert report.ran and report.active_jobs == size and not report.acted
        samples.append(report.duration_ms)
    return statistics.median(samples)


if __name__ == "__main__":
    main()
