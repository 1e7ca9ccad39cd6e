"""Jobs for the retry, delayed-run and dead-letter tests. Each records its runs in Redis."""

from __future__ import annotations

import os
import signal
import time

from resilience.keys import keys
from resilience.store import get_redis
from tasks.app import app
from tests.jobs import record_run


def record_time(job_id: str) -> None:
    get_redis().rpush(keys().custom(f"test:times:{job_id}"), repr(time.time()))


def run_times(job_id: str) -> list[float]:
    return [float(t) for t in get_redis().lrange(keys().custom(f"test:times:{job_id}"), 0, -1)]


@app.task(bind=True, name="tests.retry.steady", retry_for=(ConnectionError,), max_retries=3,
          retry_backoff=0.4, retry_backoff_max=1.0, retry_jitter=False)
def steady(self, times: int = 99) -> str:
    """Fails with ConnectionError for the first ``times`` runs; backoff without jitter."""
    record_time(self.request.id)
    if record_run(self.request.id) <= times:
        raise ConnectionError("upstream reset the connection")
    return "recovered"


@app.task(bind=True, name="tests.retry.unlisted", retry_for=(ConnectionError,), max_retries=3)
def unlisted(self) -> None:
    """Fails with an error outside retry_for: dead-lettered after one run."""
    record_run(self.request.id)
    raise KeyError("customer")


@app.task(bind=True, name="tests.retry.manual", max_retries=1)
def manual(self, countdown: float) -> str:
    """Uses Celery's own ``self.retry`` with an explicit countdown."""
    record_time(self.request.id)
    record_run(self.request.id)
    raise self.retry(countdown=countdown, exc=ValueError("not ready yet"))


@app.task(bind=True, name="tests.retry.slow_backoff", retry_for=(ConnectionError,), max_retries=1,
          retry_backoff=3.0, retry_backoff_max=3.0, retry_jitter=False)
def slow_backoff(self) -> str:
    """Fails once, then waits 3 s for its retry (longer than the tests' visibility timeout)."""
    record_time(self.request.id)
    if record_run(self.request.id) <= 1:
        raise ConnectionError("first run fails")
    get_redis().hincrby(keys().custom("test:completed"), self.request.id, 1)
    return "done"


@app.task(bind=True, name="tests.retry.poison")
def poison(self) -> None:
    """Kills its own pool process, as an out-of-memory kill would."""
    record_run(self.request.id)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(bind=True, name="tests.retry.secretive", retry_for=())
def secretive(self, user: str, password: str, options: dict) -> None:
    """Fails with a secret in its message: the entry must mask it."""
    record_run(self.request.id)
    raise RuntimeError(f"login failed for {user} with password={password}")
