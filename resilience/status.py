"""The job health dashboard: one snapshot of what Redis says about the platform.

:func:`collect` reads queue depths, active jobs, waiting retries, the
dead-letter count, workers with their heartbeat ages, breakers and the top
error patterns in one pipeline; :func:`render` draws it as rich tables. Both
``resilience status`` and the demo's live view use them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from rich.console import Group
from rich.table import Table

from resilience.errors import StoreUnavailable
from resilience.keys import keys
from resilience.redact import redact
from resilience.runtime import queue_names, transport_options
from resilience.settings import get_settings
from resilience.store import get_redis

DEFAULT_QUEUES = ("celery",)


def _queues(app=None) -> list[str]:
    return queue_names(app) if app is not None else list(DEFAULT_QUEUES)


def _number(value: Any, kind: type = int, default: Any = 0) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


def _json_object(raw: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def collect(app=None, *, now: float | None = None, top_errors: int = 5, client=None) -> dict[str, Any]:
    """A JSON-ready snapshot of the platform's state.

    Malformed entries (a breaker that is not JSON, a non-numeric count) are
    reported as such, never raised. An unreachable Redis raises
    :class:`~resilience.errors.StoreUnavailable`.
    """
    now = time.time() if now is None else now
    settings = get_settings()
    k = keys()
    client = client or get_redis()
    queues = _queues(app)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
    pipe.hlen(k.active)
    pipe.zcard(k.scheduled)
    pipe.llen(k.dead_letter)
    pipe.zrange(k.worker_heartbeats, 0, -1, withscores=True)
    pipe.hgetall(k.breakers_status)
    pipe.hgetall(k.errors_patterns)
    pipe.hlen(k.kombu_unacked(transport_options(app) if app is not None else None))
    pipe.hgetall(k.worker_health)
    try:
        results = pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError) as err:
        where = redact(settings.redis_url) if settings.redis_url else "the embedded Redis"
        raise StoreUnavailable(f"Redis at {where} is unreachable: {err}") from err
    depths = {q: _number(n) for q, n in zip(queues, results[: len(queues)], strict=True)}
    active, scheduled, dead, beats, breakers_raw, patterns, unacked, health_raw = results[len(queues):]

    workers = []
    for worker, beat in beats:
        age = max(0.0, now - _number(beat, float, now))
        entry: dict[str, Any] = {"worker": worker, "heartbeat_age_sec": round(age, 1),
                                 "alive": age <= settings.worker_heartbeat_timeout_sec}
        registration = _json_object(health_raw.get(worker))
        if registration and registration.get("url"):
            entry["health_url"] = str(registration["url"])
        workers.append(entry)
    breakers = {}
    for name, raw in breakers_raw.items():
        breakers[name] = _json_object(raw) or {"state": "malformed", "raw": str(raw)[:200]}
    top = sorted(((p, _number(c)) for p, c in patterns.items()), key=lambda pc: (-pc[1], pc[0]))[:top_errors]
    return {
        "timestamp": now,
        "queues": depths,
        "pending": sum(depths.values()),
        "active": _number(active),
        "unacked": _number(unacked),
        "scheduled_retries": _number(scheduled),
        "dead_letter": _number(dead),
        "workers": workers,
        "workers_alive": sum(1 for w in workers if w["alive"]),
        "breakers": breakers,
        "top_errors": [{"pattern": p, "count": c} for p, c in top],
    }


def render(snapshot: dict[str, Any]) -> Group:
    """Rich tables of a snapshot."""
    jobs = Table(title="Jobs", show_header=True)
    for column in ("pending", "active", "waiting retries", "dead letters", "workers alive"):
        jobs.add_column(column, justify="right")
    jobs.add_row(str(snapshot["pending"]), str(snapshot["active"]), str(snapshot["scheduled_retries"]),
                 str(snapshot["dead_letter"]), str(snapshot["workers_alive"]))

    queues = Table(title="Queues")
    queues.add_column("queue")
    queues.add_column("pending", justify="right")
    for name, depth in snapshot["queues"].items():
        queues.add_row(name, str(depth))

    workers = Table(title="Workers")
    workers.add_column("worker")
    workers.add_column("heartbeat age", justify="right")
    workers.add_column("state")
    workers.add_column("health")
    for w in snapshot["workers"]:
        workers.add_row(w["worker"], f"{w['heartbeat_age_sec']:.1f}s", "alive" if w["alive"] else "DEAD",
                        w.get("health_url", ""))

    breakers = Table(title="Circuit breakers")
    breakers.add_column("breaker")
    breakers.add_column("state")
    breakers.add_column("failures", justify="right")
    for name, b in snapshot["breakers"].items():
        breakers.add_row(name, str(b.get("state")), str(b.get("failures", "")))
    if not snapshot["breakers"]:
        breakers.add_row("(none)", "", "")

    errors = Table(title="Top error patterns")
    errors.add_column("component:operation:error_type")
    errors.add_column("count", justify="right")
    for e in snapshot["top_errors"]:
        errors.add_row(e["pattern"], str(e["count"]))
    return Group(jobs, queues, workers, breakers, errors)
