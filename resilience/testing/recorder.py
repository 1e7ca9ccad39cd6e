"""What test workers record about each job, so a test can count runs and retries.

Turned on in a process with :func:`enable` (the pytest plugin does it for
the test process and its in-process workers; a subprocess worker imports
:mod:`resilience.testing.record` with ``-I``), it writes to the platform's
Redis, under the key prefix:

* ``testing:runs`` (hash, job id -> count): how many times the job's body
  started. It is counted as the body is called, after the execution guard let
  the delivery through, so a redelivery the guard absorbed, a job parked by an
  open breaker and a poison job buried without running are not runs, and a
  run cut short by a killed worker is.
* ``testing:retries:<job id>`` (list, oldest first): one JSON entry per retry
  the job asked for, from Celery's ``task_retry`` signal in the worker:
  ``attempt`` (the retries count of the run that failed: 0 for the first
  run), ``delay`` (the seconds the retry was scheduled for: Celery's
  ``Retry.when``, the countdown the platform's backoff chose or the one the
  task gave), ``error_type``, ``error`` and ``at`` (epoch seconds).

The task's code is not changed: the first time a task runs in a process, its
``run`` is wrapped there (from Celery's ``task_prerun``). Recording never
fails a job: a write Redis refuses is logged and skipped.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import signals

from resilience.core.keys import keys
from resilience.core.store import get_redis

__all__ = ["RetryRecord", "enable", "disable", "runs", "retries", "runs_key", "retries_key"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_MARK = "_resilience_recorded"
_on = False


def runs_key() -> str:
    """Hash: job id -> how many times its body started."""
    return keys().custom("testing:runs")


def retries_key(job_id: str) -> str:
    """List, oldest first: JSON of each retry job ``job_id`` asked for."""
    return keys().custom(f"testing:retries:{job_id}")


@dataclass(frozen=True)
class RetryRecord:
    """One retry a job asked for."""

    attempt: int  #: retries count of the run that failed (0: the first run)
    delay: float | None  #: seconds until the retry was due (None: Celery had no countdown)
    error_type: str | None
    error: str | None
    at: float  #: epoch seconds when the run asked for it


def runs(job_id: str) -> int:
    """How many times the body of ``job_id`` started."""
    return int(get_redis().hget(runs_key(), job_id) or 0)


def retries(job_id: str) -> list[RetryRecord]:
    """The retries ``job_id`` asked for, oldest first."""
    return [RetryRecord(**json.loads(raw)) for raw in get_redis().lrange(retries_key(job_id), 0, -1)]


def enable() -> None:
    """Record runs and retries of every task that runs in this process (idempotent)."""
    global _on
    _on = True
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="resilience.testing.recorder.prerun")
    signals.task_retry.connect(_on_retry, weak=False, dispatch_uid="resilience.testing.recorder.retry")


def disable() -> None:
    """Stop recording in this process (tasks already wrapped count nothing more)."""
    global _on
    _on = False
    signals.task_prerun.disconnect(dispatch_uid="resilience.testing.recorder.prerun")
    signals.task_retry.disconnect(dispatch_uid="resilience.testing.recorder.retry")


def _on_prerun(sender=None, task=None, **_: Any) -> None:
    task = task or sender
    if task is not None and not getattr(task.run, _MARK, False):
        _wrap(task)


def _wrap(task) -> None:
    with _lock:
        body = task.run
        if getattr(body, _MARK, False):
            return

        @functools.wraps(body)
        def recorded(*args, **kwargs):
            job_id = task.request.id
            if job_id is not None and _on:
                _write(f"the run of job {job_id}", lambda: get_redis().hincrby(runs_key(), job_id, 1))
            return body(*args, **kwargs)

        setattr(recorded, _MARK, True)
        task.run = recorded


def _on_retry(sender=None, request=None, reason=None, **_: Any) -> None:
    job_id = getattr(request, "id", None)
    if job_id is None:
        return
    exc = getattr(reason, "exc", None)
    entry = {
        "attempt": int(getattr(request, "retries", 0) or 0),
        "delay": _delay(getattr(reason, "when", None)),
        "error_type": getattr(exc, "exc_cls_name", None) or (type(exc).__name__ if exc is not None else None),
        "error": None if exc is None else str(exc),
        "at": time.time(),
    }
    _write(f"a retry of job {job_id}", lambda: get_redis().rpush(retries_key(job_id), json.dumps(entry)))


def _delay(when: Any) -> float | None:
    """Seconds from now until ``Retry.when`` (a countdown, or an ETA; a naive ETA is UTC)."""
    if when is None:
        return None
    if isinstance(when, dt.datetime):
        eta = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        return round(eta.timestamp() - time.time(), 3)
    try:
        return float(when)
    except (TypeError, ValueError):
        return None


def _write(what: str, write) -> None:
    try:
        write()
    except Exception as err:  # noqa: BLE001 - recording never fails the job it records
        log.warning("testing recorder: could not record %s: %s", what, err)
