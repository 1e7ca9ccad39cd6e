"""Jobs for the circuit breaker tests: they call a local HTTP API through a breaker
and record their failed runs and completions in Redis."""

from __future__ import annotations

import json

import httpx

from resilience.httpclient import BreakerClient
from resilience.keys import keys
from resilience.store import get_redis
from tasks.app import app

FAILED_RUNS = "test:breaker:failed_runs"
DONE = "test:breaker:done"


def _call(breaker: str, task, url: str) -> int:
    try:
        with BreakerClient(breaker, connect_timeout_sec=2, read_timeout_sec=5) as client:
            status = client.get(url).status_code
    except httpx.HTTPError:
        get_redis().hincrby(keys().custom(FAILED_RUNS), task.request.id, 1)
        raise
    get_redis().hset(keys().custom(DONE), task.request.id,
                     json.dumps({"retries": task.request.retries or 0, "worker": task.request.hostname}))
    return status


@app.task(bind=True, name="tests.breaker.call_api", breaker="jobs-api", retry_for=(httpx.HTTPError,),
          max_retries=20, retry_backoff=0.2, retry_backoff_max=0.5)
def call_api(self, url: str) -> int:
    """A job declared with ``breaker=``: its body runs through the breaker."""
    return _call("jobs-api", self, url)


@app.task(bind=True, name="tests.breaker.call_in_body", retry_for=(httpx.HTTPError,), max_retries=20,
          retry_backoff=0.2, retry_backoff_max=0.5)
def call_in_body(self, url: str) -> int:
    """A job with no breaker option whose body's HTTP client is refused by an open breaker."""
    return _call("body-api", self, url)


def done() -> dict[str, dict]:
    return {k: json.loads(v) for k, v in get_redis().hgetall(keys().custom(DONE)).items()}


def failed_runs() -> dict[str, int]:
    return {k: int(v) for k, v in get_redis().hgetall(keys().custom(FAILED_RUNS)).items()}
