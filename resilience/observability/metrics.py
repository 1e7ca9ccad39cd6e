"""Prometheus metrics of a worker, served at ``GET /metrics`` by its health server.

Counters any feature may increment, from any process of the worker::

    from resilience.observability import metrics
    metrics.stuck_jobs_recovered.labels(task=name, action="requeued").inc()
    metrics.alerts_sent.labels(rule="breaker_state", level="critical").inc()
    metrics.alerts_suppressed.labels(rule="breaker_state").inc()
    metrics.redis_reconnects.labels(client="publisher").inc()
    metrics.redis_failovers.labels(master="mymaster").inc()

The job lifecycle (started, succeeded, failed, retried, run time) is counted
here from Celery's task signals. So is ``jobs_dead_lettered`` for jobs that
fail in their run (a failure that reaches Celery was not retried, and the
platform dead-letters it); a feature that dead-letters a job outside its run's
failure path (the sweep, a poison job, a replay) increments it itself::

    metrics.jobs_dead_lettered.labels(task="billing.charge").inc()

**Counting is in memory, flushing is in batches.** Jobs run in prefork pool
processes, and so do the features that count things (dead letters, breakers,
alerts), while ``/metrics`` is served by the worker's main process. An
increment only adds to a number in this process's memory (no file, no
system call: counting a job costs a few microseconds). Each pool process
writes its totals to a file of its own in its worker's directory
(``<RESILIENCE_DATA_DIR>/metrics/<node name>-<boot id>/<pid>-<token>.json``,
written to a temporary name and renamed, so a reader never sees half a file)
at most every :data:`FLUSH_INTERVAL_SEC` while it has counted something new,
and once more when the pool process exits (Celery's
``worker_process_shutdown``) or the interpreter does. ``/metrics`` in the main
process adds up every file of its directory and its own in-memory values, so
a count made in a pool process shows within about one flush interval.

Counts of pool processes that died stay counted up to their last flush: a
pool process killed with SIGKILL (or the OOM killer) loses what it counted in
its last flush interval at most (one second by default); one that exits
normally (``max_tasks_per_child``, warm shutdown) loses nothing. Workers with
a threads or solo pool run everything in one process and read their
in-memory values directly.

This module uses prometheus-client for the text format only (its metric
families and ``generate_latest``); it does not change prometheus-client's
global value class, its default registry or ``PROMETHEUS_MULTIPROC_DIR``, so
an application's own prometheus-client metrics behave as without the
platform.

Gauges (queue depths, active and waiting-retry jobs, dead letters, breaker
states, workers alive) are read from Redis at scrape time and reused for
``METRICS_CACHE_SEC``; Redis and loop state come from the health monitor's
cached checks, so a scrape never waits on a down Redis.
"""

from __future__ import annotations

import atexit
import bisect
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from celery import signals
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString

from resilience.core.connection import ConnectionObserver
from resilience.core.observe import never_raises
from resilience.core.settings import get_settings

__all__ = [
    "ConnectionCounts", "CONTENT_TYPE_LATEST", "FLUSH_INTERVAL_SEC", "REGISTRY", "alerts_sent", "alerts_suppressed",
    "exposition",
    "flush", "job_runtime", "jobs_dead_lettered", "jobs_failed", "jobs_retried", "jobs_started", "jobs_succeeded",
    "redis_failovers", "redis_reconnects", "redis_disconnects", "stuck_jobs_recovered", "use_multiprocess_dir",
]

log = logging.getLogger(__name__)

#: Seconds between two writes of a pool process's counts (only when it counted something new).
FLUSH_INTERVAL_SEC = 1.0


# -- this process's values ---------------------------------------------------------------------

class _Values:
    """This process's counts, in memory, and the file they are flushed to.

    A cell is a list of floats: ``[value]`` for a counter, the bucket counts
    (not cumulative) then the sum for a histogram. Cells are made once per
    label set and kept, so a child (``counter.labels(...)``) holds its cell.
    After a fork the child process zeroes every cell (its parent's counts are
    its parent's) and flushes to a file of its own.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cells: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        self.dirty = False
        self.directory: Path | None = None   # the worker's directory (prefork), else None
        self.reader_pid: int | None = None   # the process that serves /metrics (it reads, never writes)
        self.file_name = ""
        self._flusher: threading.Thread | None = None
        self._started = False                # flusher started (or not needed) in this process
        self._stop = threading.Event()

    def cell(self, key: tuple[str, tuple[str, ...]], size: int) -> list[float]:
        with self.lock:
            found = self.cells.get(key)
            if found is None:
                found = self.cells[key] = [0.0] * size
            return found

    def snapshot(self) -> dict[tuple[str, tuple[str, ...]], list[float]]:
        with self.lock:
            return {key: list(cell) for key, cell in self.cells.items() if any(cell)}

    # -- flushing (pool processes) --

    def counted(self) -> None:
        """Called after an increment: start this process's flusher on its first count."""
        if not self._started:
            self._start_flusher()

    def _start_flusher(self) -> None:
        with self.lock:
            if self._started:
                return
            self._started = True
            if self.directory is None or os.getpid() == self.reader_pid:
                return  # values are read from memory: nothing to flush
            self.file_name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
            self._stop = threading.Event()
            self._flusher = threading.Thread(target=self._run, name="resilience-metrics-flush", daemon=True)
            self._flusher.start()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_SEC):
            self.flush()

    def flush(self) -> None:
        """Write this process's totals to its file, if it counted something since the last write."""
        directory = self.directory
        if directory is None or not self.file_name or os.getpid() == self.reader_pid:
            return
        with self.lock:
            if not self.dirty:
                return
            self.dirty = False
            rows = [[name, list(labels), list(cell)] for (name, labels), cell in self.cells.items() if any(cell)]
        path = directory / self.file_name
        temporary = directory / f".{self.file_name}.tmp"
        try:
            temporary.write_text(json.dumps({"pid": os.getpid(), "values": rows}))
            os.replace(temporary, path)
        except OSError as exc:  # the directory went away (worker shutdown): counts are not served any more
            log.debug("metrics flush to %s failed: %s", path, exc)
            with self.lock:
                self.dirty = True

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        for cell in self.cells.values():
            for i in range(len(cell)):
                cell[i] = 0.0
        self.dirty = False
        self.file_name = ""
        self._flusher = None
        self._started = False

    def files(self) -> list[Path]:
        """Every flushed file of this worker's directory except this process's own."""
        if self.directory is None:
            return []
        try:
            return [f for f in self.directory.glob("*.json") if f.name != self.file_name]
        except OSError:
            return []


_values = _Values()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_values.after_fork_in_child)
atexit.register(lambda: _values.flush())


def flush(**_: Any) -> None:
    """Write this process's counts now (pool process exit; safe to call anywhere)."""
    try:
        _values.flush()
    except Exception:  # metrics never break what they observe
        log.exception("metrics flush failed")


# -- counters and the histogram ------------------------------------------------------------------

class _Family:
    """A labelled metric; ``labels(...)`` gives the child to increment or observe."""

    type = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: list[_Family] | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        if registry is not None:
            registry.append(self)

    def labels(self, *values: Any, **kwargs: Any) -> Any:
        if kwargs:
            if values or len(kwargs) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels must be exactly {', '.join(self.labelnames)}")
            try:
                key = tuple(str(kwargs[n]) for n in self.labelnames)
            except KeyError as missing:
                raise ValueError(f"{self.name}: missing label {missing}") from None
        else:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels must be exactly {', '.join(self.labelnames)}")
            key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, self._child(_values.cell((self.name, key), self._size())))
        return child

    def _size(self) -> int:
        return 1

    def _child(self, cell: list[float]) -> Any:
        raise NotImplementedError

    def samples(self, labels: dict[str, str], cell: Sequence[float]) -> Iterable[tuple[str, dict[str, str], float]]:
        raise NotImplementedError


class _CounterChild:
    __slots__ = ("_cell",)

    def __init__(self, cell: list[float]) -> None:
        self._cell = cell

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be increased")
        with _values.lock:
            self._cell[0] += amount
            _values.dirty = True
        _values.counted()


class Counter(_Family):
    """A counter (exposed as ``<name>_total``), counted in memory."""

    type = "counter"

    def _child(self, cell: list[float]) -> _CounterChild:
        return _CounterChild(cell)

    def samples(self, labels, cell):
        yield f"{self.name}_total", labels, cell[0]


class _HistogramChild:
    __slots__ = ("_cell", "_bounds")

    def __init__(self, cell: list[float], bounds: tuple[float, ...]) -> None:
        self._cell, self._bounds = cell, bounds

    def observe(self, amount: float) -> None:
        index = bisect.bisect_left(self._bounds, amount)  # the first bucket whose bound is >= amount
        with _values.lock:
            self._cell[index] += 1
            self._cell[-1] += amount
            _values.dirty = True
        _values.counted()


class Histogram(_Family):
    """A histogram with fixed buckets (the last is +Inf), counted in memory."""

    type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: list[_Family] | None = None) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        self.bounds = bounds if bounds and math.isinf(bounds[-1]) else (*bounds, math.inf)
        super().__init__(name, documentation, labelnames, registry)

    def _size(self) -> int:
        return len(self.bounds) + 1  # the buckets, then the sum

    def _child(self, cell: list[float]) -> _HistogramChild:
        return _HistogramChild(cell, self.bounds)

    def samples(self, labels, cell):
        cumulative = 0.0
        for bound, count in zip(self.bounds, cell, strict=False):
            cumulative += count
            yield f"{self.name}_bucket", {**labels, "le": floatToGoString(bound)}, cumulative
        yield f"{self.name}_sum", labels, cell[-1]
        yield f"{self.name}_count", labels, cumulative


_FAMILIES: list[_Family] = []

jobs_started = Counter("resilience_jobs_started", "Job runs started", ["task"], registry=_FAMILIES)
jobs_succeeded = Counter("resilience_jobs_succeeded", "Job runs that succeeded", ["task"], registry=_FAMILIES)
jobs_failed = Counter("resilience_jobs_failed", "Job runs that failed for good (not retried)", ["task"],
                      registry=_FAMILIES)
jobs_retried = Counter("resilience_jobs_retried", "Job runs that ended in a scheduled retry", ["task"],
                       registry=_FAMILIES)
jobs_dead_lettered = Counter("resilience_jobs_dead_lettered", "Jobs written to the dead-letter queue", ["task"],
                             registry=_FAMILIES)
job_runtime = Histogram("resilience_job_runtime_seconds", "Run time of job bodies", ["task"], registry=_FAMILIES,
                        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
stuck_jobs_recovered = Counter("resilience_stuck_jobs_recovered", "Stuck or abandoned jobs recovered by the sweep",
                               ["task", "action"], registry=_FAMILIES)
redis_reconnects = Counter("resilience_redis_reconnects", "Redis connections re-established after a loss",
                           ["client"], registry=_FAMILIES)
redis_disconnects = Counter("resilience_redis_disconnects", "Redis connections found lost",
                            ["client"], registry=_FAMILIES)
redis_failovers = Counter("resilience_redis_failovers", "Changes of the Redis primary seen (Sentinel failovers)",
                          ["master"], registry=_FAMILIES)
alerts_sent = Counter("resilience_alerts_sent", "Alerts delivered", ["rule", "level"], registry=_FAMILIES)
alerts_suppressed = Counter("resilience_alerts_suppressed", "Alerts withheld by the repeat window", ["rule"],
                            registry=_FAMILIES)

_BY_NAME = {family.name: family for family in _FAMILIES}


class _CountsCollector:
    """The counters and the histogram: this process's values, plus every flushed file when ``files``."""

    def __init__(self, files: bool) -> None:
        self._files = files

    def collect(self) -> Iterable[Metric]:
        totals = _values.snapshot()
        if self._files:
            for path in _values.files():
                _add_file(totals, path)
        for family in _FAMILIES:
            metric = Metric(family.name, family.documentation, family.type)
            for (name, labelvalues), cell in sorted(totals.items()):
                if name == family.name:
                    labels = dict(sorted(zip(family.labelnames, labelvalues, strict=True)))
                    for sample_name, sample_labels, value in family.samples(labels, cell):
                        metric.add_sample(sample_name, dict(sorted(sample_labels.items())), value)
            yield metric


def _add_file(totals: dict[tuple[str, tuple[str, ...]], list[float]], path: Path) -> None:
    try:
        rows = json.loads(path.read_text())["values"]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # gone since the glob, or not ours
        log.debug("metrics file %s skipped: %s", path, exc)
        return
    for row in rows:
        try:
            name, labelvalues, cell = row
            family = _BY_NAME.get(name)
            if family is None or len(labelvalues) != len(family.labelnames) or len(cell) != family._size():
                continue
            key = (name, tuple(str(v) for v in labelvalues))
            into = totals.setdefault(key, [0.0] * len(cell))
            for i, value in enumerate(cell):
                into[i] += float(value)
        except (ValueError, TypeError):
            continue


#: This process's counters as a prometheus-client registry of its own (never
#: prometheus-client's global one): ``generate_latest(metrics.REGISTRY)``.
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(_CountsCollector(files=False))


# -- the worker's directory ----------------------------------------------------------------------

def metrics_root(data_dir: str) -> Path:
    return Path(data_dir).expanduser().resolve() / "metrics"


def use_multiprocess_dir(directory: str | os.PathLike) -> None:
    """Make this process the reader of ``directory``, where the processes it forks flush their counts.

    Call in the worker's main process before the pool starts. The directory is
    emptied first: counts left by an earlier process tree must not be counted.
    """
    path = Path(directory)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    with _values.lock:
        _values.directory = path
        _values.reader_pid = os.getpid()


def multiprocess_dir() -> str | None:
    """The directory of this worker's flushed counts, or None (in-memory values only)."""
    return str(_values.directory) if _values.directory is not None else None


def remove_multiprocess_dir() -> None:
    """Forget this worker's flushed counts (at shutdown, once its pool has stopped)."""
    with _values.lock:
        directory, _values.directory, _values.reader_pid = _values.directory, None, None
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def prune_stale_dirs(root: Path, node: str, keep: Path) -> None:
    """Delete count directories of earlier runs of the same node name."""
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


def exposition(state: StateCollector | None = None) -> bytes:
    """The Prometheus text of this worker: every process's counters plus the gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_CountsCollector(files=True))
    if state is not None:
        registry.register(state)
    return generate_latest(registry)


# -- the job lifecycle, counted where it happens -----------------------------------------------

_started: dict[str, float] = {}


def _name(sender: Any) -> str:
    return str(getattr(sender, "name", None) or sender or "unknown")


@never_raises()
def on_task_prerun(sender=None, task_id=None, **_: Any) -> None:
    jobs_started.labels(task=_name(sender)).inc()
    if task_id:
        _started[task_id] = time.monotonic()


@never_raises()
def on_task_postrun(sender=None, task_id=None, **_: Any) -> None:
    began = _started.pop(task_id, None) if task_id else None
    if began is not None:
        job_runtime.labels(task=_name(sender)).observe(time.monotonic() - began)


@never_raises()
def on_task_success(sender=None, **_: Any) -> None:
    jobs_succeeded.labels(task=_name(sender)).inc()


@never_raises()
def on_task_retry(sender=None, **_: Any) -> None:
    jobs_retried.labels(task=_name(sender)).inc()


@never_raises()
def on_task_failure(sender=None, exception=None, **_: Any) -> None:
    """A failure that reaches Celery was not retried: on this platform it goes to the dead-letter queue."""
    name = _name(sender)
    jobs_failed.labels(task=name).inc()
    if get_settings().feature_dead_letter and getattr(sender, "dead_letter", True):
        jobs_dead_lettered.labels(task=name).inc()


#: ``(signal, handler, dispatch_uid)``: the job lifecycle counted in the process that runs the job
#: (pool processes), and a pool process's counts flushed when it exits.
SIGNAL_HANDLERS: tuple[tuple[Any, Callable[..., None], str], ...] = tuple(
    (signal, handler, f"resilience.metrics.{handler.__name__}")
    for signal, handler in ((signals.task_prerun, on_task_prerun), (signals.task_postrun, on_task_postrun),
                            (signals.task_success, on_task_success), (signals.task_retry, on_task_retry),
                            (signals.task_failure, on_task_failure), (signals.worker_process_shutdown, flush)))


def connect_signals() -> None:
    """Connect :data:`SIGNAL_HANDLERS` (the health feature does so when it is on)."""
    for signal, handler, uid in SIGNAL_HANDLERS:
        signal.connect(handler, weak=False, dispatch_uid=uid)


class ConnectionCounts(ConnectionObserver):
    """The health feature's connection observer: counts ``redis_disconnects`` and ``redis_reconnects``."""

    def on_down(self, component: str, error: str | None) -> None:
        redis_disconnects.labels(client=component).inc()

    def on_up(self, component: str, down_for_sec: float) -> None:
        redis_reconnects.labels(client=component).inc()
