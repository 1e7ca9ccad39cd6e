"""Jobs and a producer for the Sentinel failover tests (issue 16).

Each run appends ``<job id> <epoch seconds>`` to a local file, outside Redis,
so a failover cannot lose the count; the time tells when processing resumed.
Subprocess workers load this module with ``-I tests.jobs.sentinel``; the
producer runs as ``python -m tests.jobs.sentinel <marks> <ids> <count>``.
"""

from __future__ import annotations

import sys
import time

from tasks.app import app
from tests.jobs.outage import append_line


@app.task(bind=True, name="tests.sentinel.mark")
def mark(self, path: str) -> None:
    append_line(path, f"{self.request.id} {time.time():.3f}")


def runs(path: str) -> dict[str, list[float]]:
    """Job id -> the times its body ran."""
    found: dict[str, list[float]] = {}
    try:
        with open(path) as f:
            for line in f:
                job_id, _, at = line.strip().partition(" ")
                if job_id:
                    found.setdefault(job_id, []).append(float(at))
    except FileNotFoundError:
        pass
    return found


def submitted(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def produce(marks_path: str, ids_path: str, count: int) -> None:
    """Submit ``count`` jobs; each id is recorded once ``delay()`` accepted it (published or spooled)."""
    for _ in range(count):
        append_line(ids_path, mark.delay(marks_path).id)


if __name__ == "__main__":
    produce(sys.argv[1], sys.argv[2], int(sys.argv[3]))
