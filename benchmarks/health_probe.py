"""How fast a worker's probes answer, with Redis up, stopped and frozen.

Run: ``.venv/bin/python benchmarks/health_probe.py [--requests 200]``

It starts a private redis-server and a real prefork worker (subprocess), then
times ``GET /health``, ``/ready`` and ``/metrics`` in each Redis state and
prints a table of median, p99 and max latencies in milliseconds, and how long
``/health`` took to turn 503 after Redis stopped and 200 after it returned.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="health-bench-"))
    os.environ["RESILIENCE_DATA_DIR"] = str(workdir / "data")
    from resilience.testing import start_private_redis

    server = start_private_redis(workdir / "redis")

    import httpx

    from resilience.keys import keys
    from resilience.store import get_redis
    from resilience.testing import SubprocessWorker, settings_env, wait_for

    env = settings_env(HEALTH_PORT=0, HEALTH_REFRESH_INTERVAL_SEC=1, HEALTH_REDIS_TIMEOUT_SEC=0.5)
    worker = SubprocessWorker(workdir / "logs", env=env, concurrency=2)
    client = httpx.Client(timeout=5)
    rows = []
    try:
        worker.start().wait_ready()
        url = wait_for(lambda: next((json.loads(v)["url"] for k, v in get_redis().hgetall(keys().worker_health).items()
                                     if k.startswith(worker.name + "|")), None), timeout=30)
        wait_for(lambda: client.get(url + "/health").status_code == 200, timeout=30)

        def measure(state: str) -> None:
            for path in ("/health", "/ready", "/metrics"):
                times = []
                for _ in range(options.requests):
                    started = time.perf_counter()
                    client.get(url + path)
                    times.append((time.perf_counter() - started) * 1000)
                times.sort()
                rows.append((state, path, statistics.median(times), times[int(len(times) * 0.99) - 1], times[-1]))

        measure("redis up")
        stopped = time.monotonic()
        server.stop()
        wait_for(lambda: client.get(url + "/health").status_code == 503, timeout=30, interval=0.02)
        to_503 = time.monotonic() - stopped
        measure("redis stopped")
        server.restart()
        back = time.monotonic()
        wait_for(lambda: client.get(url + "/health").status_code == 200, timeout=120, interval=0.05)
        to_200 = time.monotonic() - back
        server.freeze()
        time.sleep(2)  # let the monitor see the frozen server
        measure("redis frozen")
        server.thaw()
    finally:
        client.close()
        worker.stop()
        server.stop()

    print(f"{'redis':<14} {'endpoint':<9} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for state, path, median, p99, worst in rows:
        print(f"{state:<14} {path:<9} {median:>10.2f} {p99:>8.2f} {worst:>8.2f}")
    print(f"/health 503 after Redis stopped: {to_503:.2f}s; 200 after it returned: {to_200:.2f}s")


if __name__ == "__main__":
    main()
