"""The quarantine: bad records the platform met while reading, kept for an operator.

The platform reads much that it did not just write: registry entries,
worker heartbeats, kombu's ``unacked`` hash, delayed runs, spooled jobs, dead
letters, breaker and error records. Any of them may be malformed (written by
an older version, by hand or by a bug; not JSON, JSON of the wrong types,
random bytes) and one such record must never stop a subsystem. So every
reader decodes through :func:`decode` against a :class:`Shape`, and the
subsystems that act on records (the stuck-job sweep, the hand-over, delayed
run promotion, the spool flush, dead-letter replay and trim, alert
summaries, error tracking) collect what fails in a :class:`Batch`:

* a bad record is skipped, counted, logged once with its key and *moved*
  here: taken out of the key it was read from only while it is unchanged,
  and kept in ``quarantine`` (hash: id -> JSON record) ordered by
  ``quarantine:index`` (sorted set: id -> epoch ms), both written by one Lua
  step (``lua/quarantine_move.lua``) per pass, so a pass still costs a
  fixed number of round trips;
* a whole key of the wrong Redis type (WRONGTYPE) is reported once per
  process (logged, and one quarantine record naming the key) and left as it
  is; the rest of the pass goes on without it.

A quarantine record is ``{id, source, field, raw, raw_length, truncated,
problem, found_by, at}``: the key it came from, the hash field, list index,
sorted-set member or spool row it was, its text (at most
:data:`MAX_RAW_CHARS` characters; ``raw_base64`` instead when it was not
UTF-8), what was wrong with it, which part of the platform found it and when
(ISO 8601 UTC). Its text is redacted like every record the platform keeps
(:mod:`resilience.core.redact`). At most :data:`MAX_ENTRIES` records are kept, the oldest go
first, so the quarantine is bounded in bytes too (about 5 MB).

Views (``resilience status``, ``dlq``, ``breakers``, ``errors``) move
nothing: they show a bad record as malformed, and ``resilience quarantine
list|purge`` shows and deletes what was quarantined.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from resilience.core.keys import keys
from resilience.core.redact import redact_text
from resilience.core.store import get_redis, load_script

__all__ = [
    "MAX_ENTRIES", "MAX_RAW_CHARS", "Kind", "Shape", "Row", "TEXT", "NUMBER", "INTEGER", "ARRAY", "OBJECT",
    "ANY", "NULL", "one_of", "decode", "text_of", "describe", "Bad", "Batch", "Reply", "count", "entries", "purge",
]

log = logging.getLogger(__name__)

#: Most records the quarantine keeps; the oldest are dropped beyond it.
MAX_ENTRIES = 1000
#: Most characters of a bad record's text kept in its quarantine record.
MAX_RAW_CHARS = 4096


# -- shapes: what a record must look like ---------------------------------------------------
def describe(value: Any) -> str:
    """What a decoded JSON value is, for a problem message ("a string", "a list" ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number" if math.isfinite(value) else "a non-finite number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@dataclass(frozen=True)
class Kind:
    """A JSON type a field must have, with its name for messages."""

    name: str
    test: Callable[[Any], bool]

    def problem(self, value: Any) -> str | None:
        return None if self.test(value) else f"expected {self.name}, got {describe(value)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


TEXT = Kind("a string", lambda v: isinstance(v, str))
NUMBER = Kind("a number", _is_number)
INTEGER = Kind("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
#: Lua's cjson writes an empty list back as ``{}``: an empty object is an empty list too.
ARRAY = Kind("a list", lambda v: isinstance(v, list) or v == {})
OBJECT = Kind("an object", lambda v: isinstance(v, dict))
ANY = Kind("any value", lambda v: True)
NULL = Kind("null", lambda v: v is None)


def one_of(*kinds: Kind) -> Kind:
    return Kind(" or ".join(k.name for k in kinds), lambda v: any(k.test(v) for k in kinds))


#: A field's check: a :class:`Kind`, or a nested :class:`Shape` or :class:`Row`.
Check = Any


@dataclass(frozen=True)
class Shape:
    """A JSON object: ``required`` fields present and not null; each listed field, when
    present and not null, of its kind (or shape). Fields not listed are not checked."""

    fields: Mapping[str, Check] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"expected an object, got {describe(value)}"
        missing = [name for name in self.required if value.get(name) is None]
        if missing:
            return f"missing {', '.join(missing)}"
        for name, check in self.fields.items():
            item = value.get(name)
            if item is None:
                continue
            problem = check.problem(item)
            if problem:
                return f"{name}: {problem}"
        return None


@dataclass(frozen=True)
class Row:
    """A JSON list of a fixed length whose items have these kinds (or shapes)."""

    items: tuple[Check, ...]

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, list) or len(value) != len(self.items):
            return f"expected a list of {len(self.items)}, got {describe(value)}" + (
                f" of {len(value)}" if isinstance(value, list) else "")
        for position, (item, check) in enumerate(zip(value, self.items, strict=True)):
            problem = check.problem(item)
            if problem:
                return f"item {position}: {problem}"
        return None


def text_of(raw: Any) -> tuple[str | None, str | None]:
    """``raw`` as text, or a problem: bytes that are not UTF-8, a value that is not text.

    The platform's Redis client decodes with ``surrogateescape``, so bytes that
    are not UTF-8 arrive as lone surrogates and still compare equal on the way back.
    """
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "surrogateescape")
    if not isinstance(raw, str):
        return None, "missing" if raw is None else f"not text ({type(raw).__name__})"
    if not raw.isascii():
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return None, "not UTF-8 text"
    return raw, None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def decode(raw: Any, shape: Shape | Row | Kind) -> tuple[Any, str | None]:
    """``(value, None)`` for a record that is JSON of ``shape``; ``(None, problem)`` otherwise. Never raises."""
    text, problem = text_of(raw)
    if problem or text is None:
        return None, problem or "no text"
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return None, "not JSON"
    problem = shape.problem(value)
    return (None, problem) if problem else (value, None)


# -- bad records and the pass that collects them ------------------------------------------------
@dataclass(frozen=True)
class Bad:
    """One bad record, and how to take it out of where it was read.

    ``how``: ``"hash"`` (field ``member``, removed only while its value is
    still ``raw``), ``"list"`` (one element equal to ``member``), ``"zset"``
    (member ``member``) or ``"keep"`` (left where it is). ``companion`` is a
    sorted set that loses the same member with it (a job's deadline, a
    message's ``unacked_index`` entry).
    """

    source: str
    field: str | None
    raw: Any
    problem: str
    how: str = "keep"
    member: str | None = None
    companion: str | None = None

    @property
    def id(self) -> str:
        text = repr((self.source, self.field, self.raw)).encode("utf-8", "surrogateescape")
        return hashlib.sha1(text, usedforsecurity=False).hexdigest()[:16]

    def record(self, found_by: str, now: float) -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id, "source": self.source, "field": self.field, "problem": self.problem,
                                  "found_by": found_by,
                                  "at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z")}
        raw = self.raw
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "surrogateescape")
        if raw is None:
            record.update(raw=None, raw_length=0, truncated=False)
            return record
        raw = raw if isinstance(raw, str) else repr(raw)
        record.update(raw_length=len(raw), truncated=len(raw) > MAX_RAW_CHARS)
        # A bad record may hold a job's arguments: secrets are masked like in any record we keep.
        kept = redact_text(raw[:MAX_RAW_CHARS], limit=None)
        text, problem = text_of(kept)
        if problem:
            record.update(raw=None, raw_base64=base64.b64encode(kept.encode("utf-8", "surrogateescape")).decode())
        else:
            record["raw"] = text
        return record


class _Once:
    """What this process has already logged (bounded), so a bad record is logged once."""

    def __init__(self, limit: int = 10_000) -> None:
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._limit = limit

    def first(self, token: str) -> bool:
        with self._lock:
            if token in self._seen:
                return False
            self._seen[token] = None
            if len(self._seen) > self._limit:
                self._seen.popitem(last=False)
            return True


_logged = _Once()
_wrong_keys = _Once()


@dataclass(frozen=True)
class Reply:
    """One pipelined read: its key, the type it should have, and what to use when it has another."""

    key: str
    type: str
    default: Any = None


class Batch:
    """The bad records of one pass of a subsystem (``found_by`` names it).

    Readers call :meth:`value` or :meth:`hash_value`, which return the decoded
    record or None, and :meth:`execute` for pipelined reads; then
    :meth:`flush` moves everything bad to the quarantine in one round trip.
    With ``move=False`` (views) nothing is logged or moved: the problems are
    only listed in :attr:`problems`.
    """

    def __init__(self, found_by: str, *, move: bool = True) -> None:
        self.found_by = found_by
        self.move = move
        self.bad: list[Bad] = []
        self.problems: list[str] = []

    def add(self, bad: Bad) -> None:
        where = bad.source if bad.field is None else f"{bad.source} [{bad.field}]"
        self.problems.append(f"{where}: {bad.problem}")
        if not self.move:
            return
        self.bad.append(bad)
        if _logged.first(bad.id):
            log.warning("%s: skipped a bad record in %s: %s (moved to the quarantine)", self.found_by, where,
                        bad.problem)

    def value(self, raw: Any, shape: Shape | Row | Kind, *, source: str, field: str | None = None,
              how: str = "keep", member: str | None = None, companion: str | None = None) -> Any:
        """The decoded record, or None after noting it as bad."""
        value, problem = decode(raw, shape)
        if problem is None:
            return value
        self.add(Bad(source, field, raw, problem, how, member, companion))
        return None

    def hash_value(self, key: str, name: str, raw: Any, shape: Shape | Row | Kind, *,
                   companion: str | None = None) -> Any:
        """A hash field's record; a bad one leaves the hash (and ``companion``) while unchanged."""
        return self.value(raw, shape, source=key, field=name, how="hash", member=name, companion=companion)

    def wrong_type(self, key: str, expected: str, err: BaseException | str) -> None:
        """A whole key of the wrong type: reported once per process, left as it is."""
        problem = f"holds the wrong kind of value (expected a {expected}): {str(err).splitlines()[0][:200]}"
        if not self.move:
            self.problems.append(f"{key}: {problem}")
            return
        bad = Bad(key, None, None, problem)
        if _wrong_keys.first(bad.id):
            self.add(bad)
        else:
            self.problems.append(f"{key}: {problem}")

    def call(self, read: Callable[[], Any], reply: Reply) -> Any:
        """``read()``; a WRONGTYPE it raises is reported for ``reply.key`` and its default returned."""
        try:
            return read()
        except redis.ResponseError as err:
            return self.replies([err], [reply])[0]

    def execute(self, pipe, reads: Sequence[Reply]) -> list[Any]:
        """Run a pipeline of reads, one :class:`Reply` each, through :meth:`replies`."""
        return self.replies(pipe.execute(raise_on_error=False), reads)

    def replies(self, results: Sequence[Any], reads: Sequence[Reply]) -> list[Any]:
        """Pipeline results (``execute(raise_on_error=False)``) with each failed read
        replaced by its default; a WRONGTYPE is reported, any other error raised."""
        out = []
        for result, read in zip(results, reads, strict=True):
            if isinstance(result, Exception):
                if "WRONGTYPE" not in str(result):
                    raise result
                self.wrong_type(read.key, read.type, result)
                result = read.default() if callable(read.default) else read.default
            out.append(result)
        return out

    def flush(self, client=None, *, now: float | None = None, strict: bool = False) -> list[str]:
        """Move the bad records to the quarantine (one Lua call); returns the ids moved.

        Never raises unless ``strict``: a failure is logged and the records
        stay where they were (skipped again by the next pass).
        """
        if not self.bad:
            return []
        bad, self.bad = self.bad, []
        try:
            return _move(client or get_redis(), bad, self.found_by, time.time() if now is None else now)
        except Exception as err:
            if strict:
                raise
            log.warning("%s: %d bad record(s) not moved to the quarantine: %s", self.found_by, len(bad), err)
            return []


def _move(client, bad: Iterable[Bad], found_by: str, now: float) -> list[str]:
    k = keys()
    script_keys = [k.quarantine, k.quarantine_index]

    def index(key: str | None) -> int:
        if key is None:
            return 0
        if key not in script_keys:
            script_keys.append(key)
        return script_keys.index(key) + 1

    argv: list[Any] = [MAX_ENTRIES, int(now * 1000)]
    for item in bad:
        record = item.record(found_by, now)
        argv += [item.how, index(item.source if item.how != "keep" else None), item.member or "",
                 item.raw if item.how == "hash" and isinstance(item.raw, str) else "",
                 index(item.companion), record["id"], json.dumps(record)]
    return list(load_script("quarantine_move", client)(keys=script_keys, args=argv))


# -- the operator's view -------------------------------------------------------------------------
_RECORD = Shape({"id": TEXT, "source": TEXT, "problem": TEXT, "at": TEXT})


def count(client=None) -> int:
    """How many records the quarantine holds."""
    return int((client or get_redis()).hlen(keys().quarantine))


def entries(*, limit: int | None = None, source: str | None = None, client=None) -> list[dict[str, Any]]:
    """Quarantined records, newest first (a malformed one is shown with ``malformed: true``)."""
    k = keys()
    pipe = (client or get_redis()).pipeline(transaction=False)
    pipe.hgetall(k.quarantine)
    pipe.zrange(k.quarantine_index, 0, -1, withscores=True)
    stored, order = pipe.execute()
    rank = {member: score for member, score in order}
    rows = []
    for ident, raw in stored.items():
        record, problem = decode(raw, _RECORD)
        if record is None:
            text, _ = text_of(raw)
            record = {"id": ident, "malformed": True, "problem": problem,
                      "raw": (text if text is not None else repr(raw))[:MAX_RAW_CHARS]}
        record["id"] = ident
        if source is None or record.get("source") == source:
            rows.append((rank.get(ident, 0.0), ident, record))
    rows.sort(key=lambda row: (-row[0], row[1]))
    return [record for _, _, record in (rows[:limit] if limit else rows)]


def purge(ids: Sequence[str] | None = None, *, client=None) -> int:
    """Delete the records of ``ids`` (every record when None); returns how many went."""
    k = keys()
    client = client or get_redis()
    if ids is None:
        pipe = client.pipeline(transaction=True)
        pipe.hlen(k.quarantine)
        pipe.delete(k.quarantine, k.quarantine_index)
        return int(pipe.execute()[0])
    if not ids:
        return 0
    pipe = client.pipeline(transaction=True)
    pipe.hdel(k.quarantine, *ids)
    pipe.zrem(k.quarantine_index, *ids)
    return int(pipe.execute()[0])
