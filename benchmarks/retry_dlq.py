"""Dead-letter tooling and delayed-run costs at scale, on a private redis-server.

Run: ``.venv/bin/python -m benchmarks.retry_dlq`` (about 20 s). Prints the
best of a few runs for: the first page of ``dlq list`` and a filtered page at
100,000 entries, a full ``dlq stats``, a trim pass, the cost of a delayed
submission (kept in jobs:scheduled) against a plain one, and promotion of
1,000 due runs.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ENTRIES = 100_000
JOBS = 1_000


def best_ms(func: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def entry(n: int) -> str:
    return json.dumps({"job_id": f"job-{n}", "task": "bench.a" if n % 2 else "bench.b", "args": [n], "kwargs": {},
                       "options": {"queue": "celery"}, "failure_reason": "permanent error: no such order",
                       "error_type": "PermanentError", "traceback": "", "failed_at": "2026-06-01T00:00:00Z",
                       "retry_count": 0, "worker": "bench@host"})


def main() -> None:
    from resilience.settings import load_settings
    from resilience.testing import RedisServerProcess, configure, find_redis_binary

    workdir = Path(tempfile.mkdtemp(prefix="bench-retry-dlq-"))
    os.environ["RESILIENCE_DATA_DIR"] = str(workdir / "data")
    server = RedisServerProcess(binary=find_redis_binary(load_settings()), directory=workdir / "redis")
    server.start()
    try:
        with configure(server.url):
            run()
    finally:
        server.stop()


def run() -> None:
    from resilience import deadletter, scheduler
    from resilience.keys import keys
    from resilience.store import get_redis
    from tasks.app import app

    client = get_redis()
    pipe = client.pipeline(transaction=False)
    for n in range(ENTRIES):
        pipe.lpush(keys().dead_letter, entry(n))
    pipe.execute()
    rows = [
        (f"dlq list, first page of 50, {ENTRIES:,} entries", best_ms(lambda: deadletter.list_entries(limit=50))),
        (f"dlq list --task (50 matches), {ENTRIES:,} entries",
         best_ms(lambda: deadletter.list_entries(task="bench.a", limit=50))),
        (f"dlq stats (full paged scan), {ENTRIES:,} entries", best_ms(deadletter.stats, 2)),
        (f"trim pass (nothing to drop), {ENTRIES:,} entries",
         best_ms(lambda: deadletter.trim(max_entries=ENTRIES * 2), 3)),
    ]
    add = app.tasks["celery.backend_cleanup"]  # any registered task: only the publish is measured
    plain = best_ms(lambda: [add.apply_async() for _ in range(JOBS)], 1) / JOBS
    delayed = best_ms(lambda: [add.apply_async(countdown=0) for _ in range(JOBS)], 1) / JOBS
    rows.append(("plain submission, per job", plain))
    rows.append(("delayed submission (jobs:scheduled), per job", delayed))
    rows.append((f"promote {scheduler.waiting():,} due runs", best_ms(lambda: _drain(scheduler), 1)))
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  {'ms':>9}")
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:9.2f}")


def _drain(scheduler) -> None:
    while scheduler.promote_due():
        pass


if __name__ == "__main__":
    main()
