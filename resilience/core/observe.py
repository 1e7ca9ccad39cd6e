"""The one guard for "an observer never breaks what it observes".

Tracking, alerts, metrics, breaker listeners and connection observers watch
jobs and connections; their own failures (Redis away, a bug, a full queue)
must never reach the job, the call or the loop they watch. Each runs its I/O
through :func:`guarded` (a context manager), :func:`call_guarded` (a call) or
:func:`never_raises` (a decorator): an ``Exception`` is logged and swallowed,
the caller gets ``default``. ``BaseException`` (``KeyboardInterrupt``,
``SystemExit``, a worker's shutdown) is never swallowed.

Logging follows the streak, not every failure: the first failure of a named
observer is logged at WARNING with its traceback, repeats at DEBUG until it
works again, which is logged once at INFO. A background loop that fails every
second therefore writes one warning, not thousands.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

__all__ = ["call_guarded", "guarded", "never_raises"]

log = logging.getLogger("resilience.core.observe")

P = ParamSpec("P")
T = TypeVar("T")

_failing: set[str] = set()
_lock = threading.Lock()


def _failed(what: str, exc: BaseException, logger: logging.Logger) -> None:
    with _lock:
        repeat = what in _failing
        _failing.add(what)
    if repeat:
        logger.debug("%s failed again: %s", what, exc)
    else:
        logger.warning("%s failed (it does not affect what it observes): %s", what, exc, exc_info=True)


def _worked(what: str, logger: logging.Logger) -> None:
    if what not in _failing:  # the common case: no lock
        return
    with _lock:
        recovered = what in _failing
        _failing.discard(what)
    if recovered:
        logger.info("%s works again", what)


@contextmanager
def guarded(what: str, *, logger: logging.Logger | None = None) -> Iterator[None]:
    """Run the block; an ``Exception`` in it is logged under ``what`` and not raised."""
    logger = logger or log
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the point of the guard
        _failed(what, exc, logger)
    else:
        _worked(what, logger)


def call_guarded(what: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T | None:
    """``fn(*args, **kwargs)``, or None when it raised (logged under ``what``)."""
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the point of the guard
        _failed(what, exc, log)
        return None
    _worked(what, log)
    return result


def never_raises(what: str | None = None) -> Callable[[Callable[P, T]], Callable[P, T | None]]:
    """Decorator: the function's ``Exception`` is logged (under ``what``, default its qualified
    name) and it returns None instead."""

    def decorate(fn: Callable[P, T]) -> Callable[P, T | None]:
        name = what or f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | None:
            return call_guarded(name, fn, *args, **kwargs)

        return wrapper

    return decorate
