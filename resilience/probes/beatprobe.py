"""Beat's probe: is the schedule ticking, and did every periodic entry go out on time?

Beat has no HTTP server; its probe is a command, ``resilience health beat``
(exit 0 healthy, 1 not; ``--json``), suited to a container health check. It
reads what beat records itself: from beat's init signal on, every message
beat publishes (Celery marks them with the ``celery_beat_task`` header) sets
``beat:published <task name> <epoch seconds>``. Beat also publishes a pulse,
:data:`PULSE_TASK`, every ``HEALTH_BEAT_PULSE_SEC``; the probe fails when the
pulse is three periods late (the schedule stopped ticking) or when any other
entry with a fixed interval (the stuck-job sweep, say) is three of its
intervals late.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from resilience.core.keys import keys
from resilience.core.platform_tasks import BEAT_PULSE
from resilience.core.store import get_redis

__all__ = ["PULSE_TASK", "STARTED_FIELD", "check", "on_beat_init"]

log = logging.getLogger(__name__)

#: The no-op task beat publishes as its pulse (defined in ``tasks/platform.py``).
PULSE_TASK = BEAT_PULSE
#: Field of ``beat:published`` set when beat starts.
STARTED_FIELD = "_beat_started"
LATE_FACTOR = 3


def _record(field: str, now: float | None = None) -> None:
    try:
        get_redis().hset(keys().beat_published, field, repr(time.time() if now is None else now))
    except Exception as exc:  # the probe will tell; beat keeps going
        log.warning("beat probe: could not record %s: %s", field, exc)


def on_beat_init(**_: Any) -> None:
    from celery import signals

    signals.after_task_publish.connect(_on_publish, weak=False, dispatch_uid="resilience.beatprobe.publish")
    _record(STARTED_FIELD)


def _on_publish(sender=None, headers=None, **_: Any) -> None:
    if headers and headers.get("celery_beat_task"):
        _record(str(sender or (headers.get("task") if headers else "") or "unknown"))


def _interval_sec(schedule: Any) -> float | None:
    if isinstance(schedule, (int, float)):
        return float(schedule)
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    run_every = getattr(schedule, "run_every", None)
    if isinstance(run_every, timedelta) and type(schedule).__name__ == "schedule":
        return run_every.total_seconds()
    return None  # crontab and solar schedules: no fixed period to compare with


def check(app, *, now: float | None = None, client=None) -> dict[str, Any]:
    """Beat's health from what it recorded: ``{status, checks: {...}, failed: [...]}``."""
    now = time.time() if now is None else now
    raw = (client or get_redis()).hgetall(keys().beat_published)
    seen: dict[str, float] = {}
    for name, value in raw.items():
        try:
            seen[str(name)] = float(value)
        except (TypeError, ValueError):
            continue
    started = seen.get(STARTED_FIELD)
    checks: dict[str, dict[str, Any]] = {}
    if started is None:
        checks["beat"] = {"ok": False, "error": "beat has not started against this Redis"}
    else:
        checks["beat"] = {"ok": True, "started_age_sec": round(now - started, 1)}
    for entry_name, entry in sorted((app.conf.beat_schedule or {}).items()):
        interval = _interval_sec(entry.get("schedule"))
        if interval is None:
            continue
        task = entry.get("task", "")
        last = seen.get(task)
        limit = LATE_FACTOR * interval
        result: dict[str, Any] = {"ok": True, "task": task, "interval_sec": interval,
                                  "age_sec": None if last is None else round(now - last, 1)}
        reference = last if last is not None else started
        if reference is not None and now - reference > limit:
            result["ok"] = False
            result["error"] = (f"not published for {now - reference:.0f}s (limit {limit:.0f}s)" if last
                               else f"never published since beat started {now - reference:.0f}s ago")
        checks[entry_name] = result
    failed = sorted(name for name, result in checks.items() if not result["ok"])
    return {"status": "ok" if not failed else "unhealthy", "timestamp": now, "failed": failed, "checks": checks}
