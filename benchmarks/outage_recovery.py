"""Recovery times across a Redis outage, measured with real processes.

1. Redis back -> first job completes: a subprocess worker drains trivial jobs;
   Redis is killed (SIGKILL) and restarted after OUTAGE_SEC; the time from
   Redis accepting connections to the first job completing after it.
2. Outage -> spool flushed: jobs submitted while Redis is down are spooled; the
   time from Redis accepting connections to the spool being empty.

Usage: python benchmarks/outage_recovery.py [--outage-sec 5] [--jobs 200]
Runs its own redis-server (AOF on) in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-sec", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=200)
    opts = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="outage-bench-"))
    from resilience.embedded import RedisServerProcess, find_redis_binary
    from resilience.settings import load_settings

    server = RedisServerProcess(binary=find_redis_binary(load_settings()), directory=workdir / "redis").start()
    os.environ.update({"REDIS_URL": server.url, "RESILIENCE_DATA_DIR": str(workdir / "data"),
                       "PYTHONPATH": str(ROOT)})
    import tasks  # noqa: F401 - the app, configured from the environment above
    from resilience import spool
    from resilience.testing import SubprocessWorker, hold_outage, wait_for
    from tests.jobs.outage import mark, marks

    marks_path = str(workdir / "marks.txt")
    results = {}
    worker = SubprocessWorker(workdir / "logs", concurrency=2, include=["tests.jobs.outage"]).start().wait_ready()
    try:
        ids = [mark.delay(marks_path, i).id for i in range(opts.jobs)]
        wait_for(lambda: len(marks(marks_path)) >= opts.jobs // 4, timeout=120, message="draining to start")
        server.kill()
        hold_outage(opts.outage_sec)
        done_before = len(marks(marks_path))
        server.start()
        back = time.monotonic()
        wait_for(lambda: len(marks(marks_path)) > done_before, timeout=120, interval=0.02,
                 message="a job to complete after Redis returned")
        results["redis_back_to_first_job_sec"] = round(time.monotonic() - back, 2)
        wait_for(lambda: set(marks(marks_path)) >= set(ids), timeout=300, message="every job to complete")
        counts = marks(marks_path)
        results["jobs"] = len(ids)
        results["ran_more_than_once"] = sum(1 for v in counts.values() if v > 1)
        results["worker_alive"] = worker.alive()

        server.stop()
        spooled = [mark.delay(marks_path, i).id for i in range(opts.jobs)]
        results["spooled"] = spool.count()
        server.start()
        back = time.monotonic()
        wait_for(lambda: spool.count() == 0, timeout=120, interval=0.02, message="the spool to be flushed")
        results["redis_back_to_spool_flushed_sec"] = round(time.monotonic() - back, 2)
        wait_for(lambda: set(marks(marks_path)) >= set(spooled), timeout=300, message="spooled jobs to complete")
    finally:
        worker.stop()
        server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
