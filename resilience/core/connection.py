"""Connection state of this process's Redis clients: up/down, since when, reconnects.

Each Redis connection of a process (``broker``, ``result_backend``, ``store``)
reports what it sees: :func:`mark_down` when an operation fails for a
connection reason, :func:`mark_up` when one succeeds again. Transitions are
logged and told to the observers (:class:`ConnectionObserver`: metrics
counts them, alerting alerts on a connection down longer than
``ALERT_REDIS_DOWN_SEC``, once per outage); :func:`state` is what health
checks and metrics read. The state is per process and in memory: it describes
what this process can reach, which is what its health endpoint must say.
This module imports no feature: observers are added by the features that want
to know (:mod:`resilience.platform.features`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from redis.retry import Retry

from resilience.core.observe import guarded
from resilience.core.settings import get_settings

log = logging.getLogger(__name__)

__all__ = ["COMPONENTS", "mark_down", "mark_up", "state", "is_down", "is_outage", "is_redis_full", "check_alerts",
           "reset", "health_check", "TrackedRetry", "ConnectionObserver", "add_observer"]

#: What Redis answers a write it refuses at ``maxmemory`` under ``noeviction``
#: (alone, inside a transaction, or wrapped by kombu and Celery).
_FULL_MESSAGE = "command not allowed when used memory"

#: The Redis connections a process may hold.
COMPONENTS = ("broker", "result_backend", "store")


@dataclass
class _Link:
    up: bool = True
    since: float = field(default_factory=time.time)
    reconnects: int = 0
    disconnects: int = 0
    last_error: str | None = None
    alerted: bool = False


_lock = threading.Lock()
_links: dict[str, _Link] = {name: _Link() for name in COMPONENTS}


class ConnectionObserver:
    """Told about the transitions of this process's connections. Every hook is a no-op by default;
    a hook's error is logged, never raised (:mod:`resilience.core.observe`)."""

    def on_down(self, component: str, error: str | None) -> None:
        """``component`` was found lost."""

    def on_up(self, component: str, down_for_sec: float) -> None:
        """``component`` works again after ``down_for_sec``."""

    def on_unreachable(self, component: str, down_for_sec: float, last_error: str | None) -> None:
        """``component`` has been down longer than ``ALERT_REDIS_DOWN_SEC`` (once per outage)."""


_observers: list[Any] = []


def add_observer(observer: Any) -> None:
    """Tell ``observer`` (a :class:`ConnectionObserver`, or any object with its hooks) about transitions.
    Adding an observer of a class already added replaces nothing and adds nothing: once per class."""
    with _lock:
        if not any(type(known) is type(observer) for known in _observers):
            _observers.append(observer)


def _tell(hook: str, *args: Any) -> None:
    with _lock:
        observers = list(_observers)
    for observer in observers:
        with guarded(f"connection observer {type(observer).__name__}.{hook}"):
            getattr(observer, hook)(*args)


def _link(component: str) -> _Link:
    if component not in _links:
        raise KeyError(f"unknown connection {component!r}; known: {', '.join(COMPONENTS)}")
    return _links[component]


def mark_down(component: str, error: BaseException | str | None = None, *, now: float | None = None) -> bool:
    """Record that ``component`` failed for a connection reason; True on an up->down transition."""
    now = time.time() if now is None else now
    with _lock:
        link = _link(component)
        link.last_error = None if error is None else f"{type(error).__name__}: {error}" \
            if isinstance(error, BaseException) else str(error)
        if not link.up:
            return False
        link.up, link.since, link.alerted = False, now, False
        link.disconnects += 1
    log.warning("redis %s connection lost: %s", component, link.last_error)
    _tell("on_down", component, link.last_error)
    return True


def mark_up(component: str, *, now: float | None = None) -> bool:
    """Record that ``component`` works again; True on a down->up transition."""
    now = time.time() if now is None else now
    with _lock:
        link = _link(component)
        if link.up:
            return False
        down_for = now - link.since
        link.up, link.since = True, now
        link.reconnects += 1
        link.last_error = None
    log.warning("redis %s connection restored after %.1fs", component, down_for)
    _tell("on_up", component, down_for)
    return True


def is_down(component: str) -> bool:
    """Whether ``component`` is currently known to be unreachable."""
    with _lock:
        return not _link(component).up


def health_check() -> dict[str, Any]:
    """The ``connections`` entry of ``/health``: this process's view of each Redis connection."""
    links = state()
    down = sorted(name for name, link in links.items() if not link["up"])
    result: dict[str, Any] = {"ok": not down, **links}
    if down:
        result["error"] = f"down: {', '.join(down)}"
    return result


def _chain(err: BaseException | None):
    """``err`` and the errors it was raised from (causes and contexts, at most 10)."""
    seen = 0
    while err is not None and seen < 10:
        yield err
        err = err.__cause__ or err.__context__
        seen += 1


def is_redis_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or an error it was raised from) is Redis refusing a write at ``maxmemory``.

    Under ``noeviction`` (what a queue needs) Redis answers writes with an OOM
    error while reads, deletes and pops still work: the platform treats that as
    an outage of writes, which ends when memory is freed.
    """
    from redis.exceptions import OutOfMemoryError

    return any(isinstance(e, OutOfMemoryError) or _FULL_MESSAGE in str(e) for e in _chain(err))


def is_outage(err: BaseException | None) -> bool:
    """Whether ``err`` (or an error it was raised from) is a connection failure or a full Redis,
    not a caller's mistake.

    A ``READONLY`` reply (a primary demoted by a Sentinel failover) and
    :class:`~resilience.core.errors.ReplicasBehind` count as outages too.

    Celery's Redis result backend turns a lost connection into a bare
    RuntimeError ("Retry limit exceeded while trying to reconnect to the Celery
    result store"), so causes and contexts are followed too.
    """
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ReadOnlyError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from resilience.core.errors import ReplicasBehind

    # READONLY: a primary demoted to replica by a failover; the client must find the new one.
    # ReplicasBehind: the primary took the write but too few replicas confirmed it.
    outage_types = (OperationalError, RedisConnectionError, RedisTimeoutError, ReadOnlyError, ReplicasBehind,
                    ConnectionError, TimeoutError, OSError)
    return any(isinstance(e, outage_types) for e in _chain(err)) or is_redis_full(err)


def state() -> dict[str, dict[str, Any]]:
    """``{"broker": {"up", "since", "reconnects", "disconnects", "last_error"}, ...}`` for health and metrics."""
    with _lock:
        return {name: {"up": link.up, "since": link.since, "reconnects": link.reconnects,
                       "disconnects": link.disconnects, "last_error": link.last_error}
                for name, link in _links.items()}


class TrackedRetry(Retry):
    """redis-py's retry policy that also reports the connection's state.

    Every command and pipeline of a redis-py client goes through its
    connection's ``Retry.call_with_retry``: a command that fails after its
    retries marks ``component`` down, the next one that succeeds marks it up.
    The success path costs one attribute read.
    """

    def __init__(self, component: str, backoff, retries: int, supported_errors=None) -> None:
        _link(component)  # unknown names fail here, at client creation
        if supported_errors is None:
            super().__init__(backoff, retries)
        else:
            super().__init__(backoff, retries, supported_errors=supported_errors)
        self.component = component

    def call_with_retry(self, do, fail, *args, **kwargs):
        try:
            result = super().call_with_retry(do, fail, *args, **kwargs)
        except self._supported_errors as err:
            mark_down(self.component, err)
            raise
        if not _links[self.component].up:
            mark_up(self.component)
        return result


def check_alerts(*, now: float | None = None) -> list[str]:
    """Alert once per outage for each connection down longer than ``ALERT_REDIS_DOWN_SEC``.

    Called from the loops that notice outages (the consumer's reconnect errback,
    the spool flusher); tells the observers (``on_unreachable``); returns the
    components alerted now. Never raises.
    """
    now = time.time() if now is None else now
    threshold = get_settings().alert_redis_down_sec
    due = []
    with _lock:
        for name, link in _links.items():
            if not link.up and not link.alerted and now - link.since >= threshold:
                link.alerted = True
                due.append((name, now - link.since, link.last_error))
    for name, down_for, error in due:
        log.error("redis %s connection unreachable for %.0fs (last error: %s); alerting", name, down_for, error)
        _tell("on_unreachable", name, down_for, error)
    return [name for name, _, _ in due]


def reset() -> None:
    """Forget every transition (tests; a forked child starts with its own view)."""
    with _lock:
        for name in COMPONENTS:
            _links[name] = _Link()
