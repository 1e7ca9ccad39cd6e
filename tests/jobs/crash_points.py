"""Loaded into a subprocess worker (``-I tests.jobs.crash_points``) to kill it at one exact point.

``TEST_KILL_AFTER_FINISH_JOB=<job id>``: right after the pool process has
recorded that job done (``executions.finish_job``, the step that also stores
its result), SIGKILL the worker's main process and then the pool process
itself, before Celery acknowledges the message.

``TEST_KILL_AFTER_START_JOB=<job id>``: the same right after the step that
claims the run and stores its STARTED state (``executions.begin``), before
the body runs.
"""

from __future__ import annotations

import os
import signal

import tests.jobs  # noqa: F401 - the jobs it runs
from resilience import executions

_after_finish = os.environ.get("TEST_KILL_AFTER_FINISH_JOB")
_after_start = os.environ.get("TEST_KILL_AFTER_START_JOB")
_finish_job = executions.finish_job
_begin = executions.begin


def _die() -> None:
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _finish_job_then_die(job_id, owner, outcome, **kwargs):
    _finish_job(job_id, owner, outcome, **kwargs)
    if job_id == _after_finish and outcome == "done":
        _die()


def _begin_then_die(task, args, kwargs, **options):
    decision = _begin(task, args, kwargs, **options)
    if task.request.id == _after_start:
        _die()
    return decision


if _after_finish:
    executions.finish_job = _finish_job_then_die
if _after_start:
    executions.begin = _begin_then_die
