"""The platform's own tasks, run by beat or by workers on the platform's behalf.

Each feature's tasks live in its own section below; beat entries are added by
the feature's installer (see ``resilience.install.FEATURE_INSTALLERS``).
"""

from tasks.app import app

# -- delayed runs and retries (resilience.scheduler) --------------------------------

# -- dead letters (resilience.deadletter) ------------------------------------------

# -- stuck jobs (resilience.sweeper) -------------------------------------------------


@app.task(name="resilience.sweep_stuck_jobs", ignore_result=True)
def sweep_stuck_jobs() -> dict:
    """Beat's stuck-job sweep (every STUCK_SWEEP_INTERVAL_SEC); see resilience.sweeper."""
    from resilience import sweeper

    return sweeper.sweep(app).as_dict()


# -- alerts (resilience.alerts) --------------------------------------------------------

# -- health and metrics (resilience.health) ------------------------------------------

__all__ = ["app"]
