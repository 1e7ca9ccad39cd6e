"""Connection state of this process's Redis clients: up/down, since when, reconnects.

Each Redis connection of a process (``broker``, ``result_backend``, ``store``)
reports what it sees: :func:`mark_down` when an operation fails for a
connection reason, :func:`mark_up` when one succeeds again. Transitions are
logged and counted; :func:`state` is what health checks and metrics read; a
connection down longer than ``ALERT_REDIS_DOWN_SEC`` is handed to alerting
once per outage. The state is per process and in memory: it describes what
this process can reach, which is what its health endpoint must say.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["COMPONENTS", "mark_down", "mark_up", "state", "is_down", "check_alerts", "reset"]

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
    return True


def is_down(component: str) -> bool:
    """Whether ``component`` is currently known to be unreachable."""
    with _lock:
        return not _link(component).up


def state() -> dict[str, dict[str, Any]]:
    """``{"broker": {"up", "since", "reconnects", "disconnects", "last_error"}, ...}`` for health and metrics."""
    with _lock:
        return {name: {"up": link.up, "since": link.since, "reconnects": link.reconnects,
                       "disconnects": link.disconnects, "last_error": link.last_error}
                for name, link in _links.items()}


def check_alerts(*, now: float | None = None) -> list[str]:
    """Alert once per outage for each connection down longer than ``ALERT_REDIS_DOWN_SEC``.

    Called from the loops that notice outages (the consumer's reconnect errback,
    the spool flusher); returns the components alerted now. Never raises.
    """
    from resilience.settings import get_settings

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
        try:
            from resilience.alerts import alert

            alert(rule="redis_unreachable", subject=name, level="critical",
                  title=f"Redis {name} unreachable", component="redis",
                  message=f"the {name} connection has been down for {down_for:.0f}s",
                  context={"connection": name, "down_for_sec": round(down_for, 1), "last_error": error})
        except Exception:  # an observer never breaks what it observes
            log.exception("redis_unreachable alert for %s not sent", name)
    return [name for name, _, _ in due]


def reset() -> None:
    """Forget every transition (tests; a forked child starts with its own view)."""
    with _lock:
        for name in COMPONENTS:
            _links[name] = _Link()
