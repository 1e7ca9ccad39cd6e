"""What the idempotency guards cost per job, in Redis commands and round trips.

Standalone: starts a private redis-server, submits and runs N jobs of an
``idempotent=True`` task on a real in-process worker, once with
``FEATURE_IDEMPOTENCY=true`` and once with ``false``, and records every
command Redis receives with MONITOR. Commands sent by a client are round
trips (or parts of a pipeline); commands run inside Lua scripts are not.
Commands from this script's own polling and MONITOR connections are left out.

    python benchmarks/guard_cost.py [--jobs 300]

The stuck-job registry (``FEATURE_STUCK_JOBS``) shares its start and finish
scripts with the execution guard, so the run-time guard adds no round trip of
its own while the registry is on; ``--registry-off`` shows the guard alone.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_LINE = re.compile(r'^\+?[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"')


class Monitor(threading.Thread):
    """Counts commands seen by MONITOR, by origin (client or lua) and name."""

    def __init__(self, client, ignore: set[str]) -> None:
        super().__init__(daemon=True)
        self.client, self.ignore = client, ignore
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.recording = False
        self.stopped = threading.Event()

    def run(self) -> None:
        with self.client.monitor() as m:
            self.ignore.add(_laddr_of(m.connection))
            for raw in m.listen():
                if self.stopped.is_set():
                    return
                cmd = raw.get("command", "")
                addr = ("lua" if raw.get("client_type") == "lua"
                        else f"{raw.get('client_address')}:{raw.get('client_port')}")
                if self.recording and addr not in self.ignore and cmd:
                    name = cmd.split(" ", 1)[0].upper()
                    self.counts[("lua" if addr == "lua" else "client", name)] += 1


def _laddr_of(connection) -> str:
    sock = connection._sock
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def measure(app, task, redis_client, n: int, monitor: Monitor, *, guard: bool, registry: bool):
    from resilience.testing import configure, in_process_worker, wait_for

    with configure(feature_idempotency=guard, feature_stuck_jobs=registry):
        redis_client.flushall()
        queue = app.conf.task_default_queue
        monitor.counts.clear()
        monitor.recording = True
        for i in range(n):
            task.apply_async((f"order-{i}", i))
        submitted = collections.Counter(monitor.counts)
        with in_process_worker(app, concurrency=1):
            wait_for(lambda: redis_client.llen(queue) == 0 and redis_client.hlen("unacked") == 0
                     and redis_client.hlen("bench:runs") == n, 120, message="all jobs to run")
            monitor.recording = False
            total = collections.Counter(monitor.counts)
    return submitted, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--registry-off", action="store_true", help="FEATURE_STUCK_JOBS=false in both runs")
    opts = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="guard-cost-"))
    os.environ["RESILIENCE_DATA_DIR"] = str(workdir / "data")
    from resilience.testing import start_private_redis

    server = start_private_redis(workdir / "redis")
    import logging

    logging.disable(logging.WARNING)
    try:
        import redis

        from tasks.app import app

        @app.task(bind=True, name="benchmarks.guard_cost.charge", idempotent=True)
        def charge(self, order_id: str, amount: int) -> int:
            from resilience.store import get_redis

            get_redis().hincrby("bench:runs", self.request.id, 1)
            return amount

        poller = redis.Redis.from_url(server.url, decode_responses=True, single_connection_client=True)
        poller.ping()
        ignore = {_laddr_of(poller.connection)}
        monitor = Monitor(redis.Redis.from_url(server.url, decode_responses=True), ignore)
        monitor.start()
        registry = not opts.registry_off
        results = {}
        for guard in (True, False):
            results[guard] = measure(app, charge, poller, opts.jobs, monitor, guard=guard, registry=registry)
        monitor.stopped.set()
        poller.ping()
        report(results, opts.jobs, registry)
    finally:
        server.stop()


def report(results, n: int, registry: bool) -> None:
    print(f"{n} jobs, FEATURE_STUCK_JOBS={'true' if registry else 'false'}; per job, guards on / off / difference")
    for phase, index in (("submit (caller)", 0), ("submit + run (caller, worker start-up, runs, results)", 1)):
        on, off = results[True][index], results[False][index]
        print(f"\n{phase}")
        for origin in ("client", "lua"):
            names = sorted({name for (o, name) in on | off if o == origin})
            rows = [(name, on[(origin, name)] / n, off[(origin, name)] / n) for name in names]
            rows = [row for row in rows if max(row[1], row[2]) >= 0.005]
            label = "sent by clients (round trips or pipelined)" if origin == "client" else "run inside Lua scripts"
            print(f"  commands {label}:")
            for name, a, b in rows:
                print(f"    {name:<12} {a:7.2f} {b:7.2f} {a - b:+7.2f}")
            a = sum(v for (o, _), v in on.items() if o == origin) / n
            b = sum(v for (o, _), v in off.items() if o == origin) / n
            print(f"    {'total':<12} {a:7.2f} {b:7.2f} {a - b:+7.2f}")


if __name__ == "__main__":
    main()
