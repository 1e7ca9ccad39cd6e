"""Error tracking: every real failure and retry of a job, grouped by a stable fingerprint.

What is recorded: Celery's ``task_failure`` (a job that failed for good, e.g.
dead-lettered) and ``task_retry`` (a failed attempt that will run again) signals,
but never Celery's control flow (``Retry``, ``Ignore``, ``Reject``) nor an error
the task declares expected with Celery's ``throws`` option. Other code records
its own errors with :func:`record_error`.

Where: ``errors:timeline`` (sorted set scored by epoch ms, JSON records, trimmed to
``ERROR_RETENTION_DAYS`` and ``ERROR_TIMELINE_MAX_ENTRIES``) and ``errors:patterns``
(hash ``component:operation:error_type`` -> count). For jobs the component is
``task`` and the operation the task name.

Why batched: a job must not wait on its own error report. :func:`record_error`
only captures the raw facts (type, message, frame names, context) into a bounded
in-process buffer; a daemon flusher thread (one per process, started lazily and
again after fork) redacts, fingerprints and serialises them and writes the buffer
every ``ERROR_FLUSH_INTERVAL_SEC`` in one Lua call (``lua/errors_record.lua``),
then raises the ``job_failed`` alert of each final failure. The
buffer is flushed when a worker process shuts down and at interpreter exit.
Every Redis failure is logged and swallowed; records stay buffered (the oldest
are dropped beyond ``ERROR_BUFFER_MAX``) until Redis answers again.

The fingerprint (:func:`fingerprint`) is the first 16 hex digits of SHA-1 over
the operation (task name), the error type, the normalised message (numbers, hex
ids, UUIDs and quoted values replaced by placeholders, secrets masked) and the
frames of the traceback as ``module:function`` (no line numbers; Celery's,
billiard's, kombu's and sentry-sdk's own frames left out), so the same
bug in the same place groups together across deploys and arguments.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import linecache
import logging
import os
import re
import socket
import threading
import time
import traceback as tb_module
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from resilience.core.errors import CONTROL_FLOW
from resilience.core.keys import keys
from resilience.core.quarantine import INTEGER, NUMBER, OBJECT, TEXT, Bad, Batch, Shape, decode
from resilience.core.redact import clip, redact_bounded, redact_text
from resilience.core.settings import get_settings
from resilience.core.store import get_redis, load_script
from resilience.observability import alert_rules, alerts

__all__ = [
    "fingerprint", "normalise_message", "record_error", "flush", "patterns", "timeline",
    "error_count_since", "on_task_failure", "on_task_retry", "flush_at_exit",
]

log = logging.getLogger(__name__)

_MAX_MESSAGE = 2000  # characters of a message that its fingerprint reads
_MAX_FRAMES = 30

#: What a record keeps at most, in bytes of JSON per field; a longer value is cut
#: with a marker (``…[truncated N chars]``, ``…[N more items]``). Each value of
#: ``context`` (a job's ``args``, its ``kwargs``, ...) is cut to
#: MAX_CONTEXT_VALUE_BYTES first, then the whole context to MAX_CONTEXT_BYTES.
#: The other fields are short (ids, names, the fingerprint, a time), so a record
#: stays under 19 KiB.
MAX_MESSAGE_BYTES = 2 * 1024
MAX_TRACEBACK_BYTES = 8 * 1024
MAX_CONTEXT_VALUE_BYTES = 2 * 1024
MAX_CONTEXT_BYTES = 8 * 1024
_WRITE_CHUNK = 500  # records per Lua call: a large backlog never blocks Redis for long

#: An ``errors:timeline`` record as :func:`flush` writes it; :func:`timeline` shows
#: a record of another shape as ``{"malformed": true, "problem", "raw"}``.
RECORD = Shape({"error_id": TEXT, "component": TEXT, "operation": TEXT, "error_type": TEXT, "error_message": TEXT,
                "job_id": TEXT, "task": TEXT, "worker": TEXT, "fingerprint": TEXT, "context": OBJECT,
                "timestamp": NUMBER, "traceback": TEXT})

_NORMALISERS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<uuid>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\b[0-9a-f]{12,}\b", re.I), "<hex>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
]


def normalise_message(message: str) -> str:
    """The message with its variable parts replaced, so repeats of one bug compare equal."""
    text = redact_text(message or "", _MAX_MESSAGE)
    for pattern, placeholder in _NORMALISERS:
        text = pattern.sub(placeholder, text)
    return text.strip()


#: Frames of the machinery around a job, left out of fingerprints: whether Celery's
#: tracer or Sentry's wrapper caught the error must not change its fingerprint.
_MACHINERY = ("celery.", "billiard.", "kombu.", "sentry_sdk.", "vine.")


def frames_of(tb: TracebackType | None) -> list[str]:
    """``module:function`` of each frame of a traceback (no line numbers: they move with edits)."""
    frames = []
    for frame, _ in tb_module.walk_tb(tb):
        module = frame.f_globals.get("__name__", "?")
        if not module.startswith(_MACHINERY):
            frames.append(f"{module}:{frame.f_code.co_name}")
    return frames[-_MAX_FRAMES:]


def fingerprint(operation: str, error_type: str, message: str, frames: list[str] | None = None) -> str:
    """A stable id for "the same error in the same place" (see the module docstring)."""
    parts = [operation, error_type, normalise_message(message), *(frames or [])]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def fingerprint_of_exception(operation: str, exc: BaseException, tb: TracebackType | None = None) -> str:
    """:func:`fingerprint` of an exception raised by ``operation`` (e.g. a task name)."""
    return fingerprint(operation, _type_name(exc), str(exc), frames_of(tb or exc.__traceback__))


def _type_name(exc: BaseException | type) -> str:
    cls = exc if isinstance(exc, type) else type(exc)
    return cls.__name__


# -- the buffer and its flusher -------------------------------------------------------

@dataclass
class _Pending:
    """The raw facts of one error, captured cheaply on the job's thread.

    Redaction, traceback text, fingerprint and JSON are made by the flusher.
    """

    now: float
    error_id: str
    component: str
    operation: str
    error_type: str
    message: str
    frames: list[tuple[str, str, int, str]]  # module, filename, line, function
    job_id: str | None
    task: str | None
    worker: str | None
    context: dict[str, Any]
    alert_failure: bool = False


class _Buffer:
    """Errors waiting for the flusher thread of this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: collections.deque[_Pending] = collections.deque()
        self.unwritten: collections.deque[tuple[int, str, str]] = collections.deque()  # built, Redis was away
        self.dropped = 0
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid: int | None = None


_buffer = _Buffer()


def _reset_after_fork() -> None:
    """A forked child starts with an empty buffer: the parent's records are the parent's to write."""
    global _buffer
    _buffer = _Buffer()


os.register_at_fork(after_in_child=_reset_after_fork)


def _ensure_flusher() -> None:
    pid = os.getpid()
    if _buffer.pid == pid and _buffer.thread is not None and _buffer.thread.is_alive():
        return
    with _buffer.lock:
        if _buffer.pid == pid and _buffer.thread is not None and _buffer.thread.is_alive():
            return
        _buffer.pid = pid
        _buffer.thread = threading.Thread(target=_flush_loop, name="resilience-error-flusher", daemon=True)
        _buffer.thread.start()


def _flush_loop() -> None:
    last = time.monotonic()
    while True:
        # short naps, so a changed ERROR_FLUSH_INTERVAL_SEC takes effect at once
        woken = _buffer.wake.wait(min(get_settings().error_flush_interval_sec, 0.5))
        if woken or time.monotonic() - last >= get_settings().error_flush_interval_sec:
            _buffer.wake.clear()
            last = time.monotonic()
            flush()


def _trim(queue: collections.deque, limit: int) -> int:
    dropped = 0
    while len(queue) > limit:
        queue.popleft()
        dropped += 1
    return dropped


def _enqueue(item: _Pending) -> None:
    limit = get_settings().error_buffer_max
    _ensure_flusher()
    with _buffer.lock:
        _buffer.items.append(item)
        _buffer.dropped += _trim(_buffer.items, limit)


def _build(item: _Pending) -> dict[str, Any]:
    frames = [f"{module}:{func}" for module, _, _, func in item.frames if not module.startswith(_MACHINERY)]
    record = {
        "error_id": item.error_id,
        "component": item.component,
        "operation": item.operation,
        "error_type": item.error_type,
        "error_message": redact_bounded(item.message, MAX_MESSAGE_BYTES)[0],
        "job_id": item.job_id,
        "task": item.task,
        "worker": item.worker or socket.gethostname(),
        "fingerprint": fingerprint(item.operation, item.error_type, item.message, frames[-_MAX_FRAMES:]),
        "context": _bounded_context(item.context),
        "timestamp": item.now,
    }
    if item.frames:
        summary = tb_module.StackSummary.from_list(
            [(filename, line, func, linecache.getline(filename, line).strip())
             for _, filename, line, func in item.frames])
        text = "Traceback (most recent call last):\n" + "".join(summary.format()) + \
            f"{item.error_type}: {item.message}"
        record["traceback"] = redact_bounded(text, MAX_TRACEBACK_BYTES, tail=MAX_TRACEBACK_BYTES // 2)[0]
    return record


def _bounded_context(context: dict[str, Any]) -> dict[str, Any]:
    """``context`` redacted, each value within MAX_CONTEXT_VALUE_BYTES and the whole within MAX_CONTEXT_BYTES."""
    values = {key: clip(value, MAX_CONTEXT_VALUE_BYTES) for key, value in itertools.islice(context.items(), 64)}
    return redact_bounded(values, MAX_CONTEXT_BYTES)[0]


def flush() -> int:
    """Build and write every buffered record now (one Lua call); return how many were written.

    Runs on the flusher thread (and at shutdown), never on a job's path. A job's
    final failure raises its ``job_failed`` alert here, once its fingerprint is
    known. Never raises: a failure is logged and the built records stay buffered.
    """
    settings = get_settings()
    with _buffer.lock:
        pending = list(_buffer.items)
        _buffer.items.clear()
        batch = list(_buffer.unwritten)
        _buffer.unwritten.clear()
        dropped, _buffer.dropped = _buffer.dropped, 0
    if dropped:
        log.warning("error tracking dropped %d records (buffer full while Redis was unavailable)", dropped)
    for item in pending:
        try:
            record = _build(item)
            batch.append((int(item.now * 1000), json.dumps(record, default=str),
                          f"{item.component}:{item.operation}:{item.error_type}"))
            if item.alert_failure:
                _alert_job_failed(record)
        except Exception as exc:
            log.warning("error tracking could not build a record: %s", exc)
    if not batch:
        return 0
    written = 0
    try:
        k = keys()
        script = load_script("errors_record")
        while batch:
            chunk = batch[:_WRITE_CHUNK]
            now_ms = int(time.time() * 1000)
            cutoff = now_ms - int(settings.error_retention_days * 86400 * 1000)
            argv: list[Any] = [cutoff, settings.error_timeline_max_entries]
            for score, record_json, pattern in chunk:
                argv += [score, record_json, pattern]
            added, *problems = script(keys=[k.errors_timeline, k.errors_patterns], args=argv)
            written += int(added)
            del batch[:_WRITE_CHUNK]
            _set_aside(k, problems)
        return written
    except Exception as exc:  # observers never break what they observe
        log.warning("error tracking could not write %d records: %s", len(batch), exc)
        with _buffer.lock:
            _buffer.unwritten.extendleft(reversed(batch))
            _buffer.dropped += _trim(_buffer.unwritten, settings.error_buffer_max)
        return written


def _set_aside(k, problems: list[str]) -> None:
    """Report what ``errors_record.lua`` could not count: keys of the wrong type, counts that were not numbers."""
    if not problems:
        return
    bad = Batch("error tracking")
    for kind, name, detail in zip(problems[::3], problems[1::3], problems[2::3], strict=True):
        if kind == "wrongtype":
            bad.wrong_type(name, "sorted set" if name == k.errors_timeline else "hash", detail)
        else:  # the script already started this pattern's count again at 1
            bad.add(Bad(k.errors_patterns, name, detail, "count is not an integer (counted again from 1)"))
    bad.flush()


def pending() -> int:
    """Records of this process not yet written to Redis."""
    with _buffer.lock:
        return len(_buffer.items) + len(_buffer.unwritten)


# -- recording ---------------------------------------------------------------------------

def _raw_frames(tb: TracebackType | None) -> list[tuple[str, str, int, str]]:
    return [(frame.f_globals.get("__name__", "?"), frame.f_code.co_filename, line, frame.f_code.co_name)
            for frame, line in tb_module.walk_tb(tb)][-_MAX_FRAMES * 2:]


def record_error(component: str, operation: str, error: BaseException | str, message: str | None = None, *,
                 job_id: str | None = None, task: str | None = None, worker: str | None = None,
                 context: dict[str, Any] | None = None, tb: TracebackType | None = None,
                 now: float | None = None, _alert_failure: bool = False) -> str | None:
    """Record one error; returns its ``error_id``, or None when tracking is off.

    Cheap and non-blocking: the facts are buffered and the flusher thread
    redacts, fingerprints and writes them. ``error`` is the exception, or its
    type name; ``message`` defaults to ``str(error)``. ``context`` is redacted
    before it is stored. Never raises.
    """
    try:
        if not get_settings().feature_error_tracking:
            return None
        if isinstance(error, BaseException):
            error_type = _type_name(error)
            message = str(error) if message is None else message
            frames = _raw_frames(tb or error.__traceback__)
        else:
            error_type, frames, message = str(error), [], message or ""
        item = _Pending(now=time.time() if now is None else now, error_id=uuid.uuid4().hex, component=component,
                        operation=operation, error_type=error_type, message=message, frames=frames,
                        job_id=job_id, task=task, worker=worker, context=dict(context or {}),
                        alert_failure=_alert_failure)
        _enqueue(item)
        return item.error_id
    except Exception as exc:
        log.warning("error tracking failed to record an error: %s", exc)
        return None


def _expected(task: Any, exc: BaseException | None) -> bool:
    """Celery control flow, or an error the task declares expected (``throws``)."""
    if exc is None or isinstance(exc, CONTROL_FLOW):
        return True
    throws = getattr(task, "throws", None) or ()
    return bool(throws) and isinstance(exc, tuple(throws))


def on_task_failure(sender=None, task_id=None, exception=None, args=None, kwargs=None, traceback=None,
                     einfo=None, **_: Any) -> None:
    try:
        if _expected(sender, exception):
            return
        request = getattr(sender, "request", None)
        task_name = getattr(sender, "name", None) or "unknown"
        record_error(
            "task", task_name, exception, job_id=task_id, task=task_name,
            worker=getattr(request, "hostname", None), tb=traceback,
            context={"outcome": "failed", "args": list(args or ()), "kwargs": dict(kwargs or {}),
                     "retries": getattr(request, "retries", 0) or 0},
            _alert_failure=True,
        )
    except Exception as exc:
        log.warning("error tracking: task_failure handler failed: %s", exc)


def on_task_retry(sender=None, request=None, reason=None, einfo=None, **_: Any) -> None:
    try:
        exc = getattr(reason, "exc", None)  # the Retry's underlying error; None: a plain self.retry()
        if not isinstance(exc, BaseException) or _expected(sender, exc):
            return
        task_name = getattr(sender, "name", None) or "unknown"
        record_error(
            "task", task_name, exc, job_id=getattr(request, "id", None), task=task_name,
            worker=getattr(request, "hostname", None),
            context={"outcome": "retrying", "args": list(getattr(request, "args", None) or ()),
                     "kwargs": dict(getattr(request, "kwargs", None) or {}),
                     "retries": getattr(request, "retries", 0) or 0},
        )
    except Exception as err:
        log.warning("error tracking: task_retry handler failed: %s", err)


def _alert_job_failed(record: dict[str, Any]) -> None:
    settings = get_settings()
    if not settings.alert_on_job_failure:
        return
    alert_rules.job_failed(record)


# -- reading -------------------------------------------------------------------------------

def patterns(limit: int | None = None) -> list[dict[str, Any]]:
    """Error patterns, most frequent first: ``[{pattern, component, operation, error_type, count}]``.

    A count that is not a number is shown as ``count: null, malformed: true`` (last).
    """
    raw = get_redis().hgetall(keys().errors_patterns)
    rows = []
    for pattern, value in raw.items():
        component, _, rest = str(pattern).partition(":")
        operation, _, error_type = rest.rpartition(":")
        count, problem = decode(value, INTEGER)
        row = {"pattern": pattern, "component": component, "operation": operation, "error_type": error_type,
               "count": count}
        if problem:
            row.update(malformed=True, problem=problem, raw=str(value)[:200])
        rows.append(row)
    rows.sort(key=lambda row: (-(row["count"] if row["count"] is not None else -1), row["pattern"]))
    return rows[:limit] if limit else rows


def timeline(limit: int = 50, *, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """The newest error records first, optionally between epoch seconds ``since`` and ``until``."""
    high = "+inf" if until is None else int(until * 1000)
    low = "-inf" if since is None else int(since * 1000)
    raw = get_redis().zrevrangebyscore(keys().errors_timeline, high, low, start=0, num=limit)
    records = []
    for item in raw:
        record, problem = decode(item, RECORD)
        records.append(record if problem is None else {"malformed": True, "problem": problem, "raw": item[:500]})
    return records


def error_count_since(since: float) -> int:
    """Errors recorded from epoch seconds ``since`` on (the error-rate rule reads this)."""
    return int(get_redis().zcount(keys().errors_timeline, int(since * 1000), "+inf"))


# -- wiring ----------------------------------------------------------------------------------

def flush_at_exit(**_: Any) -> None:
    """Write what is buffered and give the alerts it raised a moment to go out."""
    try:
        flush()
        alerts.flush(timeout=5.0)
    except Exception:  # noqa: BLE001 - exiting anyway
        pass
