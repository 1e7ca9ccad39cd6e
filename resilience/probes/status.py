"""The job health dashboard: one snapshot of what Redis says about the platform.

:func:`collect` reads queue depths, active jobs, waiting retries, the
dead-letter count, workers with their heartbeat ages, breakers and the top
error patterns in one pipeline; :func:`render` draws it as rich tables. Both
``resilience status`` and the demo's live view use them.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rich.console import Group
from rich.table import Table

from resilience.breakers.breaker import read_record
from resilience.core import sentinel
from resilience.core.display import cell
from resilience.core.errors import StoreUnavailable
from resilience.core.keys import keys
from resilience.core.quarantine import INTEGER, TEXT, Batch, Reply, Shape
from resilience.core.queues import queue_names
from resilience.core.redact import redact
from resilience.core.runtime import bound_app, transport_options
from resilience.core.settings import get_settings
from resilience.core.store import app_broker_url, get_redis

DEFAULT_QUEUES = ("celery",)

#: A ``workers:health`` registration, as far as the dashboard reads it.
_REGISTRATION = Shape({"url": TEXT})


def _queues(app=None) -> list[str]:
    return queue_names(app) if app is not None else list(DEFAULT_QUEUES)


def _number(value: Any, kind: type = int, default: Any = 0) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


def collect(app=None, *, now: float | None = None, top_errors: int = 5, client=None) -> dict[str, Any]:
    """A JSON-ready snapshot of the platform's state.

    Malformed entries (a breaker that is not JSON, a non-numeric count) are
    reported as such, never raised; a key of the wrong type reads as empty and
    is named in ``problems``. An unreachable Redis raises
    :class:`~resilience.core.errors.StoreUnavailable`.
    """
    now = time.time() if now is None else now
    settings = get_settings()
    k = keys()
    client = client or get_redis()
    queues = _queues(app)
    unacked_key = k.kombu_unacked(transport_options(app) if app is not None else None)
    reads = [*(Reply(queue, "list", 0) for queue in queues), Reply(k.active, "hash", 0),
             Reply(k.scheduled, "sorted set", 0), Reply(k.dead_letter, "list", 0),
             Reply(k.worker_heartbeats, "sorted set", list), Reply(k.breakers_status, "hash", dict),
             Reply(k.errors_patterns, "hash", dict), Reply(unacked_key, "hash", 0),
             Reply(k.worker_health, "hash", dict), Reply(k.quarantine, "hash", 0)]
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
    pipe.hlen(k.active)
    pipe.zcard(k.scheduled)
    pipe.llen(k.dead_letter)
    pipe.zrange(k.worker_heartbeats, 0, -1, withscores=True)
    pipe.hgetall(k.breakers_status)
    pipe.hgetall(k.errors_patterns)
    pipe.hlen(unacked_key)
    pipe.hgetall(k.worker_health)
    pipe.hlen(k.quarantine)
    seen = Batch("status", move=False)
    try:
        results = seen.execute(pipe, reads)
    except (redis.ConnectionError, redis.TimeoutError) as err:
        where = redact(settings.redis_url) if settings.redis_url else "the embedded Redis"
        raise StoreUnavailable(f"Redis at {where} is unreachable: {err}") from err
    depths = {q: _number(n) for q, n in zip(queues, results[: len(queues)], strict=True)}
    active, scheduled, dead, beats, breakers_raw, patterns, unacked, health_raw, quarantined = results[len(queues):]

    workers = []
    for worker, beat in beats:
        age = max(0.0, now - _number(beat, float, now))
        entry: dict[str, Any] = {"worker": worker, "heartbeat_age_sec": round(age, 1),
                                 "alive": age <= settings.worker_heartbeat_timeout_sec}
        registration = seen.value(health_raw[worker], _REGISTRATION, source=k.worker_health, field=worker) \
            if worker in health_raw else None
        if registration and registration.get("url"):
            entry["health_url"] = registration["url"]
        workers.append(entry)
    breakers = {name: read_record(raw) for name, raw in breakers_raw.items()}
    counts = []
    for pattern, raw in patterns.items():
        count = seen.value(raw, INTEGER, source=k.errors_patterns, field=pattern)
        if count is not None:
            counts.append((pattern, count))
    top = sorted(counts, key=lambda pc: (-pc[1], pc[0]))[:top_errors]
    return {
        "timestamp": now,
        **_redis_topology(settings, app),
        "queues": depths,
        "pending": sum(depths.values()),
        "active": _number(active),
        "unacked": _number(unacked),
        "scheduled_retries": _number(scheduled),
        "dead_letter": _number(dead),
        "quarantined": _number(quarantined),
        "workers": workers,
        "workers_alive": sum(1 for w in workers if w["alive"]),
        "breakers": breakers,
        "top_errors": [{"pattern": p, "count": c} for p, c in top],
        "problems": seen.problems,
    }


def _redis_topology(settings, app) -> dict[str, Any]:
    """``{"redis": {...}}`` under Sentinel: the current primary and each replica's lag (else nothing)."""

    url = settings.redis_url or app_broker_url(app if app is not None else bound_app())
    if not url or not sentinel.is_sentinel_url(url):  # the embedded Redis is never under Sentinel
        return {}
    try:
        return {"redis": sentinel.replication(url, settings, app)}
    except Exception as err:  # noqa: BLE001 - shown, never raised: the rest of the dashboard still stands
        return {"redis": {"mode": "sentinel", "error": f"{type(err).__name__}: {err}"}}


def _topology_table(view: dict[str, Any]) -> Table:
    table = Table(title="Redis (Sentinel)")
    table.add_column("node")
    table.add_column("role")
    table.add_column("state")
    table.add_column("lag (bytes)", justify="right")
    if "error" in view:
        table.add_row("(sentinels)", "", cell(view["error"], limit=200), "")
        return table
    table.add_row(cell(view["primary"]), cell(f"primary of {view['master_name']}"),
                  "DOWN" if view.get("primary_down") else "up", "")
    for replica in view["replicas"]:
        table.add_row(cell(replica["address"]), "replica",
                      cell(("up" if replica["up"] else "DOWN") + f", link {replica['link']}"),
                      cell("" if replica["lag_bytes"] is None else replica["lag_bytes"]))
    return table


def render(snapshot: dict[str, Any]) -> Group:
    """Rich tables of a snapshot (every value from Redis shown as text, never as markup)."""
    jobs = Table(title="Jobs", show_header=True)
    for column in ("pending", "active", "waiting retries", "dead letters", "quarantined", "workers alive"):
        jobs.add_column(column, justify="right")
    jobs.add_row(*(cell(snapshot.get(name, 0)) for name in ("pending", "active", "scheduled_retries",
                                                             "dead_letter", "quarantined", "workers_alive")))

    queues = Table(title="Queues")
    queues.add_column("queue")
    queues.add_column("pending", justify="right")
    for name, depth in snapshot["queues"].items():
        queues.add_row(cell(name), cell(depth))

    workers = Table(title="Workers")
    workers.add_column("worker")
    workers.add_column("heartbeat age", justify="right")
    workers.add_column("state")
    workers.add_column("health")
    for w in snapshot["workers"]:
        workers.add_row(cell(w["worker"]), cell(f"{w['heartbeat_age_sec']:.1f}s"),
                        cell("alive" if w["alive"] else "DEAD"), cell(w.get("health_url", "")))

    breakers = Table(title="Circuit breakers")
    breakers.add_column("breaker")
    breakers.add_column("state")
    breakers.add_column("failures", justify="right")
    for name, b in snapshot["breakers"].items():
        breakers.add_row(cell(name), cell(b.get("state")), cell(b.get("failures", "")))
    if not snapshot["breakers"]:
        breakers.add_row("(none)", "", "")

    errors = Table(title="Top error patterns")
    errors.add_column("component:operation:error_type")
    errors.add_column("count", justify="right")
    for e in snapshot["top_errors"]:
        errors.add_row(cell(e["pattern"]), cell(e["count"]))
    parts = [jobs, queues, workers, breakers, errors]
    if snapshot.get("redis"):
        parts.insert(1, _topology_table(snapshot["redis"]))
    if snapshot.get("problems"):
        problems = Table(title="Unreadable records and keys (shown as empty)")
        problems.add_column("where: problem")
        for problem in snapshot["problems"]:
            problems.add_row(cell(problem, limit=300))
        parts.append(problems)
    return Group(*parts)
