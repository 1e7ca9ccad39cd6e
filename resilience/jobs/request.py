"""The worker-side request class of ``ResilientTask``.

It runs in the worker's main process. It hands the worker id to the job, and
a durable delayed run's due time as ``request.eta`` (see ``__init__``). When a pool process dies in the middle
of a job (``WorkerLostError``: killed, out of memory, segfault), Celery
requeues the message (``task_reject_on_worker_lost``). Before that we mark the
job's execution record "crashed", keeping its delivery count, so the
redelivery may run at once and a job that keeps killing its worker is
dead-lettered as poison instead of looping forever.
"""

from __future__ import annotations

import logging

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery.utils.serialization import UnpickleableExceptionWrapper
from celery.worker.request import Request
from celery.worker.state import task_ready

log = logging.getLogger(__name__)


#: Connection errors as named by a wrapped exception that could not be pickled.
_OUTAGE_ERROR_NAMES = frozenset({"ConnectionError", "TimeoutError", "OperationalError", "BusyLoadingError",
                                 "OutOfMemoryError"})


class ResilientRequest(Request):
    def __init__(self, message, *args, **kwargs):
        super().__init__(message, *args, **kwargs)
        # Pool processes do not know their worker's node name (Celery's
        # trace_task_ret sets request.hostname to the machine's name), so the
        # worker id travels with the request: the execution guard compares it
        # with the worker's heartbeat.
        from resilience.core.identity import worker_id

        self._request_dict["resilience_worker"] = worker_id(self._hostname)
        # A durable delayed run is a plain message once due; the job still sees its eta, as
        # from an ETA message (the worker itself must not hold it: it is due).
        from resilience.jobs.scheduler import ETA_HEADER

        due = self._request_dict.get(ETA_HEADER)
        if due and not self._request_dict.get("eta"):
            self._request_dict["eta"] = due

    def _lost_worker(self, exc) -> bool:
        """Whether the pool process died under the job (Celery wraps or reports it as an exit)."""
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            return not (self._already_cancelled or self._already_revoked)
        return isinstance(exc, WorkerLostError)

    def _redis_lost_around_the_body(self, exc_info, return_ok: bool) -> bool:
        """Celery could not store the job's state or result because Redis was unreachable.

        Such an error is raised outside the job's body (Celery calls it internal):
        storing STARTED before the body, or the result after it. Celery would
        acknowledge the message as failed and the job would be lost (before) or
        reported failed (after). Its message goes back on the queue instead: a
        run that never started runs, and the execution guard acknowledges a
        redelivery of a run whose outcome was recorded.
        """
        from resilience.core.settings import get_settings

        if not get_settings().feature_enhanced_redis:
            return False  # Celery's own behaviour: acknowledged as failed
        if not self.task.acks_late or (return_ok and not getattr(exc_info, "internal", False)):
            return False  # the body raised: the job's own failure, handled by its retry policy
        from resilience.core import connection

        exc = getattr(exc_info, "exception", None)
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, UnpickleableExceptionWrapper):
            return exc.exc_cls_name in _OUTAGE_ERROR_NAMES or connection.is_redis_full(
                RuntimeError(str(exc.exc_message)))
        return connection.is_outage(exc)

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        if self._redis_lost_around_the_body(exc_info, return_ok):
            task_ready(self)
            log.warning("job %s: Redis unreachable while Celery stored its state (%s); "
                        "its message goes back on the queue", self.id, exc_info.exception)
            self.reject(requeue=True)
            return None
        if self._lost_worker(getattr(exc_info, "exception", None)):
            try:
                from resilience.core.identity import worker_id
                from resilience.jobs import executions

                executions.finish_job(self.id, worker_id(self.hostname), "crashed",
                                      attempt=int(self.request_dict.get("retries") or 0))
            except Exception:  # an observer never breaks what it observes
                log.exception("could not record the crash of job %s", self.id)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
