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

from rich.console import Group
from rich.table import Table

from resilience.keys import keys
from resilience.settings import get_settings
from resilience.store import get_redis

DEFAULT_QUEUES = ("celery",)


def _queues(app=None) -> list[str]:
    names = set(DEFAULT_QUEUES)
    if app is not None:
        names.add(app.conf.task_default_queue or "celery")
        for queue in app.conf.task_queues or ():
            names.add(getattr(queue, "name", str(queue)))
    return sorted(names)


def collect(app=None, *, now: float | None = None, top_errors: int = 5) -> dict[str, Any]:
    """A JSON-ready snapshot of the platform's state."""
    now = time.time() if now is None else now
    settings = get_settings()
    k = keys()
    client = get_redis()
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
    pipe.hlen("unacked")
    results = pipe.execute()
    depths = dict(zip(queues, results[: len(queues)], strict=True))
    active, scheduled, dead, beats, breakers_raw, patterns, unacked = results[len(queues):]

    workers = []
    for worker, beat in beats:
        age = max(0.0, now - float(beat))
        workers.append({"worker": worker, "heartbeat_age_sec": round(age, 1),
                        "alive": age <= settings.worker_heartbeat_timeout_sec})
    breakers = {}
    for name, raw in breakers_raw.items():
        try:
            breakers[name] = json.loads(raw)
        except ValueError:
            breakers[name] = {"state": "malformed", "raw": raw}
    top = sorted(((p, int(c)) for p, c in patterns.items()), key=lambda pc: -pc[1])[:top_errors]
    return {
        "timestamp": now,
        "queues": depths,
        "pending": sum(depths.values()),
        "active": active,
        "unacked": unacked,
        "scheduled_retries": scheduled,
        "dead_letter": dead,
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
    for w in snapshot["workers"]:
        workers.add_row(w["worker"], f"{w['heartbeat_age_sec']:.1f}s", "alive" if w["alive"] else "DEAD")

    breakers = Table(title="Circuit breakers")
    breakers.add_column("breaker")
    breakers.add_column("state")
    breakers.add_column("failures", justify="right")
    for name, b in snapshot["breakers"].items():
        breakers.add_row(name, str(b.get("state")), str(b.get("failures", "")))

    errors = Table(title="Top error patterns")
    errors.add_column("component:operation:error_type")
    errors.add_column("count", justify="right")
    for e in snapshot["top_errors"]:
        errors.add_row(e["pattern"], str(e["count"]))
    return Group(jobs, queues, workers, breakers, errors)
