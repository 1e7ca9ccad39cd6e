"""The platform's own Redis client: one per process, rebuilt after fork.

Which Redis, in order: ``REDIS_URL`` (environment or the app's
configuration); else the broker of the app given to ``install()`` when it is
a Redis URL, so a project's platform state lives next to its queues; else the
data dir's embedded server (started on first use, by processes allowed to:
see :func:`resilience.core.embedded.forbid_autostart`). Every connection has socket
and connect timeouts and a health check, so a frozen Redis raises instead of
blocking, and redis-py retries connection errors with capped exponential
backoff and jitter.
"""

from __future__ import annotations

import os
import re
import threading
from functools import cache, lru_cache
from importlib import resources

import redis
from redis.backoff import ExponentialWithJitterBackoff

from resilience.core import sentinel
from resilience.core.connection import TrackedRetry
from resilience.core.settings import Settings, get_settings

__all__ = ["get_redis", "redis_url", "reset_redis", "load_script", "script_source"]

_lock = threading.Lock()
_client: redis.Redis | None = None
_client_pid: int | None = None
_url_override: str | None = None


_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "sentinel"})


def app_broker_url(app) -> str | None:
    """``app``'s broker URL when it is a Redis URL (None while the app is being configured)."""
    if app is None or getattr(app, "_resilience_configuring", False):
        return None
    url = app.conf.broker_url
    if isinstance(url, str) and url.split("://", 1)[0].lower() in _REDIS_SCHEMES:
        return url
    return None


def configured_or_embedded_url(settings: Settings) -> str:
    """``REDIS_URL``, else the data dir's embedded Redis (what a config module uses)."""
    if settings.redis_url:
        return settings.redis_url
    from resilience.core.embedded import ensure_embedded

    url, _ = ensure_embedded(settings)
    return url


def redis_url(settings: Settings | None = None, app=None) -> str:
    """The Redis URL the platform's clients use (see the module docstring for the order)."""
    if _url_override:
        return _url_override
    settings = settings or get_settings()
    if not settings.redis_url:
        from resilience.core.runtime import bound_app

        url = app_broker_url(app if app is not None else bound_app())
        if url:
            return url
    return configured_or_embedded_url(settings)


def client_options(settings: Settings | None = None) -> dict:
    """Connection options shared by the platform's clients."""
    settings = settings or get_settings()
    return {
        "socket_timeout": settings.redis_socket_timeout_sec,
        "socket_connect_timeout": settings.redis_connect_timeout_sec,
        "health_check_interval": settings.redis_health_check_interval_sec,
        "socket_keepalive": True,
        # Capped jittered retries; each command's outcome also feeds the "store" connection state.
        "retry": TrackedRetry("store", ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3),
        "retry_on_timeout": False,
        "decode_responses": True,
        # Bytes that are not UTF-8 (a corrupt record) arrive as lone surrogates instead of failing the
        # whole reply, and encode back to the same bytes (compare-and-delete into the quarantine).
        "encoding_errors": "surrogateescape",
    }


def new_client(url: str, settings: Settings | None = None, **options) -> redis.Redis:
    """A client of ``url`` with ``options``; for a ``sentinel://`` URL, one that follows the
    primary the sentinels name (rediscovered after a failover)."""
    settings = settings or get_settings()
    if sentinel.is_sentinel_url(url):
        from resilience.core.runtime import bound_app

        return sentinel.master_client(url, settings, bound_app(), **options)
    return redis.Redis.from_url(url, **options)


def get_redis() -> redis.Redis:
    """This process's client (a new one after fork, never shared across processes)."""
    global _client, _client_pid
    pid = os.getpid()
    if _client is not None and _client_pid == pid:
        return _client
    with _lock:
        if _client is None or _client_pid != pid:
            _client = new_client(redis_url(), **client_options())
            _client_pid = pid
    return _client


def reset_redis(url: str | None = None) -> None:
    """Drop the cached client (and optionally point the process at ``url``)."""
    global _client, _client_pid, _url_override
    with _lock:
        if _client is not None and _client_pid == os.getpid():
            _client.close()
        _client = None
        _client_pid = None
        _url_override = url


#: A line of a script that stands for a shared fragment, ``lua/_<name>.lua``.
_INCLUDE_RE = re.compile(r"^--#include (\w+)$", re.MULTILINE)


def _lua_file(name: str) -> str:
    return resources.files("resilience.core").joinpath("lua", f"{name}.lua").read_text()


@cache
def script_source(name: str) -> str:
    """The text of the script ``lua/<name>.lua``, each ``--#include <fragment>`` line
    replaced by the fragment ``lua/_<fragment>.lua`` (code two scripts share)."""
    return _INCLUDE_RE.sub(lambda match: _lua_file("_" + match.group(1)), _lua_file(name))


@lru_cache(maxsize=256)
def _registered(client: redis.Redis, name: str):
    return client.register_script(script_source(name))


def load_script(name: str, client: redis.Redis | None = None):
    """The Lua script ``resilience/core/lua/<name>.lua`` bound to a client.

    Calls use EVALSHA and fall back to loading the script once when the
    server does not know it (after a Redis restart, say).
    """
    return _registered(client or get_redis(), name)
