"""The alert rules, each with its threshold setting: every alert the platform sends is built here.

Each rule function builds its alert (level, title, message, component and
context of the DESIGN.md payload) and hands it to :func:`resilience.observability.alerts.alert`;
no other module builds an alert. Called when something happens:

* :func:`redis_unreachable`: a Redis connection (``broker``, ``store``,
  ``backend``, ...; the subject) unreachable for longer than
  ``ALERT_REDIS_DOWN_SEC`` -> critical, rule ``redis_unreachable``. The
  connection state (:mod:`resilience.core.connection`) tells :class:`ConnectionAlerts`
  once per outage;
* :func:`breaker_state_changed` (:mod:`resilience.breakers.breaker`, on each transition
  a process makes): rule ``breaker_state``, subject ``<breaker>:<state>``, so an
  "open" and the following "closed" are two alerts, each deduplicated on its own;
  ``open`` is critical, the others informational;
* :func:`stuck_jobs_recovered` (:mod:`resilience.recovery.sweeper`, after a sweep that
  acted): rule ``stuck_jobs_recovered``, warning;
* :func:`job_failed` (:mod:`resilience.observability.tracking`, ``ALERT_ON_JOB_FAILURE``),
  :func:`redis_full` (a worker's health monitor);
* :func:`redis_failover` (:mod:`resilience.core.sentinel`): Sentinel promoted a new
  primary -> warning, rule ``redis_failover``, subject ``<master>:<new primary>``,
  so every process that notices the same failover shares one alert.

Evaluated periodically by the beat task ``resilience.evaluate_alerts``
(every ``ALERT_EVALUATE_INTERVAL_SEC``), see :func:`evaluate`:

* ``error_rate``: more than ``ALERT_ERROR_RATE_PER_MIN`` errors recorded in
  ``errors:timeline`` in the last 60 s;
* ``queue_backlog``: a queue holding more than ``ALERT_QUEUE_BACKLOG`` jobs;
* ``workers_low``: fewer than ``ALERT_MIN_WORKERS`` workers whose heartbeat in
  ``workers:heartbeats`` is within ``WORKER_HEARTBEAT_TIMEOUT_SEC``;
* ``dead_letter_growth``: ``jobs:dead_letter`` grew by ``ALERT_DEAD_LETTER_GROWTH``
  or more within ``ALERT_WINDOW_SEC`` (length samples kept in
  ``alerts:dead_letter:samples``).

Every check reads Redis, logs and returns quietly when it cannot. A key of
the wrong type is reported once (:mod:`resilience.core.quarantine`) and reads as
empty; a dead-letter length sample that is not ``<epoch ms>:<length>`` is
moved to the quarantine; one rule's failure never stops the others.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from resilience.core.connection import ConnectionObserver
from resilience.core.keys import keys
from resilience.core.quarantine import Bad, Batch, Reply
from resilience.core.settings import get_settings
from resilience.core.store import get_redis
from resilience.observability.alerts import alert, send_due_summaries

__all__ = [
    "ConnectionAlerts", "breaker_state_changed", "check_dead_letter_growth", "check_error_rate", "check_queue_backlog",
    "check_workers", "evaluate", "job_failed", "redis_failover", "redis_full", "redis_unreachable",
    "stuck_jobs_recovered",
]

log = logging.getLogger(__name__)


# -- called by other features -------------------------------------------------------------

def redis_unreachable(seconds: float, *, connection: str = "redis", last_error: str | None = None) -> bool:
    """A Redis connection has been unreachable for ``seconds``: alert past ``ALERT_REDIS_DOWN_SEC``.

    Context: ``connection``, ``down_for_sec``, ``threshold_sec``, ``last_error``.
    """
    threshold = get_settings().alert_redis_down_sec
    if seconds < threshold:
        return False
    alert("redis_unreachable", connection, level="critical", title=f"Redis {connection} unreachable",
          message=f"the {connection} connection has been down for {seconds:.0f}s (threshold {threshold}s)",
          component="redis",
          context={"connection": connection, "down_for_sec": round(seconds, 1), "threshold_sec": threshold,
                   "last_error": last_error})
    return True


def redis_failover(previous: str, primary: str, *, master: str = "") -> None:
    """Sentinel promoted a new Redis primary: one warning per new primary (subject: its address).

    Context: ``master``, ``primary``, ``previous``.
    """
    alert("redis_failover", f"{master}:{primary}", level="warning", title="Redis failover",
          message=f"the sentinels promoted {primary} to primary of {master or 'Redis'} (was {previous}); "
                  "clients follow it, check why the old primary went down",
          component="redis", context={"master": master, "primary": primary, "previous": previous})


#: Past participles of the breaker states, for titles.
_BREAKER_TITLES = {"open": "opened", "closed": "closed", "half-open": "half-open"}


def breaker_state_changed(name: str, state: str, *, previous: str | None = None, failures: int | None = None,
                          reset_timeout_sec: float | None = None, error: str | None = None) -> None:
    """A circuit breaker changed state (``open`` is critical, others informational).

    Context: ``breaker``, ``state``, ``previous``, ``failures``, and ``error`` (the
    failure that opened it) when known.
    """
    came_from = f" ({previous} -> {state})" if previous else ""
    if state == "open":
        level = "critical"
        refused = f" for {reset_timeout_sec:g}s" if reset_timeout_sec is not None else ""
        message = f"calls through {name} are refused{refused}" + (
            f" after {failures} failures" if failures else "") + came_from
    elif state == "closed":
        level, message = "info", f"{name} recovered{came_from}"
    else:
        level, message = "info", f"{name} admits trial calls{came_from}"
    context: dict[str, Any] = {"breaker": name, "state": state, "previous": previous, "failures": failures}
    if error is not None:
        context["error"] = error
    alert("breaker_state", f"{name}:{state}", level=level,
          title=f"Circuit breaker {name} {_BREAKER_TITLES.get(state, state)}", message=message,
          component="breaker", context=context)


def stuck_jobs_recovered(count: int, job_ids: list[str] | None = None, *, subject: str = "sweep",
                         restored: int = 0, requeued: int = 0, stopped: int = 0,
                         dead_workers: list[str] | None = None) -> None:
    """The sweep recovered ``count`` stuck jobs (``restored`` orphaned messages, ``requeued`` jobs of
    dead workers, ``stopped`` jobs without progress).

    Context: ``count``, ``job_ids`` (at most 50), ``restored``, ``requeued``,
    ``stopped``, ``dead_workers``.
    """
    if count <= 0:
        return
    detail = f" ({restored} orphaned messages restored, {requeued} jobs of dead workers requeued, " \
             f"{stopped} jobs without progress stopped)" if restored or requeued or stopped else ""
    alert("stuck_jobs_recovered", subject, level="warning", title=f"{count} stuck jobs recovered",
          message=f"the stuck-job sweep recovered {count} jobs{detail}", component="sweeper",
          context={"count": count, "job_ids": list(job_ids or [])[:50], "restored": restored,
                   "requeued": requeued, "stopped": stopped, "dead_workers": list(dead_workers or [])})


def job_failed(record: dict[str, Any]) -> None:
    """A job failed for good (error tracking, with ``ALERT_ON_JOB_FAILURE`` on): rule ``job_failed``,
    subject the error's fingerprint, so one bug alerts once per window however many jobs it fails.

    ``record`` is the error record (:mod:`resilience.observability.tracking`). Context: ``task``,
    ``job_id``, ``fingerprint``, ``error_type``, ``worker``, ``args``, ``kwargs``.
    """
    context = record.get("context") or {}
    alert("job_failed", record["fingerprint"], level="warning",
          title=f"Job {record['task']} failed: {record['error_type']}", message=record["error_message"],
          component="task",
          context={"task": record["task"], "job_id": record["job_id"], "fingerprint": record["fingerprint"],
                   "error_type": record["error_type"], "worker": record["worker"], "args": context.get("args"),
                   "kwargs": context.get("kwargs")})


def redis_full(worker: str | None, error: str | None) -> None:
    """Redis reached ``maxmemory`` and refuses writes (a worker's health monitor): rule ``redis_full``,
    critical. Context: ``worker``, ``error``."""
    alert("redis_full", "redis", level="critical", title="Redis is full", component="redis",
          message="Redis reached maxmemory and refuses writes; free memory or raise maxmemory",
          context={"worker": worker, "error": error})


class ConnectionAlerts(ConnectionObserver):
    """The alerting feature's connection observer: a connection down longer than
    ``ALERT_REDIS_DOWN_SEC`` raises :func:`redis_unreachable`."""

    def on_unreachable(self, component: str, down_for_sec: float, last_error: str | None) -> None:
        redis_unreachable(down_for_sec, connection=component, last_error=last_error)


# -- periodic ------------------------------------------------------------------------------

def check_error_rate(now: float | None = None) -> bool:
    """Alert when more than ``ALERT_ERROR_RATE_PER_MIN`` errors were recorded in the last minute."""
    now = time.time() if now is None else now
    threshold = get_settings().alert_error_rate_per_min
    key = keys().errors_timeline
    pipe = get_redis().pipeline(transaction=False)
    pipe.zcount(key, int((now - 60) * 1000), "+inf")
    (count,) = _read(pipe, [Reply(key, "sorted set", 0)])
    if count <= threshold:
        return False
    alert("error_rate", "all", level="warning", title="High error rate",
          message=f"{count} errors in the last minute (threshold {threshold}/min)", component="tracking",
          context={"errors_last_minute": count, "threshold_per_min": threshold})
    return True


def check_queue_backlog(queues: list[str]) -> list[str]:
    """Alert for each queue holding more than ``ALERT_QUEUE_BACKLOG`` jobs; return those queues."""
    threshold = get_settings().alert_queue_backlog
    pipe = get_redis().pipeline(transaction=False)
    for name in queues:
        pipe.llen(name)
    over = []
    for name, depth in zip(queues, _read(pipe, [Reply(name, "list", 0) for name in queues]), strict=True):
        if depth > threshold:
            over.append(name)
            alert("queue_backlog", name, level="warning", title=f"Queue {name} backlog",
                  message=f"{depth} jobs waiting in {name} (threshold {threshold})", component="queue",
                  context={"queue": name, "depth": depth, "threshold": threshold})
    return over


def check_workers(now: float | None = None) -> bool:
    """Alert when fewer than ``ALERT_MIN_WORKERS`` workers have a recent heartbeat."""
    settings = get_settings()
    now = time.time() if now is None else now
    key = keys().worker_heartbeats
    pipe = get_redis().pipeline(transaction=False)
    pipe.zcount(key, now - settings.worker_heartbeat_timeout_sec, "+inf")
    (alive,) = _read(pipe, [Reply(key, "sorted set", None)])
    if alive is None or alive >= settings.alert_min_workers:
        return False
    alert("workers_low", "cluster", level="critical", title="Too few live workers",
          message=f"{alive} live workers (minimum {settings.alert_min_workers})", component="workers",
          context={"alive": alive, "minimum": settings.alert_min_workers})
    return True


def check_dead_letter_growth(now: float | None = None) -> bool:
    """Alert when ``jobs:dead_letter`` grew by ``ALERT_DEAD_LETTER_GROWTH`` within ``ALERT_WINDOW_SEC``.

    Each evaluation adds a length sample; growth is the current length minus the
    smallest sample still inside the window (trims and replays shrink the list).
    """
    settings = get_settings()
    now = time.time() if now is None else now
    now_ms = int(now * 1000)
    k = keys()
    client = get_redis()
    pipe = client.pipeline(transaction=False)
    pipe.llen(k.dead_letter)
    (length,) = _read(pipe, [Reply(k.dead_letter, "list", None)])
    if length is None:
        return False
    pipe = client.pipeline(transaction=True)
    pipe.zadd(k.alert_dead_letter_samples, {f"{now_ms}:{length}": now_ms})
    pipe.zremrangebyscore(k.alert_dead_letter_samples, "-inf", f"({now_ms - settings.alert_window_sec * 1000}")
    pipe.zrange(k.alert_dead_letter_samples, 0, -1)
    pipe.pexpire(k.alert_dead_letter_samples, settings.alert_window_sec * 2000)
    samples = _read(pipe, [Reply(k.alert_dead_letter_samples, "sorted set", list)] * 4)[2]
    lengths, bad = [], Batch("alert rules")
    for sample in samples:
        _, _, counted = sample.rpartition(":")
        if counted.isdigit():
            lengths.append(int(counted))
        else:
            bad.add(Bad(k.alert_dead_letter_samples, None, sample, "not <epoch ms>:<length>", "zset", sample))
    bad.flush(client)
    growth = length - min(lengths, default=length)
    if growth < settings.alert_dead_letter_growth:
        return False
    alert("dead_letter_growth", "jobs:dead_letter", level="warning", title="Dead-letter queue growing",
          message=f"{growth} jobs dead-lettered within {settings.alert_window_sec}s ({length} in total; "
                  f"threshold {settings.alert_dead_letter_growth})", component="dead_letter",
          context={"growth": growth, "length": length, "threshold": settings.alert_dead_letter_growth})
    return True


def _read(pipe, reads: list[Reply]) -> list:
    """A pipeline's replies; a key of the wrong type is reported once and reads as its default."""
    batch = Batch("alert rules")
    try:
        return batch.execute(pipe, reads)
    finally:
        batch.flush()


def evaluate(queues: list[str] | None = None, now: float | None = None) -> list[str]:
    """Run every periodic rule once and send due summaries; return the rules that fired."""
    if not get_settings().feature_alerting:
        return []
    fired: list[str] = []
    checks = [
        ("error_rate", lambda: check_error_rate(now)),
        ("queue_backlog", lambda: bool(check_queue_backlog(queues or ["celery"]))),
        ("workers_low", lambda: check_workers(now)),
        ("dead_letter_growth", lambda: check_dead_letter_growth(now)),
        ("summaries", lambda: send_due_summaries(now) and False),
    ]
    for name, check in checks:
        try:
            if check():
                fired.append(name)
        except Exception as exc:  # one rule's failure does not stop the others
            log.warning("alert rule %s not evaluated: %s", name, exc)
    return fired
