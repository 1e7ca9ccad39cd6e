"""The benchmark's job, the same in every configuration: ``-I benchmarks.jobs``.

A no-op that increments a Redis counter, so that what a run measures is the
cost of getting a job from ``delay()`` to done, not the job's own work. The
job that brings the counter to the phase's total pushes a "done" marker, so
the producer waits with one blocking pop instead of polling (polling would
add commands to the counts being measured).

It is a ``shared_task``: it joins whichever app imports it, the platform's
(``tasks``, where it is a ``ResilientTask``) or plain Celery's
(``benchmarks.plain_app``). It imports nothing of this project and talks to
Redis with a plain redis-py client of its own (one per process, from
``REDIS_URL``), so its own work is identical in every configuration.
"""

from __future__ import annotations

import os
import time

import redis
from celery import shared_task

__all__ = ["noop", "counter_key", "done_key", "latency_key", "client"]

_client: tuple[int, redis.Redis] | None = None


def client() -> redis.Redis:
    """This process's client (made again after a fork)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        # 30 s like the platform's clients in the suite: a stalled shared machine makes a slow run, not a failed one
        _client = (os.getpid(), redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True, socket_timeout=30))
    return _client[1]


def counter_key(phase: str) -> str:
    return f"bench:count:{phase}"


def done_key(phase: str) -> str:
    return f"bench:done:{phase}"


def latency_key(phase: str) -> str:
    return f"bench:latency:{phase}"


@shared_task(name="bench.noop")
def noop(phase: str, submitted_at: float, total: int) -> None:
    """Count this run (one round trip); with ``submitted_at``, also record the
    seconds from submit to start in the same round trip."""
    started = time.time()
    r = client()
    if submitted_at:
        pipe = r.pipeline(transaction=False)
        pipe.incr(counter_key(phase))
        pipe.rpush(latency_key(phase), repr(started - submitted_at))
        count = pipe.execute()[0]
    else:
        count = r.incr(counter_key(phase))
    if count == total:
        r.rpush(done_key(phase), "1")
