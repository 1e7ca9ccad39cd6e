"""Celery's Redis result backend, with its connection state reported.

The backend's client is built by Celery from the ``result_backend`` URL; this
subclass only hands its connections a :class:`~resilience.core.connection.TrackedRetry`
with redis-py's default policy for a client without one (no retry: Celery's
result store and result consumer do their own reconnecting),
so the process's ``result_backend`` connection turns down when a command
fails for a connection reason and up when one succeeds, like ``broker`` and
``store``. Celery's own retry policy for storing results is unchanged.

:func:`install` selects it through Celery's ``<backend class>+<url>`` form
(``app.backend_cls``) for ``redis://`` and ``rediss://`` result backends when
``FEATURE_ENHANCED_REDIS`` is on; the URL and every other setting stay as
configured. A producer's subscription to a job's result is bounded like the
publish itself (``PUBLISH_TIMEOUT_SEC``).
"""

from __future__ import annotations

from celery.backends.redis import RedisBackend
from redis.backoff import NoBackoff

from resilience.core.connection import TrackedRetry
from resilience.core.settings import Settings

__all__ = ["TrackedRedisBackend", "install"]


class TrackedRedisBackend(RedisBackend):
    def _create_client(self, **params):
        params.setdefault("retry", TrackedRetry("result_backend", NoBackoff(), 0))
        return super()._create_client(**params)

    def on_task_call(self, producer, task_id):
        """Subscribe to the job's result as Celery does, within the guarded publish's deadline.

        The subscription may connect (or health-check) the result consumer's
        connection, which a frozen Redis would hold for the socket timeout;
        the consumer takes its own lock, so the step may run on the bounded
        publish's helper thread (:func:`resilience.outages.outage.within_deadline`).
        """
        from resilience.outages.outage import within_deadline

        within_deadline(lambda: super(TrackedRedisBackend, self).on_task_call(producer, task_id))


def install(app, settings: Settings) -> None:
    if not settings.feature_enhanced_redis or app.backend_cls:
        return
    url = app.conf.result_backend
    if isinstance(url, str) and url.split("://", 1)[0] in {"redis", "rediss"}:
        app.backend_cls = f"{__name__}:{TrackedRedisBackend.__name__}+{url}"
