"""Plain Celery, the baseline of ``make bench``: ``celery.Celery`` and nothing of this project.

No module of ``resilience``, ``tasks`` or ``celeryconfig`` is imported, so
this is what a team runs before it turns the platform on. The worker runs as
``celery -A benchmarks.plain_app worker -I benchmarks.jobs -c 2 -P prefork``,
the same command line as the platform's workers in the suite.

Configured from the environment:

* ``REDIS_URL``: the broker (and the result backend when results are on);
* ``PLAIN_CELERY_RESULTS``: ``true`` for the Redis result backend
  (configuration ``plain-results``), anything else for none (``plain``).

The settings the suite holds equal for every configuration are set here:
late acks, prefetch 1, JSON. Everything else is Celery's default (no task
events, no STARTED state, no socket timeouts).
"""

from __future__ import annotations

import os

from celery import Celery

__all__ = ["app", "with_results"]


def with_results() -> bool:
    return os.environ.get("PLAIN_CELERY_RESULTS", "").strip().lower() == "true"


app = Celery("plain", include=["benchmarks.jobs"])
app.conf.update(
    broker_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0") if with_results() else None,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # start-up only (silences Celery's deprecation warning), nothing per job
    broker_connection_retry_on_startup=True,
)
