"""Idempotency keys: a duplicate submission returns the original job.

A submission with a key (given as ``idempotency_key=...``, or derived for a
task declared ``idempotent=True``) claims ``idempotency:<key>`` and learns the
current owner in one atomic round trip (``lua/idempotency_claim.lua``). The
owner's id comes back as an ``AsyncResult`` and nothing is enqueued. If the
publish fails, the claim is released with compare-and-delete so the caller can
try again, and the error propagates.

An explicit key must not be blank (an empty key would be one key shared by
every caller that passes an empty value) and is at most :data:`MAX_KEY_BYTES`
(256) bytes in UTF-8; otherwise :class:`~resilience.core.errors.InvalidIdempotencyKey`
is raised before anything is claimed or enqueued (:func:`check_key`). A longer
key is refused rather than hashed, so the key a caller passes is the key stored
in ``idempotency:<key>``, message headers and dead letters: hash it yourself if
your natural key is long.

Derived keys are ``<task name>:<sha256 of the canonical JSON>`` of
``[task name, args, kwargs]`` with the arguments named by the task's signature
(:func:`named_arguments`); see :func:`canonical_json`
for what counts as "the same arguments".
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

from kombu.utils import json as kombu_json

from resilience.core import connection
from resilience.core.bounded import call_bounded
from resilience.core.errors import InvalidIdempotencyKey
from resilience.core.keys import keys
from resilience.core.settings import get_settings
from resilience.core.store import get_redis, load_script

__all__ = ["MAX_KEY_BYTES", "canonical_json", "check_key", "derived_key", "named_arguments", "key_for", "submit_once",
           "claim", "owner", "release", "count", "counters"]

log = logging.getLogger(__name__)

#: Longest explicit idempotency key, in bytes of UTF-8.
MAX_KEY_BYTES = 256

#: Counters in ``stats:idempotency``: duplicate submissions absorbed, and
#: deliveries the execution guard acknowledged without a run (by reason) or deferred.
COUNTERS = ("absorbed_submissions", "skipped_done", "skipped_dead", "skipped_stale", "skipped_duplicate",
            "deferred_busy")


def canonical_json(value: Any) -> str:
    """JSON that is the same for the same arguments, in any process or Python version.

    What counts as the same is what the worker receives, as kombu's JSON
    delivers it: mapping keys are sorted, so kwarg order does not matter, and
    non-string keys become strings as JSON makes them (``{1: "a"}`` equals
    ``{"1": "a"}``); tuples and lists are the same; numbers are JSON numbers,
    so ``1`` and ``1.0`` differ, and so do ``1`` and ``True``; floats are
    written with Python's shortest round-trip repr; text is escaped to ASCII
    (``\\u00e9``), so the bytes do not depend on the locale, but Unicode is
    not normalised (NFC and NFD spellings differ); NaN and infinities are
    rejected. The types kombu's JSON carries are written as kombu writes them,
    ``{"__type__": T, "__value__": V}``: ``bytes`` as its UTF-8 text (T
    ``bytes``) or, when it is not UTF-8, base64 (T ``base64``); ``datetime``,
    ``date`` and ``time`` as ``isoformat()`` (so a naive and an aware time
    differ, and so do two offsets for one instant); ``Decimal`` as ``str()``
    (``Decimal("1.0")`` and ``Decimal("1.00")`` differ, as they do delivered);
    ``UUID`` as ``{"hex": ...}``.
    """
    dump: dict[str, Any] = dict(cls=kombu_json.JSONEncoder, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                allow_nan=False)
    try:
        return json.dumps(value, **dump)
    except TypeError:
        # mixed key types (``{1: .., "a": ..}``) cannot be sorted: normalise them as JSON does first
        plain = json.loads(json.dumps(value, cls=kombu_json.JSONEncoder, allow_nan=False))
        return json.dumps(plain, **dump)


def count(counter: str) -> None:
    """Add one to a counter; only duplicates pay for it, and it never breaks a submission or a job."""
    try:
        get_redis().hincrby(keys().stats("idempotency"), counter, 1)
    except Exception:
        log.warning("could not count %s", counter, exc_info=True)


def counters() -> dict[str, int]:
    """The ``stats:idempotency`` counters (zeros when Redis cannot say)."""
    try:
        raw = get_redis().hgetall(keys().stats("idempotency"))
    except Exception:
        log.warning("could not read the idempotency counters", exc_info=True)
        raw = {}
    return {name: int(raw.get(name) or 0) for name in COUNTERS}


def derived_key(task_name: str, args, kwargs) -> str:
    """A key from the task name and the canonical JSON of its arguments.

    Stable across processes, hosts and Python versions: it hashes bytes of
    canonical JSON, never ``hash()`` or ``repr()``.
    """
    payload = canonical_json([task_name, list(args or ()), dict(kwargs or {})])
    digest = hashlib.sha256(payload.encode("ascii"))
    return f"{task_name}:{digest.hexdigest()[:32]}"


def named_arguments(task, args, kwargs) -> tuple[list, dict]:
    """The call's arguments by parameter name, defaults filled in, when the signature allows it.

    So ``charge("o-1", 5)`` and ``charge(amount_cents=5, order_id="o-1")`` are
    the same request. A function taking ``*args``, or a call that does not fit
    its signature, keeps the arguments as given.
    """
    args, kwargs = list(args or ()), dict(kwargs or {})
    try:
        signature = inspect.signature(task.run)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args, kwargs
    named: dict = {}
    bound.apply_defaults()
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            return args, kwargs
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return [], named


def check_key(key: str) -> str:
    """``key`` if it is a usable explicit key, else :class:`InvalidIdempotencyKey` saying why."""
    if not key.strip():
        raise InvalidIdempotencyKey(f"idempotency key {key!r} is blank: pass a key that names the request, "
                                    "or None for no key")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise InvalidIdempotencyKey(f"idempotency key is {size} bytes, over the limit of {MAX_KEY_BYTES} bytes "
                                    "(UTF-8): hash a long natural key first")
    return key


def key_for(task, args, kwargs, explicit: str | None) -> str | None:
    """The key of a submission: call (``idempotency_key``) > task (``idempotent=True``) > none.

    An explicit key is checked by :func:`check_key`.
    """
    if explicit is not None:
        return check_key(str(explicit))
    if getattr(task, "idempotent", False):
        return derived_key(task.name, *named_arguments(task, args, kwargs))
    return None


def claim(key: str, job_id: str, *, ttl: int | None = None) -> str | None:
    """Claim ``key`` for ``job_id``; ``None`` if claimed, else the id of the job that owns it."""
    ttl = get_settings().idempotency_ttl_sec if ttl is None else ttl
    return load_script("idempotency_claim")(keys=[keys().idempotency(key)], args=[job_id, int(ttl)])


def owner(key: str) -> str | None:
    """The id of the job that owns ``key`` (None when it is free or expired)."""
    owner_id = get_redis().get(keys().idempotency(key))
    return None if owner_id is None else str(owner_id)


def submit_once(task, key: str, job_id: str, send: Callable[..., Any]):
    """Publish with ``send(job_id, key)`` unless ``key`` is owned; then the owner's ``AsyncResult``.

    While Redis is unreachable the key cannot be claimed: the claim waits at
    most ``PUBLISH_TIMEOUT_SEC`` and the job goes on to ``send`` with the
    outage, which spools it (or raises ``BrokerUnavailable``). The spool
    claims the key before it publishes the job, and drops the job if another
    job owns the key by then.
    """
    try:
        existing = call_bounded(lambda: claim(key, job_id))
    except Exception as err:
        if not connection.is_outage(err):
            raise
        connection.mark_down("store", err)
        return send(job_id, key, unreachable=err)
    if existing is not None:
        log.debug("duplicate submission of %s absorbed by job %s (key %s)", task.name, existing, key)
        count("absorbed_submissions")
        return task.AsyncResult(existing)
    try:
        return send(job_id, key)
    except BaseException:
        try:
            release(key, job_id)
        except Exception:  # the publish error is the one the caller must see
            log.exception("could not release idempotency key %s after a failed publish", key)
        raise


def release(key: str, job_id: str, pipe=None) -> None:
    """Release ``key`` if ``job_id`` still owns it (so the request can be submitted again).

    Compare-and-delete in Lua; with ``pipe`` it is queued on that pipeline
    (so it commits with the caller's other changes).
    """
    load_script("idempotency_release")(keys=[keys().idempotency(key)], args=[job_id], client=pipe)
