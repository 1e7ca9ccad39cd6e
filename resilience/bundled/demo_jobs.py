"""Demonstration jobs used by ``resilience demo``: each shows one feature at work."""

from __future__ import annotations

import random
import time

import httpx

from resilience import PermanentError
from resilience.breakers.breaker import get_breaker
from resilience.breakers.httpclient import BreakerClient
from resilience.bundled.app import app
from resilience.core.keys import keys
from resilience.core.store import get_redis
from resilience.platform.demo import DEMO_COUNTS


def _count(name: str) -> None:
    get_redis().hincrby(keys().custom(DEMO_COUNTS), name, 1)


@app.task(bind=True, name="demo.ok")
def ok(self, n: int) -> int:
    """A healthy job that reports progress."""
    self.progress(percent=50, note="halfway")
    time.sleep(random.uniform(0.05, 0.3))
    _count("ok")
    return n


@app.task(bind=True, name="demo.flaky", retry_for=(ConnectionError,), max_retries=4,
          retry_backoff=1, retry_backoff_max=8)
def flaky(self, n: int, fail_rate: float = 0.5) -> int:
    """Fails with a transient error now and then: retried with backoff."""
    _count("flaky_attempt")
    if random.random() < fail_rate:
        raise ConnectionError(f"upstream reset the connection (job {n})")
    _count("flaky_ok")
    return n


@app.task(bind=True, name="demo.permanent")
def permanent(self, n: int, api_token: str = "demo-secret-token") -> None:
    """Fails for good: lands in the dead-letter queue with its token masked."""
    _count("permanent")
    raise PermanentError(f"invoice {n} refers to a customer that does not exist")


@app.task(bind=True, name="demo.charge", idempotent=True)
def charge(self, order_id: str, amount_cents: int) -> dict:
    """An idempotent payment: duplicate submissions are absorbed."""
    _count("charge")
    return {"order_id": order_id, "charged": amount_cents}


@app.task(bind=True, name="demo.stuck", progress_timeout=10, max_retries=0)
def stuck(self, n: int) -> None:
    """Hangs without reporting progress: the stuck-job sweep stops it and dead-letters it."""
    _count("stuck")
    time.sleep(600)


# -- circuit breakers: a failing external API behind a shared breaker ----------------
#: Per-breaker overrides, declared where every worker imports them.
DEMO_API = get_breaker("demo-api", fail_max=5, reset_timeout_sec=10)


@app.task(bind=True, name="demo.call_api", breaker="demo-api", retry_for=(httpx.HTTPError,), max_retries=4,
          retry_backoff=1, retry_backoff_max=8)
def call_api(self, base_url: str, n: int) -> int:
    """Calls the demo's local "external API": while it fails, the breaker opens and jobs are parked."""
    _count("api_attempt")
    with BreakerClient(DEMO_API, base_url=base_url, read_timeout_sec=5) as api:
        api.get(f"/quotes/{n}")
    _count("api_ok")
    return n
