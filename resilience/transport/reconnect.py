"""Fast broker reconnects for workers: exponential backoff with jitter, capped low.

Celery's consumer reconnects through kombu's ``Connection.ensure_connection``
with its defaults (``interval_start=2, interval_step=2, interval_max=30``): a
linear 2, 4, 6 ... 30 s schedule, so a worker may resume up to 31 s after
Redis is back. :class:`ResilientConsumer` replaces only that schedule: kombu
is told not to sleep (all intervals 0) and the errback sleeps the delay of
:class:`~resilience.core.backoff.ExponentialBackoff` (``REDIS_RECONNECT_BASE_SEC``
doubling to ``REDIS_RECONNECT_MAX_SEC``, equal jitter), in slices that check
for a shutdown request. Retries never give up
(``broker_connection_max_retries=None``). Every attempt is recorded in
:mod:`resilience.core.connection`, which also alerts on a long outage.

A full Redis (``maxmemory`` reached under ``noeviction``) is an outage too:
once connected, the consumer writes a probe key, and while Redis refuses it
the consumer waits on the same schedule instead of consuming messages it
could not record (see :mod:`resilience.transport.handover`).

Installed through ``worker_consumer`` when ``FEATURE_ENHANCED_REDIS`` is on;
with the flag off Celery's own consumer and schedule are used.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.worker.consumer.consumer import Consumer
from celery.worker.state import maybe_shutdown
from redis.exceptions import OutOfMemoryError, ReadOnlyError

from resilience.core import connection
from resilience.core.backoff import ExponentialBackoff
from resilience.core.keys import keys
from resilience.core.settings import Settings, get_settings
from resilience.transport import handover

log = logging.getLogger(__name__)

__all__ = ["ResilientConsumer", "reconnect_backoff", "use_resilient_consumer"]

#: Longest single sleep between shutdown checks while waiting to reconnect.
_SLICE_SEC = 0.1

#: How often the consumer looks for held messages to put back (a lock and a len() when none).
_HANDOVER_INTERVAL_SEC = 1.0


def reconnect_backoff(settings: Settings | None = None) -> ExponentialBackoff:
    """The reconnect schedule: ``min(max, base * 2**n)`` with equal jitter."""
    settings = settings or get_settings()
    return ExponentialBackoff(base=settings.redis_reconnect_base_sec, cap=settings.redis_reconnect_max_sec)


def _sleep_checking_shutdown(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        maybe_shutdown()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(_SLICE_SEC, left))


def _refused_write(conn) -> BaseException | None:
    """Write a short-lived probe key through ``conn``: the error if Redis refuses writes (full), else None."""
    client = getattr(getattr(conn, "default_channel", None), "client", None)
    if client is None:
        return None
    try:
        client.set(keys().write_probe("consumer"), "1", px=60_000)
    except Exception as err:  # noqa: BLE001 - only "full" holds the consumer back; the rest is kombu's
        if connection.is_redis_full(err):
            return err
    return None


class ResilientConsumer(Consumer):
    """Celery's consumer with a fast, jittered, never-ending reconnect schedule.

    Its broker connection uses the hand-over channel (:mod:`resilience.transport.handover`):
    messages received but not kept in Redis when the connection was lost go
    back on their queues as soon as it is connected again. A full Redis
    counts as a lost connection (Celery would stop the worker on it as an
    "unrecoverable error"): the consumer restarts and waits for writes.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A full Redis, and a primary demoted by a failover (READONLY), are connection losses here.
        self.connection_errors = (*self.connection_errors, OutOfMemoryError, ReadOnlyError)  # type: ignore[has-type]

    def ensure_connected(self, conn):
        backoff = reconnect_backoff()
        attempts = 0
        handover.use_on(conn)

        def on_error(exc, _interval):
            nonlocal attempts
            delay = backoff.compute(attempts)
            attempts += 1
            connection.mark_down("broker", exc)
            connection.check_alerts()
            log.warning("cannot reach the broker (%s); attempt %d, retrying in %.2fs", exc, attempts, delay)
            _sleep_checking_shutdown(delay)

        while True:
            conn = conn.ensure_connection(on_error, self.app.conf.broker_connection_max_retries,
                                          interval_start=0, interval_step=0, interval_max=0,
                                          callback=maybe_shutdown)
            refused = _refused_write(conn)
            if refused is None:
                break
            # Connected, but Redis is full: taking messages now would only pile them up in
            # this process. Wait, on the same schedule, until Redis accepts writes again.
            on_error(refused, 0)
        self.first_connection_attempt = False
        self.broker_connection_retry_attempt = 0
        connection.mark_up("broker")
        self._restore_handover()
        self._watch_handover()
        return conn

    def on_connection_error_after_connected(self, exc):
        connection.mark_down("broker", exc)
        return super().on_connection_error_after_connected(exc)

    def _restore_handover(self) -> None:
        """Put back what a connection loss (or a job that could not start) left with this worker."""
        if not handover.pending() or connection.is_down("broker"):
            return
        try:
            handover.restore_pending(app=self.app)
        except Exception as err:  # noqa: BLE001 - Redis away again: the watch tries later
            log.warning("could not put back %d held message(s) yet: %s", handover.pending(), err)

    def _watch_handover(self) -> None:
        """Look for held messages every ``_HANDOVER_INTERVAL_SEC`` (a reconnect clears the timer)."""
        tref = getattr(self, "_handover_tref", None)
        if tref is not None:
            tref.cancel()
        self._handover_tref = None
        if self.timer is not None:
            self._handover_tref = self.timer.call_repeatedly(_HANDOVER_INTERVAL_SEC, self._restore_handover)


def use_resilient_consumer(app: Any) -> None:
    """Use :class:`ResilientConsumer` in this app's workers."""
    app.conf.worker_consumer = "resilience.transport.reconnect:ResilientConsumer"
