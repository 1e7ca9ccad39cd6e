"""The platform's own tasks, registered by ``install(app)`` on the app it is given.

Beat runs them on the user's schedule, the user's workers run them: the
stuck-job sweep, the dead-letter trim, the scheduler's backstop promotion,
the periodic alert rules and beat's pulse. Each acts on the app that runs it
(``self.app``), never on an app of its own. Names follow one style,
``resilience.<verb>_<object>``, and each beat entry is named after its task.
``PLATFORM_TASK_QUEUE`` puts them on a queue of their own (route it like any
other; a worker must consume it), else they go to the app's default queue.

They are never retried or dead-lettered (a sweep that fails is simply run
again on the next tick) and store no result.
"""

from __future__ import annotations

from typing import Any

from resilience.settings import Settings

__all__ = [
    "BEAT_PULSE", "EVALUATE_ALERTS", "PROMOTE_DELAYED_RUNS", "SWEEP_STUCK_JOBS", "TRIM_DEAD_LETTERS",
    "add_beat_entry", "register",
]

SWEEP_STUCK_JOBS = "resilience.sweep_stuck_jobs"
TRIM_DEAD_LETTERS = "resilience.trim_dead_letters"
PROMOTE_DELAYED_RUNS = "resilience.promote_delayed_runs"
EVALUATE_ALERTS = "resilience.alerts.evaluate"
BEAT_PULSE = "resilience.beat_pulse"

#: Options every platform task is declared with.
_OPTIONS: dict[str, Any] = {
    "bind": True, "shared": False, "ignore_result": True, "max_retries": 0, "dead_letter": False,
}


def register(app: Any) -> None:
    """Declare the platform's tasks on ``app`` (lazily, like any ``@app.task``)."""
    if getattr(app, "_resilience_platform_tasks", False):
        return
    app._resilience_platform_tasks = True

    @app.task(name=SWEEP_STUCK_JOBS, **_OPTIONS)
    def sweep_stuck_jobs(self) -> dict:
        """Beat's stuck-job sweep (every STUCK_SWEEP_INTERVAL_SEC); see resilience.sweeper."""
        from resilience import sweeper

        return sweeper.sweep(self.app).as_dict()

    @app.task(name=TRIM_DEAD_LETTERS, **_OPTIONS)
    def trim_dead_letters(self) -> dict:
        """Drop dead-letter entries older than DEAD_LETTER_TTL_DAYS and beyond DEAD_LETTER_MAX_ENTRIES."""
        from resilience import deadletter

        return deadletter.trim()

    @app.task(name=PROMOTE_DELAYED_RUNS, **_OPTIONS)
    def promote_delayed_runs(self) -> int:
        """Beat's backstop for the workers' promoter: move due delayed runs to their queues."""
        from resilience import scheduler

        return scheduler.promote_due()

    @app.task(name=EVALUATE_ALERTS, **_OPTIONS)
    def evaluate_alerts(self) -> list[str]:
        """Evaluate the periodic alert rules for this app's queues and send due summaries."""
        from resilience import alert_rules
        from resilience.runtime import queue_names

        return alert_rules.evaluate(queues=queue_names(self.app))

    @app.task(name=BEAT_PULSE, **_OPTIONS)
    def beat_pulse(self) -> None:
        """Beat's pulse (see resilience.beatprobe): publishing it is the point; running it does nothing."""
        return None


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
