"""Fast broker reconnects for workers: exponential backoff with jitter, capped low.

Celery's consumer reconnects through kombu's ``Connection.ensure_connection``
with its defaults (``interval_start=2, interval_step=2, interval_max=30``): a
linear 2, 4, 6 ... 30 s schedule, so a worker may resume up to 31 s after
Redis is back. :class:`ResilientConsumer` replaces only that schedule: kombu
is told not to sleep (all intervals 0) and the errback sleeps the delay of
:class:`~resilience.backoff.ExponentialBackoff` (``REDIS_RECONNECT_BASE_SEC``
doubling to ``REDIS_RECONNECT_MAX_SEC``, equal jitter), in slices that check
for a shutdown request. Retries never give up
(``broker_connection_max_retries=None``). Every attempt is recorded in
:mod:`resilience.connection`, which also alerts on a long outage.

Installed through ``worker_consumer`` when ``FEATURE_ENHANCED_REDIS`` is on;
with the flag off Celery's own consumer and schedule are used.
"""

from __future__ import annotations

import logging
import time

from celery.worker.consumer.consumer import Consumer
from celery.worker.state import maybe_shutdown

from resilience import connection
from resilience.backoff import ExponentialBackoff
from resilience.settings import Settings, get_settings

log = logging.getLogger(__name__)

__all__ = ["ResilientConsumer", "reconnect_backoff", "install"]

#: Longest single sleep between shutdown checks while waiting to reconnect.
_SLICE_SEC = 0.1


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


class ResilientConsumer(Consumer):
    """Celery's consumer with a fast, jittered, never-ending reconnect schedule."""

    def ensure_connected(self, conn):
        backoff = reconnect_backoff()
        attempts = 0

        def on_error(exc, _interval):
            nonlocal attempts
            delay = backoff.compute(attempts)
            attempts += 1
            connection.mark_down("broker", exc)
            connection.check_alerts()
            log.warning("cannot reach the broker (%s); attempt %d, retrying in %.2fs", exc, attempts, delay)
            _sleep_checking_shutdown(delay)

        conn = conn.ensure_connection(on_error, self.app.conf.broker_connection_max_retries,
                                      interval_start=0, interval_step=0, interval_max=0,
                                      callback=maybe_shutdown)
        self.first_connection_attempt = False
        self.broker_connection_retry_attempt = 0
        connection.mark_up("broker")
        return conn

    def start(self):
        # The same kombu defect (below) also hits a late ack that reaches the closed
        # channel from the event loop; treat it as the connection loss it is.
        while True:
            try:
                return super().start()
            except AttributeError as err:
                if not _is_restore_unacked_defect(err):
                    raise
                log.warning("kombu used a closed broker connection (%s); reconnecting", err)
                if self.connection:
                    self.on_connection_error_after_connected(err)
                self.on_close()
                self.blueprint.restart(self)

    def on_connection_error_after_connected(self, exc):
        connection.mark_down("broker", exc)
        try:
            return super().on_connection_error_after_connected(exc)
        except AttributeError as err:
            if not _is_restore_unacked_defect(err):
                raise
            # kombu defect (kombu 5.x Redis transport): closing the broken connection
            # closes its channel, whose QoS.restore_unacked() asks for a new Redis
            # client, and Channel._connparams() reads ``self.connection.client``, which
            # the closing Connection has already set to None. The AttributeError is not
            # a connection error, so Celery's ignore_errors() lets it through and the
            # worker exits ("Unrecoverable error"). The messages it could not restore
            # stay in kombu's ``unacked`` hash, where the stuck-job sweep (or the
            # visibility timeout) redelivers them and the execution guard runs each once.
            log.warning("kombu could not restore unacked messages on connection loss (%s); "
                        "they stay in 'unacked' for redelivery", err)
            return None


def _is_restore_unacked_defect(err: AttributeError) -> bool:
    """Whether ``err`` is the kombu defect above: raised inside ``restore_unacked``."""
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in {"restore_unacked", "restore_unacked_once", "_connparams"}:
            return True
        tb = tb.tb_next
    return False


def install(app, settings: Settings) -> None:
    """Use :class:`ResilientConsumer` in this app's workers (flag on only)."""
    if settings.feature_enhanced_redis:
        app.conf.worker_consumer = "resilience.reconnect:ResilientConsumer"
