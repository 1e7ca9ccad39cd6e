"""Waiting on conditions with a deadline: tests never sleep to synchronise."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from resilience.outages import spool

__all__ = ["flushing_paused", "hold_outage", "wait_for"]

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05,
             message: str | Callable[[], str] = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` s.

    Exceptions raised by the predicate count as "not yet" (the last one is
    reported on timeout), so a check may talk to a Redis that is coming back.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 - reported below
            last_error = err
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {text}{detail}")
        time.sleep(interval)


def hold_outage(seconds: float) -> None:
    """Keep Redis away for a scenario's stated duration.

    An outage's length is part of the scenario (a 5 s outage, one longer than
    the clients' retries), not synchronisation: tests wait on conditions with
    :func:`wait_for`, and use this only to say how long Redis stays down.
    """
    time.sleep(seconds)


@contextlib.contextmanager
def flushing_paused(timeout: float = 30.0) -> Iterator[None]:
    """Hold the spool's flush lock, so no flusher (a thread of this process, a worker or beat on
    the same data dir) drains the spool while a test looks at what it holds."""
    with contextlib.ExitStack() as stack:
        def take() -> bool:
            lock = spool.flush_locked()
            if lock.__enter__():
                stack.push(lock)
                return True
            lock.__exit__(None, None, None)
            return False

        wait_for(take, timeout, message="the spool's flush lock")
        yield
