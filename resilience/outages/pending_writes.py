"""Writes that must land, retried in the background while Redis is away.

A job that finished while Redis was unreachable still has to record its
outcome: without it, its execution record says "running", a redelivery of its
message would wait behind it and the stuck-job sweep would in the end run it
again. Failing the job instead would be worse: its work is done. So the
outcome is queued here and a background thread of this process writes it,
oldest first, retrying with the reconnect backoff
(``REDIS_RECONNECT_BASE_SEC`` .. ``REDIS_RECONNECT_MAX_SEC``) until Redis
answers. The queue is in memory: if the process dies before Redis is back,
the run's record stays "running" and the sweep treats it as a crashed run
(the README's crash-window note).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable

from resilience.core import connection
from resilience.core.backoff import ExponentialBackoff
from resilience.core.settings import get_settings

log = logging.getLogger(__name__)

__all__ = ["defer", "pending", "wait_empty"]

_lock = threading.Condition()
_queue: deque[tuple[str, Callable[[], object]]] = deque()
_thread: threading.Thread | None = None
_pid: int | None = None


def defer(what: str, write: Callable[[], object]) -> None:
    """Run ``write`` later, again and again until it stops failing for a connection reason."""
    global _thread, _pid
    with _lock:
        if _pid != os.getpid():  # a forked child starts with its own, empty queue
            _queue.clear()
            _thread, _pid = None, os.getpid()
        _queue.append((what, write))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="resilience-pending-writes", daemon=True)
            _thread.start()
        _lock.notify_all()
    log.warning("Redis unreachable: %s is kept and written when it is back (%d waiting)", what, len(_queue))


def pending() -> int:
    with _lock:
        return len(_queue)


def wait_empty(timeout: float) -> bool:
    """Wait until every deferred write landed (worker shutdown, tests); True if it did."""
    with _lock:
        return _lock.wait_for(lambda: not _queue, timeout)


def _run() -> None:
    settings = get_settings()
    backoff = ExponentialBackoff(base=settings.redis_reconnect_base_sec, cap=settings.redis_reconnect_max_sec)
    attempt = 0
    while True:
        with _lock:
            if not _queue:
                return
            what, write = _queue[0]
        try:
            write()
        except Exception as err:  # noqa: BLE001 - classified below
            if connection.is_outage(err):
                delay = backoff.compute(attempt)
                attempt += 1
                with _lock:
                    _lock.wait(delay)
                continue
            log.exception("%s could not be written; dropped", what)
        else:
            if attempt:
                log.warning("%s written after Redis came back", what)
            attempt = 0
        with _lock:
            _queue.popleft()
            _lock.notify_all()
