"""What replica acknowledgement (``REDIS_MIN_REPLICAS_ACK``) costs per job, under Sentinel.

Standalone: starts a local Sentinel topology (a primary, two replicas, three
sentinels: :class:`resilience.testing.SentinelTopology`), then, for each
configuration, a fresh child process that submits N jobs through the bundled
app (timing ``delay()``) and drains them with a real in-process worker
(threads, concurrency 2, started before the clock), timing the
submits and the whole submit-to-done window. Runs are interleaved
(off, on, off, on, ...) and the median is reported.

    python benchmarks/replica_ack.py [--jobs 500] [--runs 3] [--acks 0,1,2]

``--acks`` lists the configurations: 0 is off; N waits for N replicas on
every publish, job start, outcome and ack. On one machine the replicas are on
loopback, so what this shows is the extra round trip (``WAIT``) per write and
the replicas' apply time; across hosts add the network's round trip per write.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(jobs: int) -> dict:
    """One run in this (fresh) process: the environment names the topology and the configuration."""
    import logging

    logging.disable(logging.WARNING)
    from resilience.store import get_redis
    from resilience.testing import in_process_worker, wait_for
    from tasks.app import app

    key = f"bench:replica-ack:{os.getpid()}"

    @app.task(name="bench.replica_ack.count")
    def count() -> None:  # one INCR: the job's own work is the same in every configuration
        get_redis().incr(key)

    get_redis().delete(key)
    with in_process_worker(app, concurrency=2):  # started first: its start-up is not measured
        started = time.perf_counter()
        for _ in range(jobs):
            count.delay()
        submitted = time.perf_counter() - started
        wait_for(lambda: int(get_redis().get(key) or 0) >= jobs, 600, interval=0.01, message="every job to run")
        total = time.perf_counter() - started
    return {"submit_ms_per_job": submitted * 1000 / jobs, "jobs_per_sec": jobs / total}


def run_child(topology, data_dir: Path, ack: int, jobs: int) -> dict:
    env = {**os.environ, **topology.env(), "REDIS_MIN_REPLICAS_ACK": str(ack), "RESILIENCE_DATA_DIR": str(data_dir),
           "HEALTH_PORT": "0", "REDIS_SOCKET_TIMEOUT_SEC": "30", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, "--child", "--jobs", str(jobs)], env=env, cwd=ROOT,
                          capture_output=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"run with REDIS_MIN_REPLICAS_ACK={ack} failed: {done.stderr.decode()[-2000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--acks", default="0,1")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        print(json.dumps(child(opts.jobs)))
        return
    from resilience.testing import SentinelTopology

    acks = [int(a) for a in opts.acks.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="replica-ack-"))
    results: dict[int, list[dict]] = {ack: [] for ack in acks}
    with SentinelTopology(workdir / "ha").start() as topology:
        for run in range(opts.runs):
            for ack in acks:
                print(f"run {run + 1}/{opts.runs}, REDIS_MIN_REPLICAS_ACK={ack} ...", file=sys.stderr)
                results[ack].append(run_child(topology, workdir / f"data-{ack}-{run}", ack, opts.jobs))
    report(results, opts.jobs, opts.runs)


def report(results: dict[int, list[dict]], jobs: int, runs: int) -> None:
    print(f"Replica acknowledgement, {jobs} jobs per run, median of {runs} runs "
          "(primary + 2 replicas + 3 sentinels on loopback; worker: threads, concurrency 2)")
    print(f"{'REDIS_MIN_REPLICAS_ACK':>22} {'delay() ms/job':>15} {'jobs/s end to end':>18} {'ms/job end to end':>18}")
    base = None
    for ack, rows in results.items():
        submit = statistics.median(r["submit_ms_per_job"] for r in rows)
        rate = statistics.median(r["jobs_per_sec"] for r in rows)
        per_job = 1000 / rate
        base = per_job if base is None else base
        extra = "" if ack == next(iter(results)) else f"  ({per_job - base:+.2f} ms/job)"
        print(f"{ack:>22} {submit:>15.2f} {rate:>18.1f} {per_job:>18.2f}{extra}")


if __name__ == "__main__":
    main()
