"""Redis under Sentinel: addresses, clients, the replication view and failover detection.

``REDIS_URL`` takes kombu's form for Sentinel::

    sentinel://[:password@]host1:26379[/db];sentinel://host2:26379;sentinel://host3:26379

with ``REDIS_SENTINEL_MASTER`` naming the primary the sentinels monitor and
``REDIS_SENTINEL_PASSWORD`` the sentinels' own password (the password in the
URL is the primary's, as kombu reads it). The same URL configures the broker
(kombu's ``sentinel://`` transport, ``master_name`` in its transport options),
Celery's Sentinel result backend and the platform's own clients
(:func:`master_client`, redis-py's ``Sentinel(...).master_for(...)``), so
every process follows the primary the sentinels name.

After a failover nothing needs restarting:

* a connection to the dead primary fails, and the next one asks the sentinels
  for the new primary (redis-py's Sentinel connection pool);
* a connection that reaches the old primary after it came back as a replica
  gets ``READONLY``: redis-py's Sentinel connection turns that into a
  connection error and rediscovers the primary, and the platform counts
  ``READONLY`` as a connection failure everywhere it classifies errors
  (:func:`resilience.core.connection.is_outage`, the worker's hand-over), so no job
  fails on it;
* Lua scripts the new primary does not know are loaded again on ``NOSCRIPT``
  (redis-py's ``Script``, also inside pipelines).

:class:`resilience.probes.healthmonitor.FailoverWatch` notices a change of primary
(the health monitor asks the sentinels on every refresh): it logs it, counts
it in ``/metrics`` (``redis_failovers_total``) and alerts once per new
primary (rule ``redis_failover``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from resilience.core.errors import ConfigurationError
from resilience.core.settings import Settings, get_settings, masked_url

log = logging.getLogger(__name__)

__all__ = ["SentinelURL", "is_sentinel_url", "parse", "master_name", "sentinel_for", "master_client",
           "primary_address", "replication", "transport_options", "install"]

DEFAULT_SENTINEL_PORT = 26379


def is_sentinel_url(url: str | None) -> bool:
    return isinstance(url, str) and url.strip().lower().startswith("sentinel://")


@dataclass(frozen=True)
class SentinelURL:
    """What a ``sentinel://...;sentinel://...`` URL says."""

    sentinels: tuple[tuple[str, int], ...]
    password: str | None = None
    username: str | None = None
    db: int = 0

    def shown(self) -> str:
        return ";".join(f"sentinel://{host}:{port}" for host, port in self.sentinels)


def parse(url: str) -> SentinelURL:
    """The sentinels, the primary's credentials and the database of a Sentinel URL (kombu's form)."""
    sentinels: list[tuple[str, int]] = []
    password = username = None
    db = 0
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme.lower() != "sentinel" or not parts.hostname:
            raise ValueError(f"not a sentinel:// address: {masked_url(part)}")
        sentinels.append((parts.hostname, parts.port or DEFAULT_SENTINEL_PORT))
        if parts.password and password is None:
            password, username = unquote(parts.password), unquote(parts.username) if parts.username else None
        if parts.path.strip("/").isdigit():
            db = int(parts.path.strip("/"))
    return SentinelURL(tuple(sentinels), password, username, db)


def master_name(settings: Settings | None = None, app: Any = None) -> str:
    """``REDIS_SENTINEL_MASTER``, else the ``master_name`` of ``app``'s broker transport options."""
    settings = settings or get_settings()
    if settings.redis_sentinel_master:
        return settings.redis_sentinel_master
    if app is not None:
        name = (app.conf.broker_transport_options or {}).get("master_name")
        if name:
            return str(name)
    raise ConfigurationError("REDIS_URL names sentinels but no master: set REDIS_SENTINEL_MASTER")


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """Options of the connections to the sentinels themselves (their password, short timeouts)."""
    options: dict[str, Any] = {"socket_timeout": settings.redis_connect_timeout_sec,
                               "socket_connect_timeout": settings.redis_connect_timeout_sec}
    if settings.redis_sentinel_password:
        options["password"] = settings.redis_sentinel_password
    return options


def transport_options(settings: Settings, app: Any = None) -> dict[str, Any]:
    """What kombu's Sentinel transport and Celery's Sentinel result backend need to find the primary."""
    return {"master_name": master_name(settings, app), "sentinel_kwargs": sentinel_kwargs(settings)}


def sentinel_for(url: str, settings: Settings, **connection_options: Any) -> Sentinel:
    """A redis-py ``Sentinel`` for ``url``; ``connection_options`` apply to the primary's connections."""
    target = parse(url)
    options = dict(connection_options)
    if target.password is not None:
        options.setdefault("password", target.password)
    if target.username is not None:
        options.setdefault("username", target.username)
    options.setdefault("db", target.db)
    return Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs(settings), **options)


def master_client(url: str, settings: Settings, app: Any = None, **connection_options: Any) -> redis.Redis:
    """A client that always talks to the current primary (rediscovered after a failover)."""
    return sentinel_for(url, settings, **connection_options).master_for(master_name(settings, app),
                                                                        redis_class=redis.Redis)


def primary_address(url: str, settings: Settings, app: Any = None) -> tuple[str, int]:
    """The primary the sentinels name now (``MasterNotFoundError`` when none answers)."""
    sentinel = sentinel_for(url, settings)
    try:
        return sentinel.discover_master(master_name(settings, app))
    finally:
        for node in sentinel.sentinels:
            node.close()


def replication(url: str, settings: Settings, app: Any = None, *, timeout: float | None = None) -> dict[str, Any]:
    """The operator's view: the current primary and each replica with its lag.

    ``lag_bytes`` is how far the replica's replication offset is behind the
    primary's (0: it has everything); ``link_down_sec`` how long its link to
    the primary has been down (0 while it is up). Read from the first sentinel
    that answers, plus one ``INFO replication`` of the primary.
    """
    target = parse(url)
    name = master_name(settings, app)
    options = sentinel_kwargs(settings)
    if timeout is not None:
        options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    last_error: Exception | None = None
    for host, port in target.sentinels:
        node = redis.Redis(host=host, port=port, decode_responses=True, **options)
        try:
            # redis-py's stubs type these replies loosely; with decode_responses they are dicts and lists
            master: dict[str, Any] = node.sentinel_master(name)  # type: ignore[assignment]
            replicas: list[dict[str, Any]] = node.sentinel_slaves(name)
            sentinels: list[dict[str, Any]] = node.sentinel_sentinels(name)  # type: ignore[assignment]
        except (redis.RedisError, OSError) as err:
            last_error = err
            continue
        finally:
            node.close()
        primary = (master["ip"], int(master["port"]))
        primary_offset = _primary_offset(primary, target, options["socket_timeout"])
        view: dict[str, Any] = {
            "mode": "sentinel", "master_name": name, "primary": f"{primary[0]}:{primary[1]}",
            "primary_down": _flagged_down(master), "sentinels": len(sentinels) + 1, "replicas": [],
        }
        for replica in replicas:
            offset = int(replica.get("slave-repl-offset") or 0)
            down_ms = int(replica.get("master-link-down-time") or 0)
            view["replicas"].append({
                "address": f"{replica['ip']}:{replica['port']}", "up": not _flagged_down(replica),
                "link": replica.get("master-link-status") or ("ok" if down_ms == 0 else "err"),
                "lag_bytes": None if primary_offset is None else max(0, primary_offset - offset),
                "link_down_sec": round(down_ms / 1000, 1),
            })
        return view
    raise redis.ConnectionError(f"no sentinel of {target.shown()} answered: {last_error}")


def _flagged_down(entry: dict[str, Any]) -> bool:
    flags = entry.get("flags")
    names = flags if isinstance(flags, (list, tuple, set)) else str(flags or "").split(",")
    return any(flag in {"s_down", "o_down", "disconnected"} for flag in names)


def _primary_offset(primary: tuple[str, int], target: SentinelURL, timeout: float) -> int | None:
    client = redis.Redis(host=primary[0], port=primary[1], password=target.password, username=target.username,
                         socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return int(client.info("replication").get("master_repl_offset", 0))
    except (redis.RedisError, OSError, ValueError):
        return None
    finally:
        client.close()


class NoSwitch:
    """kombu failover strategy for a Sentinel broker URL: never switch to another "alternate".

    kombu treats each ``;``-separated URL as an alternate broker and, after a
    failed connection attempt, switches to the next one, rebuilding the
    connection from that URL alone: the transport Celery was configured with
    (``broker_transport``, the replica-acknowledging one) is replaced by the
    URL's scheme. Under Sentinel the alternates are the sentinels, which the
    transport already asks for the primary, so there is nothing to switch to.
    kombu switches only while its strategy object is truthy; this one never is.
    """

    def __init__(self, alternates=None) -> None:
        self.alternates = alternates

    def __iter__(self):
        return self

    def __next__(self):
        return None

    def __bool__(self) -> bool:
        return False


def install(app, settings: Settings) -> None:
    """Give ``app``'s broker and result backend the Sentinel options they need when they name sentinels.

    Only what is missing is filled in (``master_name`` and ``sentinel_kwargs``
    in ``broker_transport_options`` and ``result_backend_transport_options``,
    and :class:`NoSwitch` as ``broker_failover_strategy``), so an app that
    configures them itself keeps its own.
    """
    conf = app.conf
    if is_sentinel_url(conf.get("broker_url")) and not conf.get("broker_failover_strategy"):
        conf["broker_failover_strategy"] = NoSwitch
    for url_key, options_key in (("broker_url", "broker_transport_options"),
                                 ("result_backend", "result_backend_transport_options")):
        if not is_sentinel_url(conf.get(url_key)):
            continue
        options = dict(conf.get(options_key) or {})
        try:
            wanted = transport_options(settings, app)
        except Exception:  # noqa: BLE001 - no master name anywhere: kombu and Celery say so when they connect
            continue
        for key, value in wanted.items():
            options.setdefault(key, value)
        conf[options_key] = options
