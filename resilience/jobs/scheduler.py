"""Durable delayed runs: countdown, eta and retries wait in Redis, not in a worker.

Celery sends a delayed job as an ETA message that a worker takes and holds in
memory until it is due. Held past the broker's visibility timeout the message
is delivered a second time (a duplicate run), and with early acks a worker
crash loses it. Here a delayed run never becomes a message until it is due:

* :func:`schedule` builds the exact kombu envelope the Redis transport would
  ``LPUSH`` (published through Celery with a channel whose ``_put`` captures
  instead of writing) and stores it in ``jobs:scheduled`` (zset by due time)
  and ``jobs:scheduled:payloads`` (hash) in one Lua step; for a retry of the
  running job the same step marks its execution record "retrying" and drops
  its ``jobs:active`` entry (``lua/schedule.lua``);
* :func:`promote_due` moves due runs to their queue lists atomically
  (``lua/schedule_promote.lua``). Every worker runs it from a bootstep timer
  (:class:`PromoterStep`) and beat runs it as a backstop; concurrent promoters
  move each run once. A run whose payload is unreadable (not JSON, not
  :data:`DELAYED_RUN`, a message that is not a kombu message), has none, or
  whose queue key holds another type is moved to the quarantine
  (:mod:`resilience.core.quarantine`): it never holds back the runs behind it.

A worker crash or restart while a run waits loses nothing, and a delay longer
than the visibility timeout runs the job once. The job sees its due time as
``self.request.eta``, as it would from an ETA message. ``FEATURE_SMART_RETRY=false``
gives Celery's ETA messages back.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import bootsteps
from kombu import Producer

from resilience.core.bounded import within_deadline
from resilience.core.keys import keys
from resilience.core.quarantine import TEXT, Bad, Batch, Reply, Shape, decode
from resilience.core.replication import run_script
from resilience.core.settings import get_settings
from resilience.core.store import get_redis, load_script
from resilience.jobs import executions
from resilience.jobs.executions import owner_of
from resilience.jobs.republish import republish_of_current
from resilience.transport.unacked import MESSAGE

__all__ = ["wants_delay", "schedule", "capture_message", "promote_due", "waiting", "PromoterStep"]

log = logging.getLogger(__name__)

#: A ``jobs:scheduled:payloads`` record: the queue list key and the kombu envelope (JSON) to push there.
DELAYED_RUN = Shape({"queue": TEXT, "message": TEXT}, required=("queue", "message"))


#: The header carrying a durable delayed run's due time (ISO 8601, UTC) to ``self.request.eta``.
ETA_HEADER = "resilience_eta"


def wants_delay(options: dict) -> bool:
    """Whether a submission asks for a delayed run (``countdown`` or ``eta``)."""
    return options.get("countdown") is not None or options.get("eta") is not None


def due_time(options: dict, now: float) -> float:
    """Epoch seconds when a run submitted with ``countdown``/``eta`` is due."""
    eta = options.get("eta")
    if eta is not None:
        if isinstance(eta, str):
            eta = datetime.fromisoformat(eta)
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=UTC)
        return eta.timestamp()
    return now + max(0.0, float(options.get("countdown") or 0))


class _Capture(threading.local):
    """Per thread: a broker connection whose channel captures messages instead of writing them."""

    conn: Any = None
    channel: Any = None
    pid: int | None = None
    app: Any = None
    captured: list


_capture = _Capture()


def _capture_channel(app):
    if _capture.conn is None or _capture.pid != os.getpid() or _capture.app is not app:
        _drop_capture()
        from kombu.utils.json import dumps

        conn = app.connection_for_write()
        channel = within_deadline(lambda: conn.default_channel)  # kombu's Redis channel pings on creation
        captured: list[tuple[str, str]] = []

        def _put(queue, message, **kwargs):
            pri = channel._get_message_priority(message, reverse=False)
            captured.append((channel._q_for_pri(queue, pri), dumps(message)))

        channel._put = _put  # this connection and channel are used for capturing only
        _capture.conn, _capture.channel, _capture.pid, _capture.app = conn, channel, os.getpid(), app
        _capture.captured = captured
    return _capture.channel, _capture.captured


def _drop_capture() -> None:
    conn, _capture.conn, _capture.channel = _capture.conn, None, None
    if conn is not None and _capture.pid == os.getpid():
        try:
            conn.release()
        except Exception:  # noqa: BLE001 - a broken connection is dropped either way
            pass


def capture_message(app, send: Callable[[Any], Any]) -> tuple[str, str]:
    """Run ``send(producer)`` with a producer that captures instead of writing.

    Returns ``(list key, envelope JSON)``: exactly what kombu's Redis transport
    would ``LPUSH``. ``send`` publishes one job through Celery (``apply_async``
    or ``send_task`` with ``producer=``), so headers, routing, priority and
    body encoding are Celery's own. ``send`` must publish with ``retry=False``:
    a publish retry would revive the producer on a fresh channel that writes.
    The capturing connection is kept per thread and rebuilt after an error or
    a fork.
    """
    for attempt in (1, 2):
        channel, captured = _capture_channel(app)
        captured.clear()
        try:
            send(Producer(channel))
            break
        except Exception:
            _drop_capture()
            if attempt == 2:
                raise
    if len(captured) != 1:
        raise RuntimeError(f"expected one message to capture, got {len(captured)}")
    return captured[0]


def schedule(task, args, kwargs, job_id: str, options: dict, fallback: Callable, *, now: float | None = None):
    """Keep a delayed run in Redis until due; returns the job's ``AsyncResult``.

    ``fallback(**overrides)`` publishes the way Celery would, with the
    submission's links and options; called plainly when ``FEATURE_SMART_RETRY``
    is off (an ETA message), and with a capturing producer and no delay to
    build the stored envelope otherwise.
    """
    settings = get_settings()
    request = task.request
    # The running job's retry (or parking) closes its run in the same step; a deferred
    # duplicate leaves the records of the run it waits for alone.
    retry = republish_of_current(task, job_id) in {"retry", "park"}
    if not settings.feature_smart_retry or task.app.conf.task_always_eager:
        result = fallback()
        if retry:
            executions.finish(task, "retrying", attempt=int(options.get("retries") or 0))
        return result

    now = time.time() if now is None else now
    due = due_time(options, now)

    # The run's due time travels in a header that the worker shows the job as ``self.request.eta``
    # (resilience.jobs.request), as Celery's ETA message would, without holding the message until then.
    headers = {**(options.get("headers") or {}), ETA_HEADER: datetime.fromtimestamp(due, UTC).isoformat()}

    def send(producer):  # Celery's own publish (links, headers, routing), undelayed, into the capture
        return fallback(producer=producer, countdown=None, eta=None, retry=False, headers=headers)

    queue_key, envelope = capture_message(task.app, send)
    k = keys()
    transport = dict(task.app.conf.broker_transport_options or {})
    properties = (getattr(request, "properties", None) or {}) if retry else {}
    within_deadline(lambda: run_script(
        "schedule",
        keys=[k.scheduled, k.scheduled_payloads, k.job_state(job_id), k.active, k.active_deadlines,
              k.kombu_unacked(transport), k.kombu_unacked_index(transport)],
        args=[job_id, repr(due), json.dumps({"queue": queue_key, "message": envelope}), int(retry),
              owner_of(task) if retry else "", int(options.get("retries") or 0), repr(now),
              settings.idempotency_ttl_sec, int(settings.feature_idempotency),
              properties.get("delivery_tag") or ""],
        what=f"the delayed run of job {job_id}", settings=settings,
    ))
    return task.AsyncResult(job_id)


def promote_due(*, now: float | None = None, limit: int | None = None, client=None) -> int:
    """Move due delayed runs to their queues (safe to run anywhere, any number of times)."""
    settings = get_settings()
    client = client or get_redis()
    k = keys()
    now = time.time() if now is None else now
    limit = limit or settings.scheduler_batch_size
    batch = Batch("scheduler")
    try:
        return _promote(client, k, now, limit, batch)
    finally:
        batch.flush(client, now=now)


def _promote(client, k, now: float, limit: int, batch: Batch) -> int:
    pipe = client.pipeline(transaction=False)
    pipe.zrangebyscore(k.scheduled, "-inf", repr(now), start=0, num=limit)
    (ids,) = batch.execute(pipe, [Reply(k.scheduled, "sorted set", list)])
    if not ids:
        return 0
    pipe.hmget(k.scheduled_payloads, ids)
    (payloads,) = batch.execute(pipe, [Reply(k.scheduled_payloads, "hash", lambda: [None] * len(ids))])
    queue_keys: list[str] = []
    argv: list[Any] = [repr(now)]
    raw_of = dict(zip(ids, payloads, strict=True))
    for job_id, raw in raw_of.items():
        if raw is None:
            # schedule() writes both keys in one step: a due id without a payload never gets one
            batch.add(Bad(k.scheduled, job_id, None, "no payload in jobs:scheduled:payloads", "zset", job_id))
            continue
        run = batch.hash_value(k.scheduled_payloads, job_id, raw, DELAYED_RUN, companion=k.scheduled)
        if run is None:
            continue
        _, problem = decode(run["message"], MESSAGE)
        if problem:
            batch.add(Bad(k.scheduled_payloads, job_id, raw, f"message: {problem}", "hash", job_id, k.scheduled))
            continue
        if run["queue"] not in queue_keys:
            queue_keys.append(run["queue"])
        argv += [job_id, queue_keys.index(run["queue"]) + 3]
    if len(argv) == 1:
        return 0
    moved, *refused = load_script("schedule_promote", client)(
        keys=[k.scheduled, k.scheduled_payloads, *queue_keys], args=argv)
    for job_id, problem in zip(refused[::2], refused[1::2], strict=True):
        batch.add(Bad(k.scheduled_payloads, job_id, raw_of.get(job_id), problem, "hash", job_id, k.scheduled))
    return int(moved)


def waiting() -> int:
    """How many delayed runs wait in ``jobs:scheduled``."""
    return int(get_redis().zcard(keys().scheduled))


class PromoterStep(bootsteps.StartStopStep):
    """Consumer bootstep: a timer that promotes due delayed runs while the worker runs."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.tref = None
        self._busy = threading.Lock()

    def start(self, parent):
        interval = get_settings().scheduler_poll_interval_sec
        self.tref = parent.timer.call_repeatedly(interval, self._promote_safely, priority=10)

    def _promote_safely(self) -> None:
        if not self._busy.acquire(blocking=False):
            return
        try:
            moved = promote_due()
            if moved:
                log.debug("promoted %d due delayed runs", moved)
        except Exception as exc:  # Redis away: the next tick tries again
            log.warning("could not promote delayed runs: %s", exc)
        finally:
            self._busy.release()

    def stop(self, parent):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop
