"""Celery's Redis result backend, with its connection state reported and its hot path folded.

The backend's client is built by Celery from the ``result_backend`` URL; this
subclass changes three things and keeps every other behaviour of Celery's:

* **Connection state** (``FEATURE_ENHANCED_REDIS``): its connections get a
  :class:`~resilience.core.connection.TrackedRetry` with redis-py's default policy
  for a client without one (no retry: Celery's result store and result
  consumer do their own reconnecting), so the process's ``result_backend``
  connection turns down when a command fails for a connection reason and up
  when one succeeds, like ``broker`` and ``store``. Celery's own retry policy
  for storing results is unchanged.
* **State writes folded into the execution guard's scripts** (the guard or
  the stuck-job registry on): a job's STARTED state is written by
  ``lua/job_start.lua`` in the step that claims the run, and its SUCCESS
  result (with the PUBLISH that wakes waiting callers) by ``lua/job_finish.lua``
  in the step that records it done. Celery would spend two round trips on
  each (a GET to check the stored state, then SET and PUBLISH). The meta is
  encoded here exactly as Celery encodes it, and the scripts keep Celery's
  rule of never overwriting a SUCCESS. Folding happens only when it is safe:
  JSON results, a result backend on the same Redis server and database as
  the platform's store, and for SUCCESS a job with no ``link`` callbacks or
  chain (Celery publishes those before it stores the result, so that
  ``result.children`` lists them). Anything else is stored by Celery as before.
* **No result subscription per submit**: Celery subscribes to a job's result
  channel on every ``apply_async()`` (and unsubscribes when the
  ``AsyncResult`` is dropped), two round trips for each job whose result
  nobody waits for. Here the subscription is made when a caller first waits
  (``AsyncResult.get()``, ``then()``, a ``ResultSet``): Celery subscribes
  before it reads the stored state, so a result stored in between is not missed.

:func:`install` selects it through Celery's ``<backend class>+<url>`` form
(``app.backend_cls``) for ``redis://``, ``rediss://`` and ``sentinel://`` result backends when
``FEATURE_ENHANCED_REDIS``, ``FEATURE_IDEMPOTENCY`` or ``FEATURE_STUCK_JOBS``
is on; the URL and every other setting stay as configured.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.utils.encoding import bytes_to_str
from redis.backoff import NoBackoff

from resilience.core.connection import TrackedRetry
from resilience.core.settings import Settings, get_settings

__all__ = ["TrackedRedisBackend", "TrackedSentinelBackend", "install", "folded_state_write"]

#: Set on a job's request by the backend: the STARTED result the start script stores.
STARTED_ATTR = "resilience_started"
#: Set on a job's request once a script stored this state: Celery's own write is skipped.
STORED_ATTR = "resilience_stored"

#: Connection options that name one Redis server and database.
_SERVER_OPTIONS = ("host", "port", "path", "db")


if TYPE_CHECKING:
    from celery.backends.redis import RedisBackend as _BackendBase
else:
    _BackendBase = object


class _Tracked(_BackendBase):
    """What the platform changes in Celery's Redis and Sentinel result backends."""

    def _create_client(self, **params):
        if get_settings().feature_enhanced_redis:
            params.setdefault("retry", TrackedRetry("result_backend", NoBackoff(), 0))
        return super()._create_client(**params)

    def on_task_call(self, producer, task_id):
        """No subscription at submit: the first wait subscribes (see the module docstring)."""

    def store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
        if request is not None:
            if state == states.STARTED and self.folds(request):
                setattr(request, STARTED_ATTR, result)  # the start script stores it with the claim
                return result
            if getattr(request, STORED_ATTR, None) == state:
                return result  # the finish script stored it with the outcome
        return super().store_result(task_id, result, state, traceback=traceback, request=request, **kwargs)

    def folds(self, request) -> bool:
        """Whether the execution guard's scripts store this job's states."""
        if getattr(request, "resilience_worker", None) is None or self.serializer != "json":
            return False  # not a ResilientTask delivery, or a meta the scripts cannot read
        settings = get_settings()
        if not (settings.feature_idempotency or settings.feature_stuck_jobs):
            return False
        from resilience.core.store import get_redis

        return _server_of(self.client.connection_pool) == _server_of(get_redis().connection_pool)

    def state_write(self, task_id, result, state, request) -> tuple[bytes, str, int] | None:
        """The key, encoded meta and expiry (s; 0 for none) Celery would write, or None.

        None when the meta cannot be encoded or is too large: Celery then
        stores it itself and raises as it would.
        """
        try:
            meta = self._get_result_meta(result=self.encode_result(result, state), state=state,
                                         traceback=None, request=request)
            meta["task_id"] = bytes_to_str(task_id)
            value = self.encode(meta)
        except Exception:
            return None
        if len(value) > self._MAX_STR_VALUE_SIZE:
            return None
        expires = self.expires
        expires = expires.total_seconds() if hasattr(expires, "total_seconds") else expires
        return self.get_key_for_task(task_id), value, math.ceil(expires) if expires else 0


class TrackedRedisBackend(_Tracked, RedisBackend):
    """Celery's Redis result backend, with the platform's changes."""


class TrackedSentinelBackend(_Tracked, SentinelBackend):
    """Celery's Sentinel result backend (``sentinel://...;sentinel://...``), with the platform's changes."""


def _server_of(pool) -> tuple:
    """The Redis server and database a connection pool reaches: its address, or its Sentinel service."""
    kwargs = pool.connection_kwargs
    service = getattr(pool, "service_name", None)
    if service is not None:
        return ("sentinel", service, kwargs.get("db"))
    return tuple(kwargs.get(option) for option in _SERVER_OPTIONS)


def folded_state_write(task, state: str, result) -> tuple[bytes, str, int] | None:
    """What a script should store as the job's ``state``, or None if Celery stores it.

    For STARTED, Celery's tracer has already handed the result to the backend
    (``task_track_started``); for SUCCESS, ``result`` is the job's return value.
    """
    request = task.request
    backend = task.backend
    if not isinstance(backend, _Tracked):
        return None
    if state == states.STARTED:
        if not hasattr(request, STARTED_ATTR):
            return None
        result = getattr(request, STARTED_ATTR)
        write = backend.state_write(request.id, result, state, request)
        if write is None:  # deferred by the backend, yet not foldable: store it now, as Celery would have
            RedisBackend.store_result(backend, request.id, result, state, request=request)
        return write
    if (request.callbacks or request.chain or request.ignore_result or task.ignore_result
            or not backend.folds(request)):
        return None
    return backend.state_write(request.id, result, state, request)


def mark_stored(task, state: str) -> None:
    """Celery's own write of ``state`` for this job is skipped: a script stored it."""
    setattr(task.request, STORED_ATTR, state)


def install(app, settings: Settings) -> None:
    if app.backend_cls or not (settings.feature_enhanced_redis or settings.feature_idempotency
                               or settings.feature_stuck_jobs):
        return
    url = app.conf.result_backend
    scheme = url.split("://", 1)[0].lower() if isinstance(url, str) else ""
    backend = {"redis": TrackedRedisBackend, "rediss": TrackedRedisBackend, "sentinel": TrackedSentinelBackend}
    if scheme in backend:
        app.backend_cls = f"{__name__}:{backend[scheme].__name__}+{url}"
