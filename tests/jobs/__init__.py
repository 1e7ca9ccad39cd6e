"""Jobs used by the tests. Each records its runs in Redis so a test can count them."""

from __future__ import annotations

import time

from resilience import PermanentError
from resilience.keys import keys
from resilience.store import get_redis
from tasks.app import app

RUNS = "test:runs"


def record_run(job_id: str) -> int:
    return get_redis().hincrby(keys().custom(RUNS), job_id, 1)


def runs(job_id: str) -> int:
    return int(get_redis().hget(keys().custom(RUNS), job_id) or 0)


@app.task(bind=True, name="tests.add")
def add(self, a: int, b: int) -> int:
    record_run(self.request.id)
    return a + b


@app.task(bind=True, name="tests.sleep")
def sleep(self, seconds: float, progress_every: float = 0.0) -> str:
    """Runs for ``seconds``, reporting progress every ``progress_every`` seconds if set."""
    record_run(self.request.id)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        step = min(progress_every or seconds, max(0.0, deadline - time.monotonic()))
        time.sleep(step)
        if progress_every:
            self.progress(note="working")
    get_redis().hincrby(keys().custom("test:completed"), self.request.id, 1)
    return "slept"


@app.task(bind=True, name="tests.fail_permanent")
def fail_permanent(self, reason: str = "bad input") -> None:
    record_run(self.request.id)
    raise PermanentError(reason)


@app.task(bind=True, name="tests.fail_transient", retry_for=(ConnectionError,), max_retries=2,
          retry_backoff=0.2, retry_backoff_max=1)
def fail_transient(self, times: int = 99) -> str:
    """Fails with ConnectionError for the first ``times`` runs, then succeeds."""
    n = record_run(self.request.id)
    if n <= times:
        raise ConnectionError(f"transient failure {n}")
    return "recovered"


@app.task(bind=True, name="tests.whoami")
def whoami(self) -> dict:
    """The request as the job sees it (hostname, delivery tag, idempotency key)."""
    properties = getattr(self.request, "properties", None) or {}
    return {"hostname": self.request.hostname, "worker": getattr(self.request, "resilience_worker", None),
            "delivery_tag": properties.get("delivery_tag"),
            "idempotency_key": getattr(self.request, "idempotency_key", None)}
