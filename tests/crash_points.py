"""Loaded into a subprocess worker (``-I tests.crash_points``) to kill it at one exact point.

``TEST_KILL_AFTER_FINISH_JOB=<job id>``: right after the pool process has
recorded that job done (``executions.finish_job``, the step that also stores
its result), SIGKILL the worker's main process and then the pool process
itself, before Celery acknowledges the message.
"""

from __future__ import annotations

import os
import signal

import tests.jobs  # noqa: F401 - the jobs it runs
from resilience import executions

_job_id = os.environ.get("TEST_KILL_AFTER_FINISH_JOB")
_finish_job = executions.finish_job


def _finish_job_then_die(job_id, owner, outcome, **kwargs):
    _finish_job(job_id, owner, outcome, **kwargs)
    if job_id == _job_id and outcome == "done":
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


if _job_id:
    executions.finish_job = _finish_job_then_die
