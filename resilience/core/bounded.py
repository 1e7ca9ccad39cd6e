"""Calls bounded by a deadline: the guarded publish's deadline and the helper threads that enforce it.

A guarded publish (:func:`resilience.outages.outage.publish_guarded`) sets this
thread's deadline (:func:`bounded_producer`); every network step of that
publish (the broker write, the delayed run's script, the idempotency claim)
goes through :func:`within_deadline` or :class:`BoundedProducer`, which run it
on a helper thread for at most the time left, so even a frozen Redis cannot
hold the caller longer than ``PUBLISH_TIMEOUT_SEC``. Outside a guarded publish
they run the call as it is. :func:`call_bounded` bounds one call by
``PUBLISH_TIMEOUT_SEC`` (with ``FEATURE_ENHANCED_REDIS`` on).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from resilience.core.settings import get_settings

__all__ = ["BoundedProducer", "bounded_producer", "call_bounded", "publish_bounded", "within_deadline"]

_executor_lock = threading.Lock()
_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _publisher() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="resilience-publish")
        return _executor


def publish_bounded(publish: Callable[[], Any], timeout: float) -> Any:
    """Run ``publish`` and wait at most ``timeout`` seconds; raise TimeoutError beyond."""
    future = _publisher().submit(publish)
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"publish did not complete within {timeout}s") from None


#: The monotonic time by which this thread's guarded publish must be done (unset outside one).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("resilience_publish_deadline",
                                                                        default=None)


def _remaining() -> float | None:
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def within_deadline(call: Callable[[], Any]) -> Any:
    """``call()``, bounded by the current guarded publish's deadline when there is one.

    The network step of a publish (the broker write, the delayed run's script)
    goes through here: inside :func:`publish_guarded` it runs on a helper
    thread for at most the time left, anywhere else it runs as it is.
    """
    remaining = _remaining()
    if remaining is None:
        return call()
    return publish_bounded(call, remaining)


class BoundedProducer:
    """A kombu producer whose ``publish`` is bounded by the guarded publish's deadline.

    Everything else (building the message, signals, the caller's context)
    stays on the caller's thread; only the write to the broker, with kombu's
    own publish retries, runs on a helper thread. A publish that outlives the
    deadline is left to finish there (:attr:`abandoned`).
    """

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.abandoned: concurrent.futures.Future | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def __bool__(self) -> bool:
        return True

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        remaining = _remaining()
        if remaining is None:
            return self._producer.publish(*args, **kwargs)
        future = _publisher().submit(self._producer.publish, *args, **kwargs)
        try:
            return future.result(timeout=remaining)
        except concurrent.futures.TimeoutError:
            self.abandoned = future
            raise TimeoutError("publish did not complete within PUBLISH_TIMEOUT_SEC") from None


@contextlib.contextmanager
def bounded_producer(app: Any, producer: Any, timeout: float) -> Iterator[BoundedProducer]:
    """This thread's publish deadline, and a bounded producer (the caller's, or one from the app's pool)."""
    token = _deadline.set(time.monotonic() + timeout)
    pooled = None
    bounded = None
    try:
        if producer is None:
            try:
                pooled = app.producer_pool.acquire(block=True, timeout=timeout)
            except app.producer_pool.LimitExceeded:
                raise TimeoutError(f"no broker connection free within {timeout}s") from None
            producer = pooled
        bounded = BoundedProducer(producer)
        yield bounded
    finally:
        _deadline.reset(token)
        if pooled is not None:
            if bounded is not None and bounded.abandoned is not None:
                # Still publishing on its helper thread: back to the pool once that is over.
                bounded.abandoned.add_done_callback(lambda _: pooled.release())
            else:
                pooled.release()


def call_bounded(call: Callable[[], Any]) -> Any:
    """``call()`` waited for at most ``PUBLISH_TIMEOUT_SEC`` (with ``FEATURE_ENHANCED_REDIS`` on)."""
    settings = get_settings()
    if not settings.feature_enhanced_redis:
        return call()
    return publish_bounded(call, settings.publish_timeout_sec)
