"""The platform's own tasks, run by beat or by workers on the platform's behalf.

Each feature's tasks live in its own section below; beat entries are added by
the feature's installer (see ``resilience.install.FEATURE_INSTALLERS``).
"""

from tasks.app import app

# -- delayed runs and retries (resilience.scheduler) --------------------------------


@app.task(name="resilience.promote_delayed_runs", ignore_result=True, max_retries=0, dead_letter=False)
def promote_delayed_runs() -> int:
    """Beat's backstop for the workers' promoter: move due delayed runs to their queues."""
    from resilience import scheduler

    return scheduler.promote_due()


# -- dead letters (resilience.deadletter) ------------------------------------------


@app.task(name="resilience.trim_dead_letters", ignore_result=True, max_retries=0, dead_letter=False)
def trim_dead_letters() -> dict:
    """Drop dead-letter entries older than DEAD_LETTER_TTL_DAYS and beyond DEAD_LETTER_MAX_ENTRIES."""
    from resilience import deadletter

    return deadletter.trim()


# -- stuck jobs (resilience.sweeper) -------------------------------------------------


@app.task(name="resilience.sweep_stuck_jobs", ignore_result=True)
def sweep_stuck_jobs() -> dict:
    """Beat's stuck-job sweep (every STUCK_SWEEP_INTERVAL_SEC); see resilience.sweeper."""
    from resilience import sweeper

    return sweeper.sweep(app).as_dict()


# -- alerts (resilience.alerts) --------------------------------------------------------


@app.task(name="resilience.alerts.evaluate", ignore_result=True)
def evaluate_alerts() -> list[str]:
    """Beat: evaluate the periodic alert rules and send due summaries (resilience.alert_rules)."""
    from resilience import alert_rules

    queues = sorted({app.conf.task_default_queue or "celery", "celery"})
    return alert_rules.evaluate(queues=queues)


# -- health and metrics (resilience.health) ------------------------------------------


@app.task(name="resilience.beat_pulse", ignore_result=True)
def beat_pulse() -> None:
    """Beat's pulse (see resilience.beatprobe): publishing it is the point; running it does nothing."""
    return None


__all__ = ["app"]
