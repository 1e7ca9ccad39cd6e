"""The worker-side request class of ``ResilientTask``.

It runs in the worker's main process. When a pool process dies in the middle
of a job (``WorkerLostError``: killed, out of memory, segfault), Celery
requeues the message (``task_reject_on_worker_lost``). Before that we mark the
job's execution record "crashed", keeping its delivery count, so the
redelivery may run at once and a job that keeps killing its worker is
dead-lettered as poison instead of looping forever.
"""

from __future__ import annotations

import logging

from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

log = logging.getLogger(__name__)


class ResilientRequest(Request):
    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard wraps it in ExceptionWithTraceback
        if isinstance(exc, WorkerLostError):
            try:
                from resilience import executions
                from resilience.identity import worker_id

                executions.finish_job(self.id, worker_id(self.hostname), "crashed",
                                      attempt=int(self.request_dict.get("retries") or 0))
            except Exception:  # an observer never breaks what it observes
                log.exception("could not record the crash of job %s", self.id)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
