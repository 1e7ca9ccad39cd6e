"""The platform's own tasks: their names, how they are declared, how beat schedules them.

Beat runs them on the user's schedule, the user's workers run them: the
stuck-job sweep, the dead-letter trim, the scheduler's backstop promotion,
the periodic alert rules and beat's pulse. Each feature in
:mod:`resilience.platform.features` names the tasks it brings and their bodies;
``install(app)`` declares them on the app it is given. Each acts on the app
that runs it (``self.app``), never on an app of its own. Names follow one style,
``resilience.<verb>_<object>``, and each beat entry is named after its task.
``PLATFORM_TASK_QUEUE`` puts them on a queue of their own (route it like any
other; a worker must consume it), else they go to the app's default queue.

They are never retried or dead-lettered (a sweep that fails is simply run
again on the next tick) and store no result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from resilience.core.settings import Settings

__all__ = [
    "BEAT_PULSE", "EVALUATE_ALERTS", "EVALUATE_ALERTS_FORMER_NAME", "PROMOTE_DELAYED_RUNS", "SWEEP_STUCK_JOBS",
    "TRIM_DEAD_LETTERS", "add_beat_entry", "declare",
]

SWEEP_STUCK_JOBS = "resilience.sweep_stuck_jobs"
TRIM_DEAD_LETTERS = "resilience.trim_dead_letters"
PROMOTE_DELAYED_RUNS = "resilience.promote_delayed_runs"
EVALUATE_ALERTS = "resilience.evaluate_alerts"
#: The alert evaluation's name before it followed the naming style: still declared, so a
#: message an older beat queued still runs; no beat entry uses it.
EVALUATE_ALERTS_FORMER_NAME = "resilience.alerts.evaluate"
BEAT_PULSE = "resilience.beat_pulse"

#: Options every platform task is declared with.
_OPTIONS: dict[str, Any] = {
    "bind": True, "shared": False, "ignore_result": True, "max_retries": 0, "dead_letter": False,
}


def declare(app: Any, name: str, body: Callable[[Any], Any]) -> None:
    """Declare the platform task ``name`` on ``app`` (lazily, like any ``@app.task``), once.

    ``body(app)`` runs it, with the app that runs the task (``self.app``).
    """
    declared = app.__dict__.setdefault("_resilience_platform_tasks", set())
    if name in declared:
        return
    declared.add(name)

    def run(self: Any) -> Any:
        return body(self.app)

    run.__name__ = name.rpartition(".")[2]
    run.__doc__ = body.__doc__
    app.task(name=name, **_OPTIONS)(run)


def add_beat_entry(app: Any, settings: Settings, task: str, schedule: float, *,
                   expires: float | None = None) -> None:
    """Schedule a platform task on ``app``'s beat, under the task's own name."""
    options: dict[str, Any] = {}
    if expires is not None:
        # behind a backlog, a stale run is dropped rather than run late, many times over
        options["expires"] = float(expires)
    if settings.platform_task_queue:
        options["queue"] = settings.platform_task_queue
    entry: dict[str, Any] = {"task": task, "schedule": float(schedule)}
    if options:
        entry["options"] = options
    schedule_map = dict(app.conf.beat_schedule or {})
    schedule_map[task] = entry
    app.conf.beat_schedule = schedule_map
