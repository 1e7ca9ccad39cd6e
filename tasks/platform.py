"""The platform's own tasks, run by beat or by workers on the platform's behalf.

Each feature's tasks live in its own section below; beat entries are added by
the feature's installer (see ``resilience.install.FEATURE_INSTALLERS``).
"""

from tasks.app import app

# -- delayed runs and retries (resilience.scheduler) --------------------------------

# -- dead letters (resilience.deadletter) ------------------------------------------

# -- stuck jobs (resilience.sweeper) -------------------------------------------------

# -- alerts (resilience.alerts) --------------------------------------------------------

# -- health and metrics (resilience.health) ------------------------------------------


@app.task(name="resilience.beat_pulse", ignore_result=True)
def beat_pulse() -> None:
    """Beat's pulse (see resilience.beatprobe): publishing it is the point; running it does nothing."""
    return None


__all__ = ["app"]
