"""Prometheus metrics of a worker, served at ``GET /metrics`` by its health server.

Counters any feature may increment, from any process of the worker::

    from resilience import metrics
    metrics.stuck_jobs_recovered.labels(task=name, action="requeued").inc()
    metrics.alerts_sent.labels(rule="breaker_state", level="critical").inc()
    metrics.alerts_suppressed.labels(rule="breaker_state").inc()
    metrics.redis_reconnects.labels(client="publisher").inc()

The job lifecycle (started, succeeded, failed, retried, run time) is counted
here from Celery's task signals. So is ``jobs_dead_lettered`` for jobs that
fail in their run (a failure that reaches Celery was not retried, and the
platform dead-letters it); a feature that dead-letters a job outside its run's
failure path (the sweep, a poison job, a replay) increments it itself::

    metrics.jobs_dead_lettered.labels(task="billing.charge").inc()

Why multiprocess mode: jobs run in prefork pool processes, and so do the
features that count things (dead letters, breakers, alerts). Counting in the
main process from Celery's signals would only see the job lifecycle, not what
the features do inside a job, so every counter and the run-time histogram use
prometheus-client's multiprocess mode: each process writes its values to a
memory-mapped file in a directory of its own worker
(``<RESILIENCE_DATA_DIR>/metrics/<node name>-<boot id>``), and ``/metrics`` in
the main process adds them up. Counts of pool processes that died stay
counted. Workers with a threads or solo pool run everything in one process and
keep plain in-memory values.

Gauges (queue depths, active and waiting-retry jobs, dead letters, breaker
states, workers alive) are read from Redis at scrape time and reused for
``METRICS_CACHE_SEC``; Redis and loop state come from the health monitor's
cached checks, so a scrape never waits on a down Redis.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = [
    "CONTENT_TYPE_LATEST", "REGISTRY", "alerts_sent", "alerts_suppressed", "exposition", "job_runtime",
    "jobs_dead_lettered", "jobs_failed", "jobs_retried", "jobs_started", "jobs_succeeded",
    "redis_reconnects", "redis_disconnects", "stuck_jobs_recovered", "use_multiprocess_dir",
]

log = logging.getLogger(__name__)

#: The registry of the counters below (not prometheus-client's global one, so
#: an application's own metrics never clash with ours).
REGISTRY = CollectorRegistry(auto_describe=True)

jobs_started = Counter("resilience_jobs_started", "Job runs started", ["task"], registry=REGISTRY)
jobs_succeeded = Counter("resilience_jobs_succeeded", "Job runs that succeeded", ["task"], registry=REGISTRY)
jobs_failed = Counter("resilience_jobs_failed", "Job runs that failed for good (not retried)", ["task"],
                      registry=REGISTRY)
jobs_retried = Counter("resilience_jobs_retried", "Job runs that ended in a scheduled retry", ["task"],
                       registry=REGISTRY)
jobs_dead_lettered = Counter("resilience_jobs_dead_lettered", "Jobs written to the dead-letter queue", ["task"],
                             registry=REGISTRY)
job_runtime = Histogram("resilience_job_runtime_seconds", "Run time of job bodies", ["task"], registry=REGISTRY,
                        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
stuck_jobs_recovered = Counter("resilience_stuck_jobs_recovered", "Stuck or abandoned jobs recovered by the sweep",
                               ["task", "action"], registry=REGISTRY)
redis_reconnects = Counter("resilience_redis_reconnects", "Redis connections re-established after a loss",
                           ["client"], registry=REGISTRY)
redis_disconnects = Counter("resilience_redis_disconnects", "Redis connections found lost",
                            ["client"], registry=REGISTRY)
alerts_sent = Counter("resilience_alerts_sent", "Alerts delivered", ["rule", "level"], registry=REGISTRY)
alerts_suppressed = Counter("resilience_alerts_suppressed", "Alerts withheld by the repeat window", ["rule"],
                            registry=REGISTRY)

_COUNTERS = (jobs_started, jobs_succeeded, jobs_failed, jobs_retried, jobs_dead_lettered, job_runtime,
             stuck_jobs_recovered, redis_reconnects, redis_disconnects, alerts_sent, alerts_suppressed)

_multiprocess_dir: str | None = None


def metrics_root(data_dir: str) -> Path:
    return Path(data_dir).expanduser().resolve() / "metrics"


def use_multiprocess_dir(directory: str | os.PathLike) -> None:
    """Switch this process (and the pool processes it forks later) to multiprocess values.

    Call in the worker's main process before the pool starts. The directory is
    emptied first: values left by an earlier process tree must not be counted.
    """
    global _multiprocess_dir
    path = Path(directory)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    for metric in _COUNTERS:
        metric.clear()  # children made from now on write to the directory
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    values.ValueClass = values.MultiProcessValue()
    _multiprocess_dir = str(path)


def multiprocess_dir() -> str | None:
    """The directory of this worker's multiprocess values, or None (in-memory values)."""
    return _multiprocess_dir


def remove_multiprocess_dir() -> None:
    """Forget this worker's value files (at shutdown, once its pool has stopped)."""
    global _multiprocess_dir
    if _multiprocess_dir:
        shutil.rmtree(_multiprocess_dir, ignore_errors=True)
        _multiprocess_dir = None


def prune_stale_dirs(root: Path, node: str, keep: Path) -> None:
    """Delete value directories of earlier runs of the same node name."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if entry != keep and entry.name.startswith(f"{node}-"):
            shutil.rmtree(entry, ignore_errors=True)


# -- gauges read at scrape time ---------------------------------------------------------------

class StateCollector:
    """Gauges from a snapshot function (Redis state) and a health function (cached checks).

    ``snapshot`` is called at most once per ``cache_sec``; when it fails the
    last good values are served and ``resilience_metrics_snapshot_ok`` is 0.
    """

    def __init__(self, snapshot: Callable[[], dict[str, Any]], health: Callable[[], dict[str, Any]] | None = None,
                 cache_sec: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._snapshot = snapshot
        self._health = health
        self._cache_sec = cache_sec
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: dict[str, Any] | None = None
        self._cached_at = float("-inf")
        self._ok = False

    def current(self) -> tuple[dict[str, Any] | None, bool]:
        with self._lock:
            if self._clock() - self._cached_at >= self._cache_sec:
                try:
                    self._cached = self._snapshot()
                    self._ok = True
                except Exception as exc:  # an observer never breaks: serve the last values
                    log.warning("metrics snapshot from Redis failed: %s", exc)
                    self._ok = False
                self._cached_at = self._clock()
            return self._cached, self._ok

    def collect(self) -> Iterable[Metric]:
        snap, ok = self.current()
        yield GaugeMetricFamily("resilience_metrics_snapshot_ok",
                                "1 when the Redis-derived gauges below are fresh", value=1 if ok else 0)
        if snap:
            yield from _snapshot_gauges(snap)
        if self._health is not None:
            try:
                yield from _health_gauges(self._health())
            except Exception as exc:
                log.warning("health gauges unavailable: %s", exc)


def _snapshot_gauges(snap: dict[str, Any]) -> Iterable[Metric]:
    depth = GaugeMetricFamily("resilience_queue_depth", "Jobs waiting in a queue", labels=["queue"])
    for queue, n in (snap.get("queues") or {}).items():
        depth.add_metric([str(queue)], float(n or 0))
    yield depth
    for name, field, doc in (
        ("resilience_jobs_active", "active", "Jobs running now (jobs:active)"),
        ("resilience_jobs_waiting_retry", "scheduled_retries", "Jobs waiting for a delayed run or retry"),
        ("resilience_dead_letter_entries", "dead_letter", "Entries in the dead-letter queue"),
        ("resilience_workers_alive", "workers_alive", "Workers with a recent heartbeat"),
    ):
        yield GaugeMetricFamily(name, doc, value=float(snap.get(field) or 0))
    states = GaugeMetricFamily("resilience_breaker_state", "1 for the current state of each circuit breaker",
                               labels=["breaker", "state"])
    for breaker, info in (snap.get("breakers") or {}).items():
        current = str(info.get("state", "unknown")) if isinstance(info, dict) else "malformed"
        for state in sorted({"closed", "open", "half_open", current}):
            states.add_metric([str(breaker), state], 1.0 if state == current else 0.0)
    yield states


def _health_gauges(report: dict[str, Any]) -> Iterable[Metric]:
    checks = report.get("checks") or {}
    redis_check = checks.get("redis") or {}
    yield GaugeMetricFamily("resilience_redis_up", "1 when this worker's last Redis PING succeeded",
                            value=1.0 if redis_check.get("ok") else 0.0)
    broker = checks.get("broker") or {}
    yield GaugeMetricFamily("resilience_broker_connected", "1 when the worker's consumer is connected",
                            value=1.0 if broker.get("ok") else 0.0)
    loop = checks.get("consumer") or {}
    if loop.get("tick_age_sec") is not None:
        yield GaugeMetricFamily("resilience_consumer_loop_tick_age_seconds",
                                "Seconds since the consumer's event loop last ran", value=float(loop["tick_age_sec"]))
    yield GaugeMetricFamily("resilience_worker_healthy", "1 when /health answers 200",
                            value=1.0 if report.get("status") == "ok" else 0.0)
    check_family = GaugeMetricFamily("resilience_health_check_ok", "1 per passing health check", labels=["check"])
    for name, result in checks.items():
        check_family.add_metric([name], 1.0 if (result or {}).get("ok") else 0.0)
    yield check_family


class _Forward:
    """Expose another registry's metrics through a per-scrape registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


def exposition(state: StateCollector | None = None) -> bytes:
    """The Prometheus text of this worker: every process's counters plus the gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if _multiprocess_dir:
        MultiProcessCollector(registry, path=_multiprocess_dir)
    else:
        registry.register(_Forward(REGISTRY))
    if state is not None:
        registry.register(state)
    return generate_latest(registry)


# -- the job lifecycle, counted where it happens -----------------------------------------------

_started: dict[str, float] = {}


def _name(sender: Any) -> str:
    return str(getattr(sender, "name", None) or sender or "unknown")


def _safely(fn: Callable[..., None]) -> Callable[..., None]:
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # metrics never break a job
            log.exception("metrics: %s failed", fn.__name__)

    wrapper.__name__ = fn.__name__
    return wrapper


@_safely
def on_task_prerun(sender=None, task_id=None, **_: Any) -> None:
    jobs_started.labels(task=_name(sender)).inc()
    if task_id:
        _started[task_id] = time.monotonic()


@_safely
def on_task_postrun(sender=None, task_id=None, **_: Any) -> None:
    began = _started.pop(task_id, None) if task_id else None
    if began is not None:
        job_runtime.labels(task=_name(sender)).observe(time.monotonic() - began)


@_safely
def on_task_success(sender=None, **_: Any) -> None:
    jobs_succeeded.labels(task=_name(sender)).inc()


@_safely
def on_task_retry(sender=None, **_: Any) -> None:
    jobs_retried.labels(task=_name(sender)).inc()


@_safely
def on_task_failure(sender=None, exception=None, **_: Any) -> None:
    """A failure that reaches Celery was not retried: on this platform it goes to the dead-letter queue."""
    from resilience.settings import get_settings

    name = _name(sender)
    jobs_failed.labels(task=name).inc()
    if get_settings().feature_dead_letter and getattr(sender, "dead_letter", True):
        jobs_dead_lettered.labels(task=name).inc()


def connect_signals() -> None:
    """Count the job lifecycle in the process that runs the job (pool processes)."""
    from celery import signals

    for signal, handler in ((signals.task_prerun, on_task_prerun), (signals.task_postrun, on_task_postrun),
                            (signals.task_success, on_task_success), (signals.task_retry, on_task_retry),
                            (signals.task_failure, on_task_failure)):
        signal.connect(handler, weak=False, dispatch_uid=f"resilience.metrics.{handler.__name__}")
