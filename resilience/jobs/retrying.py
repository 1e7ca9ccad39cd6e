"""What happens when a job fails: retry with backoff, or dead-letter.

Only errors in the task's ``retry_for`` (default :data:`DEFAULT_RETRY_FOR`,
transient network and timeout errors) are retried, up to ``max_retries``
retries after the first run; :class:`~resilience.core.errors.PermanentError` and
every other error go straight to the dead-letter queue, and so does a
retryable error once the retries are spent.

Options resolve call > task > settings: ``self.retry(countdown=...,
max_retries=...)`` wins over the task's ``max_retries``, ``retry_backoff``,
``retry_backoff_max`` and ``retry_jitter``, which win over ``RETRY_MAX``,
``RETRY_BACKOFF_BASE_SEC``, ``RETRY_BACKOFF_MAX_SEC`` and ``RETRY_JITTER``.
The delay follows :class:`~resilience.core.backoff.ExponentialBackoff`; the retry
itself is Celery's ``Task.retry`` (same id, ``retries + 1``), which the submit
path turns into a durable delayed run (:mod:`resilience.jobs.scheduler`).

With ``FEATURE_SMART_RETRY=false`` retryable errors are still retried through
``Task.retry``, but with Celery's own countdown (``default_retry_delay``) and
ETA messages.
"""

from __future__ import annotations

import logging
import socket

from celery.exceptions import Ignore, MaxRetriesExceededError

from resilience.core.backoff import ExponentialBackoff
from resilience.core.errors import PermanentError, PoisonJob
from resilience.core.settings import get_settings
from resilience.jobs import deadletter, executions, idempotency
from resilience.jobs.submission import republishing

log = logging.getLogger(__name__)

#: Transient errors retried by default.
DEFAULT_RETRY_FOR: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, socket.timeout)

try:  # the HTTP client's transport errors are transient too
    import httpx

    DEFAULT_RETRY_FOR += (httpx.TransportError,)
except ImportError:  # pragma: no cover
    pass

try:
    import redis

    DEFAULT_RETRY_FOR += (redis.ConnectionError, redis.TimeoutError)
except ImportError:  # pragma: no cover
    pass


def max_retries_of(task, override: int | None = None) -> int:
    """Retries allowed after the first run: call > task > ``RETRY_MAX``."""
    if override is not None:
        return int(override)
    if task.max_retries is not None:
        return int(task.max_retries)
    return get_settings().retry_max


def backoff_of(task, *, base: float | None = None, cap: float | None = None,
               jitter: bool | None = None) -> ExponentialBackoff:
    """The task's backoff strategy: call > task > settings for base, cap and jitter."""
    settings = get_settings()
    if base is None:
        base = task.retry_backoff
        if isinstance(base, bool) or not base:
            base = settings.retry_backoff_base_sec
    if cap is None:
        cap = task.retry_backoff_max or settings.retry_backoff_max_sec
    if jitter is None:
        jitter = task.retry_jitter if task.retry_jitter is not None else settings.retry_jitter
    return ExponentialBackoff(base=float(base), cap=max(float(cap), float(base)), jitter=bool(jitter))


def is_retryable(task, exc: BaseException) -> bool:
    """Whether ``exc`` is worth another run: in ``retry_for`` and not a PermanentError."""
    if isinstance(exc, PermanentError):
        return False
    retry_for = task.retry_for if task.retry_for is not None else DEFAULT_RETRY_FOR
    return isinstance(exc, tuple(retry_for))


def resolve_retry(task, exc, eta, countdown, max_retries) -> tuple[float | None, int | None]:
    """Fill in ``self.retry()``'s countdown and max_retries from the policy.

    An explicit ``countdown`` or ``eta`` is honoured as given.
    """
    if not get_settings().feature_smart_retry:
        return countdown, max_retries if max_retries is not None else task.max_retries
    max_retries = max_retries_of(task, max_retries)
    if countdown is None and eta is None:
        countdown = backoff_of(task).compute(task.request.retries or 0)
    return countdown, max_retries


def failure_reason(task, exc: BaseException, retries: int) -> str:
    if isinstance(exc, PermanentError):
        return f"permanent error: {exc}"
    if isinstance(exc, MaxRetriesExceededError) or (retries and retries >= max_retries_of(task)):
        return f"retries exhausted after {retries} retries: {type(exc).__name__}: {exc}"
    if is_retryable(task, exc):
        return f"retries exhausted after {retries} retries: {type(exc).__name__}: {exc}"
    return f"non-retryable {type(exc).__name__}: {exc}"


def handle_failure(task, exc: BaseException, args, kwargs) -> None:
    """Retry (raises Celery's ``Retry``) or dead-letter; returns to let ``exc`` propagate."""
    retries = task.request.retries or 0
    if is_retryable(task, exc) and retries < max_retries_of(task):
        task.retry(exc=exc)
    deadletter.bury(task, args, kwargs, exc, failure_reason(task, exc, retries))


def skip(task, decision: executions.Decision):
    """A delivery the guard refused: acknowledge it without running the body.

    A job already done, dead or superseded by a later attempt is simply
    acknowledged (its stored result is left as it is). A "busy" delivery (the
    job is running on a live worker) is first re-published under the same job
    id, attempt and idempotency key ``IDEMPOTENCY_BUSY_DEFER_SEC`` later
    (:func:`defer`): when it comes back the guard decides again, so the
    duplicate is dropped once the first run is done, and runs if that run's
    worker has died meanwhile. Nothing depends on the stuck-job sweep alone.
    """
    if decision.action == executions.BUSY:
        try:
            defer(task, get_settings().idempotency_busy_defer_sec)
            idempotency.count("deferred_busy")
        except Exception:  # never fail the job id's result: the live run and the sweep still cover it
            log.exception("could not defer the busy duplicate of job %s; acknowledging it", task.request.id)
    else:
        idempotency.count(f"skipped_{decision.action}")
    log.info("job %s not run: %s (%s)", task.request.id, decision.action, decision.detail)
    raise Ignore()


def defer(task, delay: float):
    """Re-publish the delivery behind ``task.request`` ``delay`` seconds later, as it is."""
    request = task.request
    signature = task.signature_from_request(request, countdown=delay, retries=request.retries or 0)
    with republishing("defer"):  # the same delivery later; the running job's records belong to the first run
        return signature.apply_async()


def bury_poison(task, args, kwargs, decision: executions.Decision):
    """A job whose deliveries keep killing their worker: dead-letter it, and fail it as Celery would.

    Raises :class:`~resilience.core.errors.PoisonJob`: Celery stores the job's
    FAILURE and calls its ``link_error`` callbacks (a chain's or chord's too).
    """
    reason = f"poison job: {decision.deliveries - 1} deliveries killed their worker"
    deadletter.bury(task, args, kwargs, None, reason)
    raise PoisonJob(reason)
