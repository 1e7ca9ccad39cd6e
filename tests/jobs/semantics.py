"""Jobs for the Celery-semantics tests (tests/test_celery_semantics.py), on the bundled app."""

from __future__ import annotations

from celery import group
from pydantic import BaseModel

from resilience import PermanentError
from resilience.keys import keys
from resilience.store import get_redis
from tasks.app import app
from tests.jobs import record_run

ERRBACKS = "test:semantics:errbacks"
REQUESTS = "test:semantics:requests"
ATTEMPTS = "test:semantics:attempts"


def errbacks() -> list[str]:
    """Ids of the failed jobs the errback was called for, in call order."""
    return get_redis().lrange(keys().custom(ERRBACKS), 0, -1)


def seen_request(job_id: str) -> dict | None:
    import json

    raw = get_redis().hget(keys().custom(REQUESTS), job_id)
    return json.loads(raw) if raw else None


def _record_request(task) -> None:
    import json

    request = task.request
    get_redis().hset(keys().custom(REQUESTS), request.id, json.dumps({
        "parent_id": request.parent_id, "root_id": request.root_id, "group": request.group,
        "eta": None if request.eta is None else str(request.eta),
    }))


@app.task(bind=True, name="tests.semantics.add")
def add(self, x: int, y: int) -> int:
    record_run(self.request.id)
    _record_request(self)
    return x + y


@app.task(bind=True, name="tests.semantics.tsum")
def tsum(self, values: list[int]) -> int:
    record_run(self.request.id)
    return sum(values)


@app.task(bind=True, name="tests.semantics.typed")
def typed(self, *args, **kwargs) -> list:
    """What the job received: the type and repr of every argument."""
    record_run(self.request.id)
    return [[type(v).__name__, repr(v)] for v in (*args, *(kwargs[k] for k in sorted(kwargs)))]


@app.task(bind=True, name="tests.semantics.spawn")
def spawn(self, members: int = 0) -> dict:
    """Sends a child job (and a group of ``members``) from inside the job."""
    record_run(self.request.id)
    child = add.delay(1, 2)
    ids = {"child": child.id, "root": self.request.root_id}
    if members:
        ids["group"] = [r.id for r in group(add.s(i, i) for i in range(members)).apply_async().results]
    return ids


class Point(BaseModel):
    x: int
    y: int


@app.task(bind=True, name="tests.semantics.move", pydantic=True)
def move(self, point: Point, by: int) -> Point:
    record_run(self.request.id)
    assert isinstance(point, Point), type(point)
    return Point(x=point.x + by, y=point.y + by)


@app.task(bind=True, name="tests.semantics.fail")
def fail(self, *args) -> None:
    record_run(self.request.id)
    raise PermanentError("refused")


@app.task(bind=True, name="tests.semantics.on_error")
def on_error(self, failed_id: str) -> None:
    """An errback (Celery calls it with the failed job's id)."""
    get_redis().rpush(keys().custom(ERRBACKS), failed_id)


@app.task(bind=True, name="tests.semantics.retry_later", max_retries=1)
def retry_later(self, countdown: float) -> str:
    """Asks for one retry ``countdown`` seconds later, then succeeds."""
    if get_redis().hincrby(keys().custom(ATTEMPTS), self.request.id, 1) == 1:
        raise self.retry(countdown=countdown)
    return "second attempt"


@app.task(bind=True, name="tests.semantics.when")
def when(self) -> str | None:
    """The eta the job sees."""
    record_run(self.request.id)
    return None if self.request.eta is None else str(self.request.eta)
