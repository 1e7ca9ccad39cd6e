"""Worker health: liveness (``/health``), readiness (``/ready``) and the check registry.

A worker bootstep starts, in the worker's main process, a background monitor
(:mod:`resilience.probes.healthmonitor`) and a small threaded HTTP server
(:mod:`resilience.probes.healthserver`). Probes never
do I/O themselves: they read values the monitor refreshes every
``HEALTH_REFRESH_INTERVAL_SEC`` (a Redis PING bounded by
``HEALTH_REDIS_TIMEOUT_SEC``, this worker's heartbeat age) and attributes of the
worker that cost nothing to read, so a probe answers at once even while Redis
is down or frozen.

Checks of ``/health`` (each ``{"ok": bool, ...details}``):

* ``redis``: the monitor's last PING succeeded and is recent;
* ``broker``: the consumer is connected (not reconnecting);
* ``consumer``: the connected consumer's event loop ticked within
  ``HEALTH_LOOP_STALL_SEC`` and it consumes at least one queue (a worker whose
  consumer stopped polling is unhealthy although its process lives);
* ``pool``: pool processes are alive (prefork);
* ``redis_full``: Redis accepts writes (a probe key; a full Redis answers PING);
* ``heartbeat``: this worker's heartbeat in Redis is younger than
  ``WORKER_HEARTBEAT_TIMEOUT_SEC`` (with the stuck-jobs feature on);
* ``replication`` (under Sentinel; informational): the current primary, each
  replica's lag in bytes and link state, and the failovers this worker saw;
* any check another feature registered with :func:`register_check`.

``/ready`` says whether the worker takes work, and its body tells an
orchestrator what to do: ``starting``/``draining`` (wait), ``broker_unavailable``
(``restart: false``: the broker is down, restarting the worker cannot help),
``redis_full`` (``restart: false``: Redis refuses writes until memory is freed),
``consumer_wedged`` (``restart: true``).

Other features feed the registry::

    from resilience.probes import health
    health.register_check("publish_spool", lambda: {"ok": spool.size() < limit, "size": spool.size()})

A check must be cheap and must not block (return cached state); it may
return a bool or a dict with ``ok``. A check that raises counts as failed and
is logged; ``critical=False`` reports it without failing ``/health``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import bootsteps

from resilience.core.identity import worker_id
from resilience.core.settings import Settings, get_settings
from resilience.probes.healthmonitor import HealthMonitor

__all__ = ["WorkerProbe", "register_check", "unregister_check", "current_probe", "on_worker_shutting_down",
           "on_worker_shutdown"]

log = logging.getLogger(__name__)

CheckResult = bool | dict[str, Any]


@dataclass(frozen=True)
class _Check:
    fn: Callable[[], CheckResult]
    critical: bool


_registry: dict[str, _Check] = {}
_registry_lock = threading.Lock()


def register_check(name: str, fn: Callable[[], CheckResult], *, critical: bool = True) -> None:
    """Add (or replace) a named check to every ``/health`` answer of this process.

    ``fn`` returns a bool or a dict with ``ok``; it must answer at once (read
    cached state, no network I/O). ``critical=False`` reports without failing.
    """
    with _registry_lock:
        _registry[name] = _Check(fn, critical)


def unregister_check(name: str) -> None:
    with _registry_lock:
        _registry.pop(name, None)


def _run_registered() -> dict[str, tuple[dict[str, Any], bool]]:
    with _registry_lock:
        checks = dict(_registry)
    results = {}
    for name, check in checks.items():
        try:
            raw = check.fn()
            result = dict(raw) if isinstance(raw, dict) else {"ok": bool(raw)}
            result["ok"] = bool(result.get("ok"))
        except Exception as exc:  # a broken check fails itself, never the probe
            log.warning("health check %s raised: %s", name, exc)
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if not check.critical:
            result["critical"] = False
        results[name] = (result, check.critical)
    return results


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("celery-resilience")
    except Exception:
        return "unknown"


VERSION = _version()


@dataclass
class WorkerProbe:
    """What a worker's probes report, from state the worker's own steps update."""

    settings: Settings
    worker: Any = None  #: the WorkController
    monitor: HealthMonitor | None = None
    clock: Callable[[], float] = time.monotonic
    phase: str = "starting"  #: starting | serving | disconnected | draining
    consumer: Any = None
    last_tick: float | None = None
    connected_at: float | None = None
    server: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- fed by the bootsteps ---------------------------------------------------------------
    def tick(self) -> None:
        """Called on every turn of the consumer's event loop."""
        self.last_tick = self.clock()

    def consumer_started(self, consumer: Any) -> None:
        self.consumer = consumer
        self.connected_at = self.last_tick = self.clock()
        if self.phase != "draining":
            self.phase = "serving"

    def consumer_stopped(self) -> None:
        if self.phase != "draining":
            self.phase = "disconnected"

    def draining(self) -> None:
        self.phase = "draining"

    # -- checks ---------------------------------------------------------------------------
    def broker_check(self) -> dict[str, Any]:
        if self.phase == "starting":
            return {"ok": True, "state": "connecting"}
        if self.phase == "disconnected":
            return {"ok": False, "state": "reconnecting", "error": "the consumer lost the broker connection"}
        connection = getattr(self.consumer, "connection", None)
        if connection is None and self.phase == "serving":
            return {"ok": False, "state": "no connection", "error": "the consumer has no broker connection"}
        return {"ok": True, "state": "connected"}

    def consumer_check(self) -> dict[str, Any]:
        if self.phase != "serving" or self.consumer is None:
            return {"ok": True, "state": self.phase, "tick_age_sec": None}
        age = None if self.last_tick is None else round(self.clock() - self.last_tick, 2)
        queues = _consumed_queues(self.consumer)
        result: dict[str, Any] = {"ok": True, "state": "polling", "tick_age_sec": age, "queues": queues}
        if age is not None and age > self.settings.health_loop_stall_sec:
            result.update(ok=False, state="stalled",
                          error=f"the event loop has not run for {age}s (limit {self.settings.health_loop_stall_sec}s)")
        elif queues is not None and not queues:
            result.update(ok=False, state="not consuming", error="the consumer consumes no queue")
        return result

    def pool_check(self) -> dict[str, Any]:
        pool = getattr(self.worker, "pool", None)
        processes = getattr(getattr(pool, "_pool", None), "_pool", None)
        if processes is None:
            return {"ok": True, "kind": type(pool).__name__ if pool is not None else None, "note": "no child processes"}
        alive = 0
        for proc in list(processes):
            try:
                if proc.exitcode is None:
                    alive += 1
            except Exception:
                pass
        expected = getattr(pool, "num_processes", None) or len(processes)
        result: dict[str, Any] = {"ok": alive > 0, "alive": alive, "expected": expected}
        if not alive:
            result["error"] = "no pool process is alive"
        return result

    def checks(self) -> dict[str, tuple[dict[str, Any], bool]]:
        results: dict[str, tuple[dict[str, Any], bool]] = {}
        if self.monitor is not None:
            results["redis"] = (self.monitor.redis_check(), True)
            results["redis_full"] = (self.monitor.redis_full_check(), True)
        results["broker"] = (self.broker_check(), True)
        results["consumer"] = (self.consumer_check(), True)
        results["pool"] = (self.pool_check(), True)
        if self.monitor is not None:
            results["heartbeat"] = (self.monitor.heartbeat_check(), True)
            replication = self.monitor.replication_check()
            if replication is not None:  # Sentinel: informational, the "redis" check decides
                results["replication"] = ({**replication, "critical": False}, False)
        for name, value in _run_registered().items():
            results.setdefault(name, value)
        return results

    def report(self) -> tuple[int, dict[str, Any]]:
        """``/health``: 200 when every critical check passes, else 503 naming the failures."""
        checks = self.checks()
        failed = sorted(name for name, (result, critical) in checks.items() if critical and not result.get("ok"))
        body = {
            "status": "ok" if not failed else "unhealthy",
            "timestamp": time.time(),
            "version": VERSION,
            "worker": getattr(self.worker, "hostname", None),
            "phase": self.phase,
            "failed": failed,
            "checks": {name: result for name, (result, _) in checks.items()},
        }
        return (200 if not failed else 503), body

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """``/ready``: 200 while serving; otherwise why not, and whether a restart would help."""
        code, health = self.report()
        checks = health["checks"]
        broker_down = not checks["broker"]["ok"] or not checks.get("redis", {"ok": True})["ok"]
        if self.phase == "starting":
            state, restart, reason = "starting", False, "the worker is starting"
        elif self.phase == "draining":
            state, restart, reason = "draining", False, "the worker is shutting down; it takes no new jobs"
        elif not checks.get("redis_full", {"ok": True})["ok"]:
            state, restart, reason = ("redis_full", False,
                                      "Redis is full and refuses writes; do not restart me: the worker resumes "
                                      "by itself once memory is freed")
        elif broker_down:
            state, restart, reason = ("broker_unavailable", False,
                                      "broker down, do not restart me: the worker reconnects by itself")
        elif not checks["consumer"]["ok"]:
            state, restart, reason = ("consumer_wedged", True,
                                      f"consumer wedged, restart me: {checks['consumer'].get('error')}")
        elif code != 200:
            state, restart, reason = "unhealthy", True, f"failed checks: {', '.join(health['failed'])}"
        else:
            state, restart, reason = "serving", False, "taking jobs"
        body = {"ready": state == "serving", "state": state, "restart": restart, "reason": reason,
                "timestamp": health["timestamp"], "worker": health["worker"], "failed": health["failed"]}
        return (200 if state == "serving" else 503), body


def _consumed_queues(consumer: Any) -> list[str] | None:
    """Task queues the consumer both subscribes to and polls (None when unknown)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return None
    try:
        names = {q.name for q in task_consumer.queues}
        polled = getattr(getattr(task_consumer, "channel", None), "_active_queues", None)
        if isinstance(polled, list):  # kombu's virtual transports (Redis): the queues really polled
            names &= set(polled)
        return sorted(names)
    except Exception:
        return None


# -- wiring into the worker ------------------------------------------------------------------

_probe: WorkerProbe | None = None


def current_probe() -> WorkerProbe | None:
    """The probe of the worker running in this process (None outside a worker)."""
    return _probe


class HealthServerStep(bootsteps.StartStopStep):
    """Worker bootstep: the monitor and the HTTP server, in the worker's main process.

    Created before the pool forks, so prefork pool processes inherit the
    multiprocess metrics directory (see :mod:`resilience.observability.metrics`).
    """

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent, **kwargs):
        global _probe
        super().__init__(parent, **kwargs)
        settings = get_settings()
        self.settings = settings
        self.probe = WorkerProbe(settings, worker=parent)
        parent.resilience_health = self.probe
        _probe = self.probe
        if _is_prefork(parent):
            _enable_multiprocess_metrics(parent.hostname, settings)

    def start(self, parent):
        try:
            self._start(parent)
        except Exception:  # the probe is an observer: the worker runs without it rather than not at all
            log.exception("health server of %s not started", parent.hostname)

    def _start(self, parent) -> None:
        from resilience.observability import metrics
        from resilience.probes import status
        from resilience.probes.healthserver import serve

        probe = self.probe
        wid = worker_id(parent.hostname)
        monitor = probe.monitor = HealthMonitor(self.settings, worker=wid)
        monitor.refresh()
        state = metrics.StateCollector(lambda: status.collect(parent.app, client=monitor.client()),
                                       health=lambda: probe.report()[1], cache_sec=self.settings.metrics_cache_sec)
        probe.server = serve(probe, state, self.settings, label=parent.hostname)
        if probe.server is not None:
            host, port = probe.server.server_address[:2]
            probe.monitor.registration = {"hostname": parent.hostname, "pid": os.getpid(), "host": host, "port": port,
                                          "url": f"http://{_url_host(host)}:{port}", "started_at": time.time()}
            probe.monitor.refresh()
        probe.monitor.start()

    def stop(self, parent):
        probe = self.probe
        probe.draining()
        if probe.server is not None:
            probe.server.close()
            probe.server = None
        if probe.monitor is not None:
            probe.monitor.stop()
            probe.monitor.unregister()

    shutdown = terminate = stop


class ConsumerProbeStep(bootsteps.StartStopStep):
    """Consumer bootstep: records each turn of the event loop and (dis)connections."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self._started_once = False
        self._tref = None

    def _probe(self, parent) -> WorkerProbe | None:
        return getattr(getattr(parent, "controller", None), "resilience_health", None)

    def start(self, parent):
        probe = self._probe(parent)
        if probe is None:
            return
        hub = getattr(parent, "hub", None)
        if hub is not None:
            hub.on_tick.add(probe.tick)
        elif parent.timer is not None and self._tref is None:  # no event loop (blocking transport)
            self._tref = parent.timer.call_repeatedly(1.0, probe.tick, priority=10)
        if self._started_once and not get_settings().feature_enhanced_redis:
            # With the flag on, resilience.core.connection counts every broker reconnect.
            from resilience.observability import metrics

            metrics.redis_reconnects.labels(client="broker").inc()
        self._started_once = True
        probe.consumer_started(parent)

    def _cancel_timer(self) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None

    def stop(self, parent):
        self._cancel_timer()
        probe = self._probe(parent)
        if probe is not None:
            probe.consumer_stopped()

    def shutdown(self, parent):
        self._cancel_timer()
        probe = self._probe(parent)
        if probe is not None:
            probe.draining()


def _is_prefork(worker) -> bool:
    pool_cls = getattr(worker, "pool_cls", None)
    module = getattr(pool_cls, "__module__", "") or str(pool_cls)
    return "prefork" in module


def _enable_multiprocess_metrics(hostname: str, settings: Settings) -> None:
    from resilience.core.identity import BOOT_ID
    from resilience.observability import metrics

    node = "".join(c if c.isalnum() or c in "-_." else "_" for c in hostname)
    root = metrics.metrics_root(settings.data_dir)
    directory = root / f"{node}-{BOOT_ID}"
    try:
        metrics.prune_stale_dirs(root, node, directory)
        metrics.use_multiprocess_dir(directory)
    except OSError as exc:  # metrics of pool processes are lost, the worker still runs
        log.warning("multiprocess metrics unavailable (%s): counters cover the main process only", exc)


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


def on_worker_shutting_down(**_: Any) -> None:
    if _probe is not None:
        _probe.draining()


def on_worker_shutdown(**_: Any) -> None:
    """After the pool has stopped: this run's metric files are of no further use."""
    from resilience.observability import metrics

    metrics.remove_multiprocess_dir()
