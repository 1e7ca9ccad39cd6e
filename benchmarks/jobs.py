"""The benchmark's job, joined to the worker with ``-I benchmarks.jobs``.

A no-op that increments a Redis counter, so that what a run measures is the
cost of getting a job from ``delay()`` to done, not the job's own work. The
job that brings the counter to the phase's total pushes a "done" marker, so
the producer waits with one blocking pop instead of polling (polling would
add commands to the counts being measured).
"""

from __future__ import annotations

import time

from resilience.keys import keys
from resilience.store import get_redis
from tasks.app import app

__all__ = ["noop", "counter_key", "done_key", "latency_key"]


def counter_key(phase: str) -> str:
    return keys().custom(f"bench:count:{phase}")


def done_key(phase: str) -> str:
    return keys().custom(f"bench:done:{phase}")


def latency_key(phase: str) -> str:
    return keys().custom(f"bench:latency:{phase}")


@app.task(bind=True, name="bench.noop")
def noop(self, phase: str, submitted_at: float, total: int) -> None:
    """Count this run (one round trip); with ``submitted_at``, also record the
    seconds from submit to start in the same round trip."""
    started = time.time()
    client = get_redis()
    if submitted_at:
        pipe = client.pipeline(transaction=False)
        pipe.incr(counter_key(phase))
        pipe.rpush(latency_key(phase), repr(started - submitted_at))
        count = pipe.execute()[0]
    else:
        count = client.incr(counter_key(phase))
    if count == total:
        client.rpush(done_key(phase), "1")
