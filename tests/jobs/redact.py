"""Jobs for the secret-leak and record-size tests (issue 15)."""

from __future__ import annotations

import time

from resilience import PermanentError
from resilience.keys import keys
from resilience.store import get_redis
from tasks.app import app


@app.task(bind=True, name="tests.redact.leak", retry_for=(ConnectionError,), max_retries=1,
          retry_backoff=0.2, retry_backoff_max=0.2, retry_jitter=False)
def leak(self, text: str, **kwargs) -> None:
    """Fails with ``text`` in its message: retried once (Celery logs a retry line), then dead-lettered."""
    raise ConnectionError(f"upstream refused the call: {text}")


def raised_at(job_id: str) -> float | None:
    raw = get_redis().get(keys().custom(f"test:raised_at:{job_id}"))
    return float(raw) if raw else None


@app.task(bind=True, name="tests.redact.fail_big")
def fail_big(self, blob: str) -> None:
    """Fails for good with its (large) argument in its message, noting when it raised."""
    get_redis().set(keys().custom(f"test:raised_at:{self.request.id}"), repr(time.time()))
    raise PermanentError(f"rejected input {blob}")


@app.task(bind=True, name="tests.redact.stamp")
def stamp(self) -> None:
    """Notes when it started (the pool process was free again)."""
    get_redis().set(keys().custom(f"test:started_at:{self.request.id}"), repr(time.time()))


def started_at(job_id: str) -> float | None:
    raw = get_redis().get(keys().custom(f"test:started_at:{job_id}"))
    return float(raw) if raw else None
