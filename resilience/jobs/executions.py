"""Execution records: the execution guard and the active-job registry in one.

When a job's message arrives, :func:`begin` claims its record atomically
(``lua/job_start.lua``): a job already completed, dead-lettered, superseded by
a later attempt, or running on a live worker is not run again. The same step
writes the ``jobs:active`` entry (which worker runs it, since when, its
progress, and what the sweep needs to requeue it) and its progress deadline.
:func:`finish` records the outcome and drops the entry in one step; both cost
one round trip each, which is the whole per-job overhead of the guard and the
registry together. The same two steps store the job's STARTED state and its
SUCCESS result for Celery's Redis result backend where it allows
(:mod:`resilience.transport.resultbackend`), which saves Celery's own two round trips
for each.

A record is keyed by job id: a redelivered message keeps its task id, so a
redelivery after a lost ack, a visibility timeout or a worker crash finds the
record of the first delivery. A message that carries an idempotency key owned
by another job is a duplicate of that job and is not run either.

Celery itself publishes under a used id on purpose (a chord body, ``replace()``,
a frozen signature applied again, ``task_id=`` given again), and plain Celery
runs each such publish. To tell those from deliveries of the same publish,
every publish through the submit path carries its own token in the
``resilience_publish`` header (:data:`PUBLISH_HEADER`), kept by every
re-publish of that message: kombu's redelivery and restore, the hand-over,
the sweep's requeue (from the ``jobs:active`` entry), the spool, a publish
retry, and the platform's own retry, deferral and parking. The record keeps
the token of the publish it belongs to: a delivery of that publish runs at
most once, a delivery of another publish runs as a new job (never alongside a
live run of the id), and a delivery of a publish the record has moved past is
stale. Messages without a token (older producers, ``send_task``) follow the
record as before.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from celery.states import STARTED, SUCCESS

from resilience.core import connection, replication
from resilience.core.identity import worker_id
from resilience.core.keys import keys
from resilience.core.settings import get_settings
from resilience.core.store import get_redis, load_script
from resilience.outages import pending_writes
from resilience.transport import resultbackend

__all__ = ["Decision", "PUBLISH_HEADER", "begin", "finish", "progress", "job_state", "active_jobs", "publish_token_of"]

log = logging.getLogger(__name__)

RUN, DONE, DEAD, STALE, BUSY, DUPLICATE = "run", "done", "dead", "stale", "busy", "duplicate"

#: The message header naming the publish a delivery belongs to.
PUBLISH_HEADER = "resilience_publish"


def new_publish_token() -> str:
    return uuid.uuid4().hex[:16]


def publish_token_of(request) -> str | None:
    """The publish token of the message behind ``request`` (None for messages without one)."""
    return getattr(request, PUBLISH_HEADER, None) or None


@dataclass(frozen=True)
class Decision:
    """What to do with a delivered job: run it, or why not."""

    action: str
    deliveries: int = 1
    detail: str | None = None

    @property
    def run(self) -> bool:
        return self.action == RUN


def _now() -> float:
    return time.time()


def owner_of(task) -> str:
    """The worker id of the run behind ``task.request`` (set by ResilientRequest)."""
    return getattr(task.request, "resilience_worker", None) or worker_id(task.request.hostname)


def progress_timeout_of(task) -> float:
    return float(getattr(task, "progress_timeout", None) or get_settings().job_progress_timeout_sec)


def registry_entry(task, args, kwargs, now: float) -> dict[str, Any]:
    """The ``jobs:active`` entry of the run behind ``task.request``."""
    request = task.request
    delivery = request.delivery_info or {}
    properties = getattr(request, "properties", None) or {}
    return {
        "job_id": request.id,
        "task": task.name,
        "worker": owner_of(task),
        "hostname": request.hostname,
        "pid": os.getpid(),
        "started_at": now,
        "last_progress_at": now,
        "progress": None,
        "note": None,
        "timeout": progress_timeout_of(task),
        "attempt": request.retries or 0,
        "queue": delivery.get("routing_key"),
        "exchange": delivery.get("exchange"),
        "delivery_tag": properties.get("delivery_tag"),
        "idempotency_key": getattr(request, "idempotency_key", None),
        "publish": publish_token_of(request),
        "args": list(args),
        "kwargs": dict(kwargs),
    }


def begin(task, args, kwargs, *, now: float | None = None) -> Decision:
    """Claim the record of the run behind ``task.request`` (one round trip)."""
    settings = get_settings()
    guard = settings.feature_idempotency
    registry = settings.feature_stuck_jobs
    if not (guard or registry):
        return Decision(RUN)
    now = _now() if now is None else now
    request = task.request
    k = keys()
    entry = registry_entry(task, args, kwargs, now)
    entry["run"] = token = uuid.uuid4().hex[:16]
    script_keys: list[str | bytes] = [k.job_state(request.id), k.active, k.active_deadlines, k.worker_heartbeats]
    if guard and entry["idempotency_key"]:
        script_keys.append(k.idempotency(entry["idempotency_key"]))
    started = resultbackend.folded_state_write(task, STARTED, None)
    try:
        result = replication.run_script(
            "job_start",
            keys=script_keys + ([started[0]] if started else []),
            args=[
                request.id, entry["worker"], repr(now), request.retries or 0,
                json.dumps(entry, default=str), repr(now + entry["timeout"]),
                settings.idempotency_ttl_sec, int(guard), int(registry),
                settings.worker_heartbeat_timeout_sec, int(registry),
                progress_timeout_of(task), token, entry["publish"] or "",
                *(started[1:] if started else ("", 0)),
            ],
            what=f"the start of job {request.id}", settings=settings,
        )
    except Exception as err:
        if connection.is_outage(err) and settings.feature_enhanced_redis:
            # The claim may have landed with its reply lost: withdraw exactly it once Redis
            # answers, or every redelivery would find the job "running" on this live worker.
            job_id = request.id
            pending_writes.defer(f"withdrawal of the unstarted claim on job {job_id}",
                                 lambda: unstart(job_id, token))
        raise
    action = result[0]
    if action == RUN:
        return Decision(RUN, deliveries=int(result[1]))
    return Decision(action, detail=result[1] if len(result) > 1 else None)


def unstart(job_id: str, token: str) -> bool:
    """Withdraw the claim ``token`` on ``job_id`` if it is still there (``lua/job_unstart.lua``)."""
    k = keys()
    return bool(load_script("job_unstart")(keys=[k.job_state(job_id), k.active, k.active_deadlines],
                                           args=[job_id, token]))


def finish(task, outcome: str, *, attempt: int | None = None, now: float | None = None, pipe=None,
           **returned: Any) -> None:
    """Record the outcome of the run behind ``task.request`` and drop its entry.

    With outcome "done" and ``result=`` (the job's return value), the job's
    SUCCESS result is stored in the same step when the result backend allows
    (:func:`resilience.transport.resultbackend.folded_state_write`), and Celery's own
    write of it is skipped.
    """
    settings = get_settings()
    if not (settings.feature_idempotency or settings.feature_stuck_jobs):
        return
    request = task.request
    release_key = None
    if outcome == "dead" and getattr(task, "release_key_on_dead_letter", True):
        release_key = getattr(request, "idempotency_key", None)
    attempt = request.retries or 0 if attempt is None else attempt
    job_id, owner = request.id, owner_of(task)
    now = _now() if now is None else now

    stored = None
    if outcome == "done" and "result" in returned and pipe is None:
        stored = resultbackend.folded_state_write(task, SUCCESS, returned["result"])

    def write():
        finish_job(job_id, owner, outcome, attempt=attempt, now=now, pipe=pipe, release_key=release_key,
                   stored=stored)

    try:
        write()
        if stored:
            resultbackend.mark_stored(task, SUCCESS)
    except Exception as err:
        if pipe is not None or not connection.is_outage(err) or not settings.feature_enhanced_redis:
            raise
        # The run is over whatever Redis says: record its outcome when Redis is back.
        connection.mark_down("store", err)
        pending_writes.defer(f"outcome {outcome!r} of job {job_id}", write)


def finish_job(job_id: str, owner: str, outcome: str, *, attempt: int = 0,
               now: float | None = None, pipe=None, release_key: str | None = None,
               stored: tuple[bytes, str, int] | None = None) -> None:
    """:func:`finish` for a job known by id and worker id (used outside the run too).

    With ``release_key`` and outcome "dead", the idempotency key is released in
    the same step if this job still owns it, so the request can be submitted again.
    ``stored`` (key, meta, expiry) is the job's result, written in the same step.
    """
    settings = get_settings()
    k = keys()
    script_keys: list[str | bytes] = [k.job_state(job_id), k.active, k.active_deadlines]
    if stored:
        script_keys.append(stored[0])
    elif release_key and settings.feature_idempotency:
        script_keys.append(k.idempotency(release_key))
    replication.run_script(
        "job_finish",
        keys=script_keys,
        args=[job_id, owner, outcome, attempt, repr(_now() if now is None else now),
              settings.idempotency_ttl_sec, int(settings.feature_idempotency),
              *(stored[1:] if stored else ("", 0))],
        client=pipe, what=f"the outcome {outcome!r} of job {job_id}", settings=settings,
    )


def progress(task, percent: float | None = None, note: str | None = None, *, now: float | None = None) -> bool:
    """Record progress of the running job; False if its entry is gone."""
    if not get_settings().feature_stuck_jobs:
        return False
    request = task.request
    now = _now() if now is None else now
    k = keys()
    updated = load_script("job_progress")(
        keys=[k.active, k.active_deadlines],
        args=[request.id, owner_of(task), repr(now), "" if percent is None else float(percent),
              "" if note is None else str(note)[:500], repr(now + progress_timeout_of(task))],
    )
    return bool(updated)


def job_state(job_id: str) -> dict | None:
    """The execution record of a job (None when there is none or it is malformed)."""
    raw = get_redis().get(keys().job_state(job_id))
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        log.warning("malformed execution record for job %s: %.200r", job_id, raw)
        return None


def active_jobs() -> dict[str, dict]:
    """Every ``jobs:active`` entry; a malformed one is returned as ``{"malformed": raw}``."""
    entries: dict[str, dict] = {}
    for job_id, raw in get_redis().hgetall(keys().active).items():
        try:
            entries[str(job_id)] = json.loads(raw)
        except ValueError:
            entries[str(job_id)] = {"malformed": raw}
    return entries
