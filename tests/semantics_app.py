"""A project's own app (not the bundled one) for tests/test_celery_semantics.py.

Its broker and results live in Redis database 1, the platform's records in
``REDIS_URL`` (database 0): a job that reaches the bundled app's broker or
backend by mistake shows up in the wrong database.
"""

from __future__ import annotations

import os
import sys

from celery import Celery, current_app, shared_task

from resilience import PermanentError, ResilientTask, install

URL = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/1"

app = Celery("semantics", task_cls=ResilientTask, broker=URL, backend=URL)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
install(app)


@app.task(name="semantics.fail")
def fail() -> None:
    raise PermanentError("refused")


@shared_task(name="semantics.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="semantics.probe")
def probe() -> dict:
    """Builds a canvas the way library code does: through current_app and a shared task."""
    child = current_app.signature("semantics.add", (2, 3)).apply_async()
    shared = add.delay(4, 5)
    return {"current_app": current_app.main, "bundled_imported": "resilience.bundled.app" in sys.modules,
            "children": [child.id, shared.id]}
