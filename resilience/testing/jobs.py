"""Assertions about what happened to a job, read from what the platform records.

:class:`JobInspector` answers, for a job id (or its ``AsyncResult``):

* did its body run exactly once? The run count comes from the test recorder
  (:mod:`resilience.testing.recorder`, on in the pytest plugin's workers);
  "finished" is the job's execution record ``jobs:state:<id>`` saying
  ``done`` or ``dead``;
* was it dead-lettered, and why? The entry in ``jobs:dead_letter``;
* was it retried N times, with which delays? The retries the recorder saw
  (Celery's ``task_retry`` in the worker, with the delay each was scheduled
  for).

Every wait has a deadline (:func:`~resilience.testing.wait_for`); a failed
assertion says what was recorded instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from resilience.core.settings import get_settings
from resilience.jobs import deadletter, executions
from resilience.testing import recorder
from resilience.testing.recorder import RetryRecord
from resilience.testing.waiting import wait_for

__all__ = ["JobInspector"]

#: Execution record states after which the job does not run again by itself.
FINISHED = frozenset({"done", "dead"})

#: An expected retry delay: seconds (within the tolerance), or a ``(low, high)`` range.
Delay = float | tuple[float, float]


def job_id_of(job: Any) -> str:
    """The id of ``job``: an ``AsyncResult`` (or anything with ``.id``) or the id itself."""
    return str(getattr(job, "id", job))


class JobInspector:
    """Read and assert what happened to jobs. ``app`` is the app whose jobs they are
    (for the stuck-job sweep and results); ``timeout`` is the default deadline."""

    def __init__(self, app: Any = None, *, timeout: float = 30.0) -> None:
        self.app = app
        self.timeout = timeout

    # -- reading ------------------------------------------------------------------
    def runs(self, job: Any) -> int:
        """How many times the job's body started."""
        return recorder.runs(job_id_of(job))

    def record(self, job: Any) -> dict | None:
        """The job's execution record (``s``: running/retrying/done/dead/crashed, ``a``: attempt ...)."""
        return executions.job_state(job_id_of(job))

    def state(self, job: Any) -> str | None:
        """The state in the job's execution record, or None when it has none."""
        return (self.record(job) or {}).get("s")

    def retries(self, job: Any) -> list[RetryRecord]:
        """The retries the job asked for, oldest first."""
        return recorder.retries(job_id_of(job))

    def retry_delays(self, job: Any) -> list[float | None]:
        """The delay of each retry, in seconds, oldest first."""
        return [r.delay for r in self.retries(job)]

    def dead_letter(self, job: Any) -> dict | None:
        """The job's newest ``jobs:dead_letter`` entry, or None."""
        entry = deadletter.get(job_id_of(job))
        return entry.data if entry is not None else None

    def finished(self, job: Any) -> bool:
        """Whether the job is done or dead (with the execution guard off: its result is ready)."""
        if get_settings().feature_idempotency:
            return self.state(job) in FINISHED
        from celery.result import AsyncResult

        return AsyncResult(job_id_of(job), app=self.app).ready()

    # -- waiting ------------------------------------------------------------------
    def wait_started(self, job: Any, timeout: float | None = None) -> int:
        """Wait until the job's body has started; returns the run count."""
        job_id = job_id_of(job)
        return wait_for(lambda: recorder.runs(job_id), self._deadline(timeout),
                        message=f"job {job_id} to start")

    def wait_finished(self, job: Any, timeout: float | None = None, *, sweep: bool = False) -> dict | None:
        """Wait until the job is done or dead; returns its execution record.

        With ``sweep=True`` the stuck-job sweep runs while waiting, about twice
        a second, as beat would: what recovers the job of a killed worker.
        """
        job_id = job_id_of(job)

        def finished() -> bool:
            if sweep:
                from resilience.recovery import sweeper

                sweeper.sweep(self.app)
            return self.finished(job_id)

        wait_for(finished, self._deadline(timeout), interval=0.5 if sweep else 0.05,
                 message=lambda: f"job {job_id} to finish ({self._summary(job_id)})")
        return self.record(job_id)

    # -- asserting ----------------------------------------------------------------
    def assert_ran_once(self, job: Any, timeout: float | None = None) -> dict | None:
        """Wait until the job finished, then assert its body ran exactly once."""
        job_id = job_id_of(job)
        record = self.wait_finished(job_id, timeout)
        runs = self.runs(job_id)
        assert runs == 1, f"job {job_id} ran {runs} times, not once ({self._summary(job_id)})"
        return record

    def assert_dead_lettered(self, job: Any, reason: str | re.Pattern | None = None, *,
                             error_type: str | None = None, timeout: float | None = None) -> dict:
        """Wait for the job's dead-letter entry; assert its ``failure_reason`` contains
        ``reason`` (or matches it, for a compiled pattern) and its ``error_type``."""
        job_id = job_id_of(job)
        entry: dict = wait_for(lambda: self.dead_letter(job_id) or {}, self._deadline(timeout),
                               message=lambda: f"job {job_id} to be dead-lettered ({self._summary(job_id)})")
        actual = str(entry.get("failure_reason"))
        if isinstance(reason, re.Pattern):
            assert reason.search(actual), f"job {job_id} was dead-lettered with {actual!r}, not /{reason.pattern}/"
        elif reason is not None:
            assert reason in actual, f"job {job_id} was dead-lettered with {actual!r}, not {reason!r}"
        if error_type is not None:
            assert entry.get("error_type") == error_type, (
                f"job {job_id} was dead-lettered for {entry.get('error_type')!r}, not {error_type!r}")
        return entry

    def assert_retried(self, job: Any, times: int, delays: Sequence[Delay] | None = None, *,
                       tolerance: float = 0.05, until_finished: bool = True,
                       timeout: float | None = None) -> list[RetryRecord]:
        """Assert the job was retried ``times`` times, with these ``delays`` if given.

        By default it first waits until the job finished, so a retry still to
        come counts; with ``until_finished=False`` it waits for ``times``
        retries only (for a retry due far in the future). Each expected delay
        is seconds (matched within ``tolerance``) or a ``(low, high)`` range,
        for jittered backoff.
        """
        job_id = job_id_of(job)
        if until_finished:
            self.wait_finished(job_id, timeout)
        else:
            wait_for(lambda: len(recorder.retries(job_id)) >= times, self._deadline(timeout),
                     message=lambda: f"{times} retries of job {job_id} ({self._summary(job_id)})")
        seen = recorder.retries(job_id)
        assert len(seen) == times, f"job {job_id} was retried {len(seen)} times, not {times}: {seen}"
        if delays is not None:
            actual = [r.delay for r in seen]
            assert len(delays) == times, f"{len(delays)} delays given for {times} retries"
            for n, (want, got) in enumerate(zip(delays, actual, strict=False)):
                assert got is not None and _delay_matches(want, got, tolerance), (
                    f"retry {n + 1} of job {job_id} was due after {got} s, expected {_show(want, tolerance)} "
                    f"(all delays: {actual})")
        return seen

    # -- helpers ------------------------------------------------------------------
    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _summary(self, job_id: str) -> str:
        try:
            return (f"record {self.record(job_id)}, {recorder.runs(job_id)} runs, "
                    f"{len(recorder.retries(job_id))} retries, dead letter: {self.dead_letter(job_id) is not None}")
        except Exception as err:  # noqa: BLE001 - only a message
            return f"state unreadable: {err!r}"


def _delay_matches(want: Delay, got: float, tolerance: float) -> bool:
    if isinstance(want, tuple):
        low, high = want
        return low - tolerance <= got <= high + tolerance
    return abs(got - float(want)) <= tolerance


def _show(want: Delay, tolerance: float) -> str:
    if isinstance(want, tuple):
        return f"{want[0]}-{want[1]} s"
    return f"{want} s (± {tolerance})"
