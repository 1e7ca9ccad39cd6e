"""The dead-letter queue ``jobs:dead_letter``: every permanently failed job, visible.

Entries are JSON (newest first) with the fields of the public contract:
``job_id``, ``task``, ``args``, ``kwargs``, ``options``, ``failure_reason``,
``error_type``, ``traceback``, ``failed_at``, ``retry_count``, ``worker``.
Arguments, the reason and the traceback are redacted and cut to bounded sizes
(:data:`MAX_ARGS_BYTES`, :data:`MAX_KWARGS_BYTES`, :data:`MAX_REASON_BYTES`,
:data:`MAX_TRACEBACK_BYTES` of JSON each) before they are written; an entry
with a field cut lists it in ``clipped``, and one whose arguments were cut is
not replayed (it would run with the cut arguments).

Writing an entry is one Lua step with the job's removal (``lua/deadletter_bury.lua``):
the execution record becomes "dead", the ``jobs:active`` entry and its
deadline go, the idempotency key is released if the job still owns it, and
the message leaves kombu's ``unacked`` hash, so a crash between the write and
Celery's ack neither loses nor doubles the job.

The operator API (:func:`list_entries`, :func:`get`, :func:`replay`,
:func:`purge`, :func:`stats`, :func:`trim`) backs ``resilience dlq``. It
never fails on a malformed entry (not JSON, fields missing or of the wrong
type, see :data:`ENTRY`): such entries are reported as malformed and left in
place until the trim reaches them, which moves them to the quarantine
(:mod:`resilience.core.quarantine`). Replay refuses an entry whose queue is not one
of the app's (:func:`resilience.core.queues.queue_names`, or the task's own
route): a stored entry never decides which Redis key a message is pushed to.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
import traceback as tb
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from resilience.core.errors import ReplayRefused
from resilience.core.keys import keys
from resilience.core.quarantine import ANY, ARRAY, INTEGER, OBJECT, TEXT, Bad, Batch, Shape, decode
from resilience.core.queues import queue_names
from resilience.core.redact import redact_bounded
from resilience.core.runtime import app_or_bound, transport_options
from resilience.core.settings import get_settings
from resilience.core.store import get_redis, load_script
from resilience.jobs.executions import owner_of
from resilience.jobs.scheduler import capture_message

__all__ = [
    "REQUIRED_FIELDS", "Entry", "Filter", "build_entry", "bury", "bury_entry", "list_entries", "get",
    "replay", "replay_entry", "purge", "stats", "trim", "fingerprint", "iter_entries", "count", "Outcome",
    "MAX_ARGS_BYTES", "MAX_KWARGS_BYTES", "MAX_REASON_BYTES", "MAX_TRACEBACK_BYTES", "arguments_cut",
]

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("job_id", "task", "args", "kwargs", "options", "failure_reason", "error_type",
                   "traceback", "failed_at", "retry_count", "worker")

#: The types of an entry's fields (beyond :data:`REQUIRED_FIELDS` being present).
ENTRY = Shape({"job_id": TEXT, "task": TEXT, "args": ARRAY, "kwargs": OBJECT,
               "options": Shape({"queue": TEXT, "exchange": TEXT, "idempotency_key": TEXT, "headers": OBJECT}),
               "failure_reason": TEXT, "error_type": TEXT, "traceback": TEXT, "failed_at": TEXT,
               "retry_count": INTEGER, "worker": TEXT}, required=("job_id", "task"))

#: Entries read per round trip when the tooling walks the list.
PAGE = 1000

#: What an entry keeps at most, in bytes of JSON per field; a longer value is cut
#: with a marker (``…[truncated N chars]``, ``…[N more items]``). The other fields
#: are short (ids, names, time, counts, the idempotency key), so an entry with a
#: short idempotency key stays under 37 KiB.
MAX_ARGS_BYTES = 8 * 1024
MAX_KWARGS_BYTES = 8 * 1024
MAX_REASON_BYTES = 4 * 1024
MAX_TRACEBACK_BYTES = 16 * 1024

#: Field -> (cap, bytes of its end kept): a traceback keeps its first and its last lines.
_BOUNDS = {"args": (MAX_ARGS_BYTES, 0), "kwargs": (MAX_KWARGS_BYTES, 0),
           "failure_reason": (MAX_REASON_BYTES, 0), "traceback": (MAX_TRACEBACK_BYTES, MAX_TRACEBACK_BYTES // 2)}


def utc_iso(ts: float | None = None) -> str:
    moment = dt.datetime.now(dt.UTC) if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def parse_time(value: str | float | dt.datetime) -> float:
    """Epoch seconds from an ISO 8601 time (``Z`` or offset; naive means UTC) or a number."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        moment = value
    else:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


# -- writing ---------------------------------------------------------------------------
def _bound(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with its free-form fields redacted and cut to :data:`_BOUNDS` (``clipped`` names the cut ones)."""
    clipped = []
    for name, (cap, tail) in _BOUNDS.items():
        entry[name], cut = redact_bounded(entry[name], cap, tail=tail)
        if cut:
            clipped.append(name)
    if clipped:
        entry["clipped"] = clipped
    return entry


def build_entry(task, args, kwargs, exc: BaseException | None, reason: str) -> dict[str, Any]:
    """The dead-letter entry of the run behind ``task.request`` (redacted and bounded)."""
    request = task.request
    delivery = request.delivery_info or {}
    error_type = type(exc).__name__ if exc is not None else "Unknown"
    trace = "".join(tb.format_exception(exc)) if exc is not None else ""
    headers = {"retries": request.retries or 0}
    key = getattr(request, "idempotency_key", None)
    if key:
        headers["idempotency_key"] = key
    return _bound({
        "job_id": request.id,
        "task": task.name,
        "args": list(args),
        "kwargs": dict(kwargs),
        "options": {
            "queue": delivery.get("routing_key"),
            "exchange": delivery.get("exchange"),
            "idempotency_key": key,
            "headers": headers,
        },
        "failure_reason": reason,
        "error_type": error_type,
        "traceback": trace,
        "failed_at": utc_iso(),
        "retry_count": request.retries or 0,
        "worker": request.hostname,
    })


def broker_transport_options(app=None) -> dict:
    """The transport options of ``app`` (default: the app given to ``install()``)."""
    return transport_options(app_or_bound(app))


def _bury_script(entry_json: str, *, job_id: str, owner: str, attempt: int, idempotency_key: str | None,
                 release_key: bool, delivery_tag: str | None, app=None, pipe=None) -> int:
    settings = get_settings()
    k = keys()
    transport = broker_transport_options(app)
    key = k.idempotency(idempotency_key) if idempotency_key else k.idempotency("")
    return load_script("deadletter_bury")(
        keys=[k.dead_letter, k.job_state(job_id), k.active, k.active_deadlines, key,
              k.kombu_unacked(transport), k.kombu_unacked_index(transport)],
        args=[entry_json, job_id, owner, attempt, repr(time.time()), settings.idempotency_ttl_sec,
              int(settings.feature_idempotency), int(bool(release_key and idempotency_key)),
              delivery_tag or "", settings.dead_letter_max_entries],
        client=pipe,
    )


def bury(task, args, kwargs, exc: BaseException | None, reason: str) -> dict[str, Any] | None:
    """Dead-letter the run behind ``task.request`` and remove it everywhere, in one step.

    Returns the entry written, or None when no entry is written
    (``FEATURE_DEAD_LETTER=false`` or the task's ``dead_letter=False``); the
    job is closed as "dead" either way.
    """
    settings = get_settings()
    request = task.request
    entry = build_entry(task, args, kwargs, exc, reason)
    write = settings.feature_dead_letter and getattr(task, "dead_letter", True)
    properties = getattr(request, "properties", None) or {}
    _bury_script(json.dumps(entry, default=str) if write else "", job_id=request.id, owner=owner_of(task),
                 attempt=request.retries or 0, idempotency_key=getattr(request, "idempotency_key", None),
                 release_key=getattr(task, "release_key_on_dead_letter", True),
                 delivery_tag=properties.get("delivery_tag"), app=task.app)
    log.error("job %s (%s) %s: %s", entry["job_id"], entry["task"],
              "dead-lettered" if write else "failed for good (no dead-letter entry)", entry["failure_reason"])
    return entry if write else None


def bury_entry(entry: dict[str, Any], *, job_id: str | None = None, worker_id: str | None = None,
               delivery_tag: str | None = None, release_key: bool = True, app=None, pipe=None) -> None:
    """Dead-letter a job outside its run (the stuck-job sweep), atomically like :func:`bury`.

    ``entry`` has the contract's fields (redacted and bounded here;
    ``failed_at`` filled in if missing). ``job_id`` (default ``entry["job_id"]``) names the records
    to close; ``worker_id`` limits the ``jobs:active`` removal to that run
    (None removes it whoever owns it); ``delivery_tag`` removes the message
    from kombu's ``unacked``; the idempotency key in ``entry["options"]`` is
    released when ``release_key`` and the job still owns it. ``app`` names
    kombu's keys (default: the app given to ``install()``).
    """
    entry = dict(entry)
    entry.update(args=entry.get("args") or [], kwargs=entry.get("kwargs") or {},
                 traceback=entry.get("traceback") or "", failure_reason=entry.get("failure_reason") or "")
    entry = _bound(entry)
    entry.setdefault("failed_at", utc_iso())
    job_id = job_id or entry.get("job_id")
    if not job_id:
        raise ValueError("bury_entry needs a job id (argument or entry field)")
    options: dict[str, Any] = entry["options"] if isinstance(entry.get("options"), dict) else {}
    write = get_settings().feature_dead_letter
    _bury_script(json.dumps(entry, default=str) if write else "", job_id=job_id, owner=worker_id or "",
                 attempt=int(entry.get("retry_count") or 0), idempotency_key=options.get("idempotency_key"),
                 release_key=release_key, delivery_tag=delivery_tag, app=app, pipe=pipe)


# -- reading -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One stored entry: its position, its raw text, and the parsed fields (None when malformed)."""

    index: int
    raw: str
    data: dict[str, Any] | None
    problem: str | None = None

    @property
    def malformed(self) -> bool:
        return self.data is None

    @property
    def job_id(self) -> str | None:
        return None if self.data is None else str(self.data.get("job_id"))

    def to_json(self) -> dict[str, Any]:
        if self.data is None:
            return {"index": self.index, "malformed": True, "problem": self.problem, "raw": self.raw[:500]}
        return {"index": self.index, **self.data}


def _parse(index: int, raw: str) -> Entry:
    data, problem = decode(raw, ANY)
    if problem is None and not isinstance(data, dict):
        problem = "not a JSON object"
    elif problem is None:
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        problem = f"missing fields: {', '.join(missing)}" if missing else ENTRY.problem(data)
    return Entry(index, raw, None, problem) if problem else Entry(index, raw, data)


@dataclass(frozen=True)
class Filter:
    """Which entries an operation applies to; empty matches every well-formed entry."""

    task: str | None = None
    error_type: str | None = None
    since: float | None = None  # epoch seconds: entries that failed at or after it

    @property
    def empty(self) -> bool:
        return self.task is None and self.error_type is None and self.since is None

    def matches(self, entry: Entry) -> bool:
        if entry.data is None:
            return False
        data = entry.data
        if self.task is not None and data.get("task") != self.task:
            return False
        if self.error_type is not None and data.get("error_type") != self.error_type:
            return False
        if self.since is not None:
            try:
                if parse_time(data["failed_at"]) < self.since:
                    return False
            except (KeyError, TypeError, ValueError):
                return False
        return True


def _filter(task: str | None = None, error_type: str | None = None, since=None) -> Filter:
    return Filter(task=task, error_type=error_type, since=None if since is None else parse_time(since))


def iter_entries(client=None, page: int = PAGE) -> Iterator[Entry]:
    """Every entry, newest first, read in pages (LRANGE)."""
    client = client or get_redis()
    key = keys().dead_letter
    start = 0
    while True:
        chunk = client.lrange(key, start, start + page - 1)
        for offset, raw in enumerate(chunk):
            yield _parse(start + offset, raw)
        if len(chunk) < page:
            return
        start += page


def count() -> int:
    return int(get_redis().llen(keys().dead_letter))


def list_entries(*, task: str | None = None, error_type: str | None = None, since=None, limit: int = 50,
                 offset: int = 0, include_malformed: bool = True) -> list[Entry]:
    """Entries newest first. Unfiltered, this reads only the page asked for."""
    flt = _filter(task, error_type, since)
    if flt.empty:
        raws = get_redis().lrange(keys().dead_letter, offset, offset + limit - 1) if limit > 0 else []
        entries = [_parse(offset + i, str(raw)) for i, raw in enumerate(raws)]
        return [e for e in entries if include_malformed or not e.malformed]
    found: list[Entry] = []
    skipped = 0
    for entry in iter_entries():
        if flt.matches(entry):
            if skipped < offset:
                skipped += 1
                continue
            found.append(entry)
            if len(found) >= limit:
                break
    return found


def get(job_id: str) -> Entry | None:
    """The newest entry of a job, or None."""
    for entry in iter_entries():
        if entry.job_id == job_id:
            return entry
    return None


def _select(ids: list[str] | None, flt: Filter) -> list[Entry]:
    if ids:
        wanted = set(ids)
        chosen, seen = [], set()
        for entry in iter_entries():
            if entry.job_id in wanted and entry.job_id not in seen:
                chosen.append(entry)
                seen.add(entry.job_id)
        return chosen
    return [entry for entry in iter_entries() if flt.matches(entry)]


# -- operating -----------------------------------------------------------------------------
def replay_queues(app, task_name: str) -> set[str]:
    """The queues a replay of ``task_name`` may go to: the app's, and the task's own route."""
    names = set(queue_names(app))
    own = getattr(app.tasks.get(task_name), "queue", None)
    if isinstance(own, str):
        names.add(own)
    try:
        routed = app.amqp.router.route({}, task_name, (), {}).get("queue")
    except Exception:  # noqa: BLE001 - a router function of the app's: its verdict is optional here
        routed = None
    routed = getattr(routed, "name", routed)
    if isinstance(routed, str):
        names.add(routed)
    return names


def replay_queue(data: dict[str, Any], app) -> str:
    """The queue a replay of entry ``data`` goes to; :class:`ReplayRefused` when it may not be replayed."""
    problem = ENTRY.problem(data)
    if problem:
        raise ReplayRefused(str(data.get("job_id")), f"malformed entry ({problem})")
    if arguments_cut(data):
        raise ReplayRefused(str(data["job_id"]), "its arguments were cut when it was dead-lettered")
    queue = (data.get("options") or {}).get("queue") or app.conf.task_default_queue or "celery"
    allowed = replay_queues(app, data["task"])
    if queue not in allowed:
        raise ReplayRefused(str(data["job_id"]), f"queue {queue!r} is not a queue of this app "
                                                 f"({', '.join(sorted(allowed))})")
    return queue


def fresh_envelope(data: dict[str, Any], app=None) -> tuple[str, str]:
    """The queue key and kombu envelope that re-runs a dead-lettered job as a fresh attempt.

    Raises :class:`~resilience.core.errors.ReplayRefused` when the entry may not be
    replayed (see :func:`replay_queue`).
    """
    app = app_or_bound(app)
    queue = replay_queue(data, app)
    options = data.get("options") or {}
    headers = {}
    if options.get("idempotency_key"):
        headers["idempotency_key"] = options["idempotency_key"]

    def send(producer):
        return app.send_task(data["task"], args=list(data.get("args") or []), kwargs=dict(data.get("kwargs") or {}),
                             task_id=data["job_id"], queue=queue, producer=producer, retries=0, retry=False,
                             headers=headers or None)

    return capture_message(app, send)


def arguments_cut(data: dict[str, Any]) -> bool:
    """Whether an entry's ``args`` or ``kwargs`` were cut to their bound when it was written."""
    clipped = data.get("clipped")
    return isinstance(clipped, list) and ("args" in clipped or "kwargs" in clipped)


@dataclass
class Outcome:
    """What an operation did (or, with ``dry_run``, would do).

    ``refused``: entries replay leaves alone (:class:`~resilience.core.errors.ReplayRefused`),
    because their arguments were cut when they were written (running them
    would use the cut arguments) or their queue is not one of the app's;
    ``reasons`` says why, by job id.
    """

    matched: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"matched": self.matched, "done": self.done, "gone": self.gone, "refused": self.refused,
                "reasons": self.reasons, "dry_run": self.dry_run}


def replay_entry(entry: Entry, app=None) -> bool:
    """Re-enqueue one entry's job (same id, retries 0) and remove the entry, atomically.

    Returns False when the entry was already gone (someone else replayed or
    purged it): the job is then not enqueued again.
    """
    if entry.data is None:
        raise ValueError(f"entry {entry.index} is malformed ({entry.problem}); it cannot be replayed")
    app = app_or_bound(app)
    job_id = str(entry.data["job_id"])
    queue_key, envelope = fresh_envelope(entry.data, app)
    k = keys()
    result_key = app.backend.get_key_for_task(job_id) if hasattr(app.backend, "get_key_for_task") \
        else k.job_state(job_id)
    return bool(load_script("deadletter_replay")(
        keys=[k.dead_letter, queue_key, k.job_state(job_id), str(result_key)],
        args=[entry.raw, envelope],
    ))


def replay(ids: list[str] | None = None, *, all: bool = False, task: str | None = None,  # noqa: A002
           error_type: str | None = None, since=None, dry_run: bool = False, app=None) -> Outcome:
    """Replay the entries of ``ids``, or with ``all=True`` every entry matching the filters.

    The job runs again with its stored (redacted) arguments: secrets masked
    in the entry stay masked, so pass secrets to jobs by reference. An entry
    that cannot be replayed (:class:`~resilience.core.errors.ReplayRefused`: its
    arguments were cut when it was written, or its queue is not the app's) is
    left in place and listed in ``refused``; the others go on.
    """
    if not ids and not all:
        raise ValueError("name job ids to replay, or pass all=True")
    outcome = Outcome(dry_run=dry_run)
    for entry in _select(ids, _filter(task, error_type, since)):
        job_id = str(entry.job_id)  # selected entries are well formed
        outcome.matched.append(job_id)
        try:
            if dry_run:
                replay_queue(entry.data or {}, app_or_bound(app))
                continue
            (outcome.done if replay_entry(entry, app) else outcome.gone).append(job_id)
        except ReplayRefused as refused:
            outcome.refused.append(job_id)
            outcome.reasons[job_id] = refused.reason
            log.warning("dead-letter entry of job %s not replayed: %s", job_id, refused.reason)
    return outcome


def purge(ids: list[str] | None = None, *, all: bool = False, task: str | None = None,  # noqa: A002
          error_type: str | None = None, since=None, malformed: bool = False, dry_run: bool = False) -> Outcome:
    """Remove the entries of ``ids``, or with ``all=True`` every entry matching the filters.

    Malformed entries are removed only with ``malformed=True`` (they are
    reported as ``malformed:<index>``).
    """
    if not ids and not all and not malformed:
        raise ValueError("name job ids to purge, or pass all=True (and filters)")
    outcome = Outcome(dry_run=dry_run)
    chosen = _select(ids, _filter(task, error_type, since)) if (ids or all) else []
    if malformed:
        chosen += [e for e in iter_entries() if e.malformed]
    client = get_redis()
    key = keys().dead_letter
    for entry in chosen:
        label = str(entry.job_id) if entry.data is not None else f"malformed:{entry.index}"
        outcome.matched.append(label)
        if dry_run:
            continue
        (outcome.done if client.lrem(key, 1, entry.raw) else outcome.gone).append(label)
    return outcome


_VOLATILE = re.compile(r"0x[0-9a-f]+|[0-9a-f]{8}-[0-9a-f-]{27}|\d+", re.IGNORECASE)


def fingerprint(data: dict[str, Any]) -> str:
    """A stable grouping key: error type and the reason with numbers and ids masked."""
    reason = str(data.get("failure_reason") or "").splitlines()[0] if data.get("failure_reason") else ""
    return f"{data.get('error_type')}: {_VOLATILE.sub('N', reason)[:120]}"


def stats() -> dict[str, Any]:
    """Counts by task and by error fingerprint, plus malformed entries (one pass, paged)."""
    by_task: Counter = Counter()
    by_fingerprint: Counter = Counter()
    by_error_type: Counter = Counter()
    malformed: list[dict[str, Any]] = []
    total = 0
    oldest = newest = None
    for entry in iter_entries():
        total += 1
        if entry.data is None:
            malformed.append({"index": entry.index, "problem": entry.problem})
            continue
        data = entry.data
        by_task[str(data.get("task"))] += 1
        by_error_type[str(data.get("error_type"))] += 1
        by_fingerprint[fingerprint(data)] += 1
        at = data.get("failed_at")
        if isinstance(at, str):
            newest = at if newest is None or at > newest else newest
            oldest = at if oldest is None or at < oldest else oldest
    return {
        "total": total,
        "malformed": len(malformed),
        "malformed_entries": malformed[:100],
        "by_task": dict(by_task.most_common()),
        "by_error_type": dict(by_error_type.most_common()),
        "by_fingerprint": dict(by_fingerprint.most_common()),
        "oldest_failed_at": oldest,
        "newest_failed_at": newest,
    }


def trim(*, now: float | None = None, ttl_days: float | None = None, max_entries: int | None = None,
         batch: int = 1000) -> dict[str, int]:
    """Drop entries older than ``DEAD_LETTER_TTL_DAYS`` and beyond ``DEAD_LETTER_MAX_ENTRIES``.

    Each step is one Lua call (``lua/deadletter_trim.lua``) over at most
    ``batch`` entries from the oldest end; entries whose age cannot be read
    that it walks past are moved to the quarantine (one more round trip).
    """
    settings = get_settings()
    now = time.time() if now is None else now
    ttl_days = settings.dead_letter_ttl_days if ttl_days is None else ttl_days
    max_entries = settings.dead_letter_max_entries if max_entries is None else max_entries
    script = load_script("deadletter_trim")
    key = keys().dead_letter
    expired = capped = 0
    while True:
        try:
            removed, cut, more, *unreadable = script(keys=[key], args=[repr(now - ttl_days * 86400), batch,
                                                                      max_entries])
        except redis.ResponseError as err:
            if "WRONGTYPE" not in str(err):
                raise
            wrong = Batch("dead-letter trim")
            wrong.wrong_type(key, "list", err)
            wrong.flush()
            break
        expired += int(removed)
        capped += int(cut)
        bad = Batch("dead-letter trim")
        for raw in unreadable:
            bad.add(Bad(key, None, raw, _parse(-1, raw).problem or "failed_at is not an ISO 8601 UTC time",
                        "list", raw))
        moved = bad.flush()
        if not (str(more) == "1" and (int(removed) > 0 or moved)):
            break
    if expired or capped:
        log.info("dead-letter queue trimmed: %d expired, %d beyond the cap", expired, capped)
    return {"expired": expired, "capped": capped}
