"""The dead-letter queue ``jobs:dead_letter``: every permanently failed job, visible.

Entries are JSON (newest first) with the fields of the public contract:
``job_id``, ``task``, ``args``, ``kwargs``, ``options``, ``failure_reason``,
``error_type``, ``traceback``, ``failed_at``, ``retry_count``, ``worker``.
Arguments and tracebacks are redacted before they are written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import traceback as tb
from typing import Any

from resilience import executions
from resilience.keys import keys
from resilience.redact import redact
from resilience.settings import get_settings
from resilience.store import get_redis

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("job_id", "task", "args", "kwargs", "options", "failure_reason", "error_type",
                   "traceback", "failed_at", "retry_count", "worker")


def utc_iso(ts: float | None = None) -> str:
    moment = dt.datetime.now(dt.UTC) if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def build_entry(task, args, kwargs, exc: BaseException | None, reason: str) -> dict[str, Any]:
    """The dead-letter entry of the run behind ``task.request``."""
    request = task.request
    delivery = request.delivery_info or {}
    error_type = type(exc).__name__ if exc is not None else "Unknown"
    trace = "".join(tb.format_exception(exc)) if exc is not None else ""
    return {
        "job_id": request.id,
        "task": task.name,
        "args": redact(list(args)),
        "kwargs": redact(dict(kwargs)),
        "options": {
            "queue": delivery.get("routing_key"),
            "exchange": delivery.get("exchange"),
            "idempotency_key": getattr(request, "idempotency_key", None),
            "headers": {"retries": request.retries or 0},
        },
        "failure_reason": redact(reason),
        "error_type": error_type,
        "traceback": redact(trace),
        "failed_at": utc_iso(),
        "retry_count": request.retries or 0,
        "worker": request.hostname,
    }


def bury(task, args, kwargs, exc: BaseException | None, reason: str) -> dict[str, Any] | None:
    """Dead-letter the run behind ``task.request`` and close its execution record."""
    settings = get_settings()
    entry = build_entry(task, args, kwargs, exc, reason)
    if not (settings.feature_dead_letter and getattr(task, "dead_letter", True)):
        executions.finish(task, "dead")
        return None
    pipe = get_redis().pipeline(transaction=True)
    pipe.lpush(keys().dead_letter, json.dumps(entry, default=str))
    executions.finish(task, "dead", pipe=pipe)
    pipe.execute()
    log.error("job %s (%s) dead-lettered: %s", entry["job_id"], entry["task"], entry["failure_reason"])
    return entry


def bury_entry(entry: dict[str, Any], *, pipe=None) -> None:
    """Write a ready-made entry (for jobs dead-lettered outside their run, e.g. by the sweep).

    ``entry`` has the contract's fields; it is redacted here. Placeholder: not
    yet atomic with the removal of the job's other records.
    """
    if not get_settings().feature_dead_letter:
        return
    entry = dict(entry)
    entry["args"] = redact(entry.get("args") or [])
    entry["kwargs"] = redact(entry.get("kwargs") or {})
    entry["traceback"] = redact(entry.get("traceback") or "")
    entry["failure_reason"] = redact(entry.get("failure_reason") or "")
    entry.setdefault("failed_at", utc_iso())
    client = pipe if pipe is not None else get_redis()
    client.lpush(keys().dead_letter, json.dumps(entry, default=str))
