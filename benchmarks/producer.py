"""One measured run, from the submitting side: ``python -m benchmarks.producer``.

The suite starts this in a fresh process for every run, with the run's
environment (feature flags, or plain Celery's settings), so the submit path is
configured exactly as a user's process would be (installers read the flags at
import). ``--app`` names the app module to import before the job: ``tasks``
(the platform) or ``benchmarks.plain_app`` (plain Celery). The measuring
itself uses a plain redis-py client, the same in every configuration. It
prints one JSON object on stdout.

Modes:

* ``run``: a worker is consuming. Warm up (pool processes fork, scripts are
  loaded), then the throughput phase (submit ``--jobs`` jobs as fast as one
  caller can, wait until the last is done) measured with Redis counters and
  the CPU of the worker and Redis, then the latency phase (``--latency-jobs``
  jobs submitted at a steady ``--rate`` well below capacity, each recording
  the seconds from submit to the start of its body). Last, the resident
  memory of the worker's main and pool processes.
* ``submit``: no worker runs. Counts what ``delay()`` alone costs in Redis,
  with an explicit idempotency key per call when ``--idempotency-key`` is set.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
import uuid

WAIT_TIMEOUT_SEC = 300


def _wait_done(client, phase: str, timeout: float) -> None:
    from benchmarks.jobs import done_key

    if client.blpop([done_key(phase)], timeout=timeout) is None:
        raise SystemExit(f"benchmark phase {phase!r}: jobs not done within {timeout}s")


def _clients():
    """The measuring client, and one of its own for the blocking wait (redis-py's default
    socket timeout, 5 s, would cut a wait for a slow run short)."""
    import redis

    url = os.environ["REDIS_URL"]
    return (redis.Redis.from_url(url, decode_responses=True, socket_timeout=60),
            redis.Redis.from_url(url, decode_responses=True, socket_timeout=WAIT_TIMEOUT_SEC + 30))


def run_phase(args) -> dict:
    from benchmarks.jobs import latency_key, noop
    from benchmarks.probes import delta, rss_bytes, snapshot

    client, waiter = _clients()
    pids = {"worker": args.worker_pid, "redis": args.redis_pid}

    warm, tput, lat = (f"{phase}-{args.run_id}" for phase in ("warm", "tput", "lat"))
    for _ in range(args.warmup):
        noop.delay(warm, 0.0, args.warmup)
    _wait_done(waiter, warm, WAIT_TIMEOUT_SEC)

    jobs = args.jobs
    before = snapshot(client, pids)
    started = time.perf_counter()
    for _ in range(jobs):
        noop.delay(tput, 0.0, jobs)
    enqueued = time.perf_counter()
    _wait_done(waiter, tput, WAIT_TIMEOUT_SEC)
    finished = time.perf_counter()
    window = delta(before, snapshot(client, pids), measuring_reads=1)

    interval = 1.0 / args.rate
    t0 = time.perf_counter()
    for i in range(args.latency_jobs):
        pause = t0 + i * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # pacing an open-loop load, not synchronising
        noop.delay(lat, time.time(), args.latency_jobs)
    _wait_done(waiter, lat, WAIT_TIMEOUT_SEC)
    latencies = sorted(float(v) for v in client.lrange(latency_key(lat), 0, -1))

    return {
        "jobs": jobs,
        "enqueue_sec": enqueued - started,
        "end_to_end_sec": finished - started,
        "calls": window.calls,
        "round_trips": window.reads,
        "cpu_sec": window.cpu,
        "latencies_sec": latencies,
        "rss_bytes": rss_bytes(args.worker_pid) if args.worker_pid else 0,
    }


def submit_phase(args) -> dict:
    from benchmarks.jobs import noop
    from benchmarks.probes import delta, snapshot

    client, _ = _clients()
    for _ in range(args.warmup):  # connections made, scripts loaded
        if args.idempotency_key:
            noop.apply_async(("warm", 0.0, 0), idempotency_key=f"warm-{uuid.uuid4().hex}")
        else:
            noop.delay("warm", 0.0, 0)
    before = snapshot(client, {})
    for i in range(args.jobs):
        if args.idempotency_key:
            noop.apply_async(("submit", 0.0, 0), idempotency_key=f"bench-{i}-{uuid.uuid4().hex}")
        else:
            noop.delay("submit", 0.0, 0)
    window = delta(before, snapshot(client, {}))
    return {"jobs": args.jobs, "calls": window.calls, "round_trips": window.reads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.producer")
    parser.add_argument("mode", choices=["run", "submit"])
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0, help="latency phase: jobs per second")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--worker-pid", type=int, default=0)
    parser.add_argument("--redis-pid", type=int, default=0)
    parser.add_argument("--idempotency-key", action="store_true")
    parser.add_argument("--run-id", default="0", help="names this run's counters (the worker outlives runs)")
    parser.add_argument("--app", default="tasks", help="the app module: tasks (the platform) or benchmarks.plain_app")
    args = parser.parse_args(argv)

    importlib.import_module(args.app)  # the app first: the shared job joins it
    import benchmarks.jobs  # noqa: F401

    try:
        result = run_phase(args) if args.mode == "run" else submit_phase(args)
    except Exception as err:  # reported in one line; the suite records the run as failed
        sys.stdout.write(json.dumps({"error": f"{type(err).__name__}: {err}"}) + "\n")
        traceback.print_exc()
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
