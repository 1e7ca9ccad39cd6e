"""The health monitor: what probes need from Redis, refreshed in the background.

A daemon thread of the worker's main process PINGs Redis every
``HEALTH_REFRESH_INTERVAL_SEC`` with its own client, whose socket timeouts are
``HEALTH_REDIS_TIMEOUT_SEC`` and which never retries, writes a short-lived
probe key (a full Redis answers PING but refuses writes: ``redis_full``),
reads this worker's heartbeat age and keeps the worker's ``workers:health``
registration. The start of a full-Redis episode is logged and alerted once
(rule ``redis_full``), its end logged. Probes
read the cached results, so a down or frozen Redis costs the monitor thread at
most that timeout per round and costs a probe nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from resilience.core import sentinel
from resilience.core.keys import keys
from resilience.core.observe import guarded
from resilience.core.settings import Settings
from resilience.observability import alert_rules, metrics

__all__ = ["HealthMonitor"]

log = logging.getLogger(__name__)


class HealthMonitor:
    """Background refresh of what probes need from Redis: PING, heartbeat age, registration.

    Uses its own client with ``HEALTH_REDIS_TIMEOUT_SEC`` socket timeouts and
    no retries, so a down or frozen Redis costs the monitor thread at most that
    long per round and never costs a probe anything.
    """

    def __init__(self, settings: Settings, worker: str | None = None,
                 registration: dict[str, Any] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.worker = worker
        self.registration = registration
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._registered = False
        self._was_up: bool | None = None
        self.redis_ok = False
        self.redis_full = False
        self.full_error: str | None = None
        self.full_since: float | None = None
        self.redis_error: str | None = "not checked yet"
        self.redis_latency_ms: float | None = None
        self.checked_at: float | None = None
        self.last_ok_at: float | None = None
        self.heartbeat_at: float | None = None
        self.started_at = clock()
        #: Under Sentinel: the primary and the replicas' lag, as last read (see :meth:`replication_check`).
        self.replication: dict[str, Any] | None = None
        self._url: str | None = None

    def client(self) -> redis.Redis:
        """A client with the short health timeouts; raises at once while the last PING failed."""
        if not self.redis_ok:
            from resilience.core.errors import StoreUnavailable

            raise StoreUnavailable(f"Redis unreachable: {self.redis_error}")
        return self._redis()

    def _redis(self) -> redis.Redis:
        if self._client is None:
            from resilience.core.store import new_client, redis_url

            timeout = self.settings.health_redis_timeout_sec
            self._url = redis_url(self.settings)
            self._client = new_client(
                self._url, self.settings, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=None, retry_on_timeout=False, decode_responses=True)
        return self._client

    def refresh(self) -> None:
        """One round: PING, then this worker's heartbeat and registration."""
        started = time.monotonic()
        try:
            client = self._redis()
            client.ping()
            self.redis_latency_ms = round((time.monotonic() - started) * 1000, 2)
            self.redis_ok, self.redis_error = True, None
            self.last_ok_at = self._clock()
            if self._was_up is False:
                from resilience.observability import metrics

                metrics.redis_reconnects.labels(client="health").inc()
            self._was_up = True
            self._probe_writes(client)
            if self.worker is not None and not self.redis_full:
                self._refresh_worker(client)
        except Exception as exc:
            self.redis_ok = False
            self.redis_error = f"{type(exc).__name__}: {exc}"
            self._was_up = False
            self._registered = False
            self._drop_client()
        finally:
            self.checked_at = self._clock()
            self._refresh_replication()

    def _refresh_replication(self) -> None:
        """Under Sentinel: who is primary now, the replicas' lag; a new primary is a failover."""
        url = self._url
        if url is None or not sentinel.is_sentinel_url(url):
            return
        try:
            view = sentinel.replication(url, self.settings, timeout=self.settings.health_redis_timeout_sec)
        except Exception as exc:  # noqa: BLE001 - an observer never breaks what it observes
            self.replication = {"mode": "sentinel", "error": f"{type(exc).__name__}: {exc}"}
            return
        self.replication = view
        if not view.get("primary_down"):
            watch.observe(view["primary"], view["master_name"])

    def _probe_writes(self, client: redis.Redis) -> None:
        """Does Redis accept writes? A full one (maxmemory, noeviction) refuses them but answers PING."""
        from resilience.core import connection

        try:
            client.set(keys().write_probe(f"health:{self.worker or 'monitor'}"), "1",
                       px=int(max(self.settings.health_refresh_interval_sec * 3, 1) * 1000))
        except redis.RedisError as err:
            if not connection.is_redis_full(err):
                raise
            self.full_error = f"{type(err).__name__}: {err}"
            if not self.redis_full:
                self.redis_full, self.full_since = True, self._clock()
                _report_full(self.worker, self.full_error)
            return
        if self.redis_full:
            log.warning("Redis accepts writes again after %.1fs full", self._clock() - (self.full_since or 0))
        self.redis_full, self.full_error, self.full_since = False, None, None

    def _refresh_worker(self, client: redis.Redis) -> None:
        k = keys()
        if self.settings.feature_stuck_jobs and self.worker is not None:
            score = client.zscore(k.worker_heartbeats, self.worker)
            self.heartbeat_at = float(score) if score is not None else None
        if self.registration is not None and not self._registered:
            client.hset(k.worker_health, self.worker, json.dumps(self.registration))
            self._registered = True

    def _drop_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None

    def unregister(self) -> None:
        if self.worker is None or self.registration is None:
            return
        try:
            self._redis().hdel(keys().worker_health, self.worker)
        except Exception as exc:
            log.info("health registration of %s not removed: %s", self.worker, exc)

    def start(self) -> HealthMonitor:
        self._thread = threading.Thread(target=self._run, name="resilience-health-monitor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = self.settings.health_refresh_interval_sec
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.settings.health_redis_timeout_sec * 4 + 1)
        self._drop_client()

    def redis_check(self) -> dict[str, Any]:
        now = self._clock()
        stale_after = max(3 * self.settings.health_refresh_interval_sec, 2 * self.settings.health_redis_timeout_sec)
        age = None if self.checked_at is None else round(now - self.checked_at, 2)
        ok = self.redis_ok and age is not None and age <= stale_after + self.settings.health_redis_timeout_sec
        result: dict[str, Any] = {"ok": ok, "checked_age_sec": age, "latency_ms": self.redis_latency_ms}
        if not self.redis_ok:
            result["error"] = self.redis_error
        elif not ok:
            result["error"] = "the Redis check has not run recently"
        return result

    def replication_check(self) -> dict[str, Any] | None:
        """``replication`` (Sentinel only, informational): the current primary and each replica's lag."""
        if self.replication is None:
            return None
        view = dict(self.replication)
        view["ok"] = "error" not in view and any(r.get("up") for r in view.get("replicas", ()))
        view["failovers_seen"] = _failovers_seen()
        return view

    def redis_full_check(self) -> dict[str, Any]:
        """``redis_full``: Redis answers but refuses writes (``maxmemory`` reached under ``noeviction``)."""
        if not self.redis_full:
            return {"ok": True}
        return {"ok": False, "full_for_sec": round(self._clock() - (self.full_since or self._clock()), 1),
                "error": f"Redis is full and refuses writes: {self.full_error}"}

    def heartbeat_check(self) -> dict[str, Any]:
        if not self.settings.feature_stuck_jobs:
            return {"ok": True, "skipped": "FEATURE_STUCK_JOBS is off"}
        if self.heartbeat_at is None:
            waited = self._clock() - self.started_at
            if waited > self.settings.worker_heartbeat_timeout_sec:
                return {"ok": False, "age_sec": None, "error": f"no heartbeat recorded in {waited:.0f}s"}
            return {"ok": True, "age_sec": None, "note": "no heartbeat recorded yet"}
        age = round(max(0.0, self._clock() - self.heartbeat_at), 1)
        ok = age <= self.settings.worker_heartbeat_timeout_sec
        result: dict[str, Any] = {"ok": ok, "age_sec": age}
        if not ok:
            result["error"] = f"last heartbeat {age}s ago (limit {self.settings.worker_heartbeat_timeout_sec}s)"
        return result


def _failovers_seen() -> int:
    return watch.failovers


def _report_full(worker: str | None, error: str | None) -> None:
    """Log and alert (once per episode, rule ``redis_full``) that Redis refuses writes."""
    log.error("Redis is full and refuses writes (%s): jobs wait, producers spool, workers hold off "
              "until memory is freed", error)
    try:
        from resilience.observability import alert_rules

        alert_rules.redis_full(worker, error)
    except Exception:  # an observer never breaks what it observes
        log.exception("redis_full alert not sent")


@dataclass
class FailoverWatch:
    """Notices a new primary: logs it, counts it (``redis_failovers_total``) and alerts once.

    ``observe(address)`` is fed the primary the sentinels name (the health
    monitor does so on each refresh). The first address seen is the starting
    point, not a failover. The alert (rule ``redis_failover``, subject the new
    primary) goes through the alert gate, so the many processes that notice
    the same failover send one alert per ``ALERT_WINDOW_SEC``.
    """

    primary: str | None = None
    failovers: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, address: str, master: str = "") -> bool:
        """Record the primary seen now; True when it differs from the one seen before."""
        with self._lock:
            previous, self.primary = self.primary, address
            if previous is None or previous == address:
                return False
            self.failovers += 1
        log.warning("Redis failover: the sentinels now name %s as primary (was %s)", address, previous)
        with guarded("the failover count"):
            metrics.redis_failovers.labels(master=master).inc()
        with guarded("the redis_failover alert"):
            alert_rules.redis_failover(previous, address, master=master)
        return True


#: This process's watch (fed by the health monitor and ``resilience status``).
watch = FailoverWatch()
