"""Jobs for the idempotency tests; each counts its runs in Redis (see tests.jobs)."""

from __future__ import annotations

import time

from resilience import PermanentError
from resilience.keys import keys
from resilience.store import get_redis
from tasks.app import app
from tests.jobs import record_run

GATE = "test:idem:gate"
RUNNING = "test:idem:running"
MAX_RUNNING = "test:idem:max_running"
SEEN_KEYS = "test:idem:seen_keys"


@app.task(bind=True, name="tests.idem.charge", idempotent=True)
def charge(self, order_id: str, amount_cents: int) -> dict:
    record_run(self.request.id)
    return {"order_id": order_id, "charged": amount_cents}


@app.task(bind=True, name="tests.idem.echo")
def echo(self, value):
    record_run(self.request.id)
    return value


@app.task(bind=True, name="tests.idem.gated")
def gated(self, timeout: float = 60.0) -> str:
    """Runs until the test opens the gate; records the most concurrent runs of one job."""
    client = get_redis()
    record_run(self.request.id)
    running = client.hincrby(keys().custom(RUNNING), self.request.id, 1)
    client.eval("if tonumber(redis.call('GET', KEYS[1]) or 0) < tonumber(ARGV[1]) then "
                "redis.call('SET', KEYS[1], ARGV[1]) end", 1, keys().custom(MAX_RUNNING), running)
    deadline = time.monotonic() + timeout
    try:
        while not client.exists(keys().custom(GATE)) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        client.hincrby(keys().custom(RUNNING), self.request.id, -1)
    return "opened"


@app.task(bind=True, name="tests.idem.fail", idempotent=True)
def fail(self, order_id: str) -> None:
    record_run(self.request.id)
    raise PermanentError("card declined")


@app.task(bind=True, name="tests.idem.fail_keep_key", idempotent=True, release_key_on_dead_letter=False)
def fail_keep_key(self, order_id: str) -> None:
    record_run(self.request.id)
    raise PermanentError("card declined")


@app.task(bind=True, name="tests.idem.flaky", idempotent=True, retry_for=(ConnectionError,), max_retries=2,
          retry_backoff=0.1, retry_backoff_max=0.2)
def flaky(self, order_id: str) -> str:
    """Fails once with a transient error, then succeeds; records the key each run saw."""
    get_redis().rpush(keys().custom(SEEN_KEYS), str(getattr(self.request, "idempotency_key", None)))
    if record_run(self.request.id) == 1:
        raise ConnectionError("transient")
    return "ok"
