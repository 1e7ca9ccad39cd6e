"""The worker-side request class of ``ResilientTask``.

It runs in the worker's main process. It hands the worker id to the job (see
``__init__``). When a pool process dies in the middle
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
from celery.worker.request import Request

log = logging.getLogger(__name__)


class ResilientRequest(Request):
    def __init__(self, message, *args, **kwargs):
        super().__init__(message, *args, **kwargs)
        # Pool processes do not know their worker's node name (Celery's
        # trace_task_ret sets request.hostname to the machine's name), so the
        # worker id travels with the request: the execution guard compares it
        # with the worker's heartbeat.
        from resilience.identity import worker_id

        self._request_dict["resilience_worker"] = worker_id(self._hostname)

    def _lost_worker(self, exc) -> bool:
        """Whether the pool process died under the job (Celery wraps or reports it as an exit)."""
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            return not (self._already_cancelled or self._already_revoked)
        return isinstance(exc, WorkerLostError)

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        if self._lost_worker(getattr(exc_info, "exception", None)):
            try:
                from resilience import executions
                from resilience.identity import worker_id

                executions.finish_job(self.id, worker_id(self.hostname), "crashed",
                                      attempt=int(self.request_dict.get("retries") or 0))
            except Exception:  # an observer never breaks what it observes
                log.exception("could not record the crash of job %s", self.id)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
