"""``ResilientTask``: the base class that gives every task the platform's features.

It is the app's default task class (``Celery(task_cls=ResilientTask)``). Each
behaviour lives in its own module; this class only calls them at the right
moments of a job's life:

* submit (``apply_async``): :mod:`resilience.jobs.submission` validates the
  arguments, deduplicates by idempotency key, keeps delayed runs in Redis and
  survives a broker outage;
* start (``__call__``): :mod:`resilience.jobs.executions` claims the execution record
  (guard + active-job registry), :mod:`resilience.breakers.breaker` runs the body
  through the job's breaker and parks a job refused by an open breaker;
* failure: :mod:`resilience.jobs.retrying` retries with backoff or dead-letters;
* end: the record is closed in the same round trip that removes the registry
  entry and stores the job's result (:mod:`resilience.transport.resultbackend`).

Options resolve call > task > settings: a task option left at ``None`` takes
the setting's value.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from resilience.core import connection
from resilience.core.errors import CONTROL_FLOW, JobNotStarted, UnknownTaskOption
from resilience.core.settings import get_settings
from resilience.jobs import executions

__all__ = ["ResilientTask", "CONTROL_FLOW"]

log = logging.getLogger(__name__)


#: Options this platform adds to Celery's task options.
RESILIENCE_OPTIONS = frozenset({
    "idempotent", "retry_for", "retry_jitter", "breaker", "progress_timeout",
    "dead_letter", "release_key_on_dead_letter",
})

#: Options Celery accepts in ``@app.task(...)`` that are not Task attributes.
_CELERY_ROUTING_OPTIONS = frozenset({
    "queue", "exchange", "routing_key", "priority", "expires", "countdown", "eta",
    "time_limit", "soft_time_limit", "compression", "ignore_result", "delivery_mode",
})

#: Attributes Celery itself sets on a decorator-made task class.
_DECORATOR_KEYS = frozenset({
    "app", "name", "run", "_decorated", "_dump_pydantic_arguments", "__doc__", "__module__",
    "__annotations__", "__header__", "__wrapped__", "__qualname__", "__firstlineno__",
    "__static_attributes__",
})


class ResilientTask(Task):
    """A Celery task with backoff retries, idempotency, dead letters and breakers."""

    #: The worker-side request class: records pool-process crashes for poison detection.
    Request = "resilience.jobs.request:ResilientRequest"

    #: Derive an idempotency key from the task name and arguments when the
    #: caller gives none, so that duplicate submissions are absorbed.
    idempotent: ClassVar[bool] = False

    #: Exception types worth retrying; ``None`` means :data:`resilience.jobs.retrying.DEFAULT_RETRY_FOR`.
    #: Anything else (and :class:`~resilience.core.errors.PermanentError`) is dead-lettered at once.
    retry_for: ClassVar[tuple[type[BaseException], ...] | None] = None

    #: Retries after the first run; ``None`` means ``RETRY_MAX``.
    max_retries: ClassVar[int | None] = None

    #: First backoff delay in seconds; ``False``/``True``/``0`` mean ``RETRY_BACKOFF_BASE_SEC``.
    #: (Celery casts this option with ``float()``, hence no ``None``.)
    retry_backoff: ClassVar[float | bool] = False

    #: Cap on the backoff delay in seconds; ``0`` means ``RETRY_BACKOFF_MAX_SEC``.
    retry_backoff_max: ClassVar[float] = 0

    #: Spread delays (equal jitter); ``None`` means ``RETRY_JITTER``.
    retry_jitter: ClassVar[bool | None] = None

    #: Name of the circuit breaker the job's external calls go through: while it
    #: is open the job is parked (no retry spent) until it is due to half-open.
    breaker: ClassVar[str | None] = None

    #: Seconds without progress before the job counts as stuck; ``None`` means
    #: ``JOB_PROGRESS_TIMEOUT_SEC``.
    progress_timeout: ClassVar[float | None] = None

    #: Write the job to the dead-letter queue when it fails for good.
    dead_letter: ClassVar[bool] = True

    #: Release the job's idempotency key when it is dead-lettered, so the same
    #: request can be submitted again.
    release_key_on_dead_letter: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_decorated"):
            _reject_unknown_options(cls)

    # -- submit -----------------------------------------------------------------
    def apply_async(self, args=None, kwargs=None, task_id=None, producer=None,
                    link=None, link_error=None, shadow=None, **options):
        """Submit the job; see :func:`resilience.jobs.submission.submit`.

        Extra option: ``idempotency_key="..."`` deduplicates submissions.
        """
        from resilience.jobs import submission

        return submission.submit(
            self, args, kwargs, task_id=task_id, producer=producer, link=link,
            link_error=link_error, shadow=shadow, options=options,
            publish=super().apply_async,
        )

    def plain_apply_async(self, *args, **kwargs):
        """Celery's own ``apply_async``, bypassing the platform's submit path."""
        return super().apply_async(*args, **kwargs)

    def retry(self, args=None, kwargs=None, exc=None, throw=True, eta=None,
              countdown=None, max_retries=None, **options):
        """Celery's ``retry`` with the platform's backoff and durable scheduling.

        With no ``countdown``/``eta`` the delay follows the task's backoff
        policy; ``max_retries`` resolves call > task > ``RETRY_MAX``.
        """
        from resilience.jobs import retrying

        countdown, max_retries = retrying.resolve_retry(self, exc, eta, countdown, max_retries)
        request = self.request
        if not (request.called_directly or request.is_eager) and (
                max_retries is None or (request.retries or 0) < max_retries):
            # Close this run before the retry is published, so the retry's
            # delivery is not refused as a duplicate of a live run.
            executions.finish(self, "retrying", attempt=(request.retries or 0) + 1)
        from resilience.jobs.submission import republishing

        with republishing("retry"):  # the next attempt of the same publish
            return super().retry(args=args, kwargs=kwargs, exc=exc, throw=throw, eta=eta,
                                 countdown=countdown, max_retries=max_retries, **options)

    # -- run ----------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        request = self.request
        if request.called_directly or request.is_eager:
            return super().__call__(*args, **kwargs)
        from resilience.jobs import retrying

        try:
            decision = executions.begin(self, args, kwargs)
        except Exception as err:
            if not (connection.is_outage(err) and get_settings().feature_enhanced_redis):
                raise
            # Nothing ran yet: put the message back rather than fail a job Redis never saw start.
            connection.mark_down("store", err)
            raise JobNotStarted(f"Redis unreachable before job {request.id} could start: {err}") from err
        if not decision.run:
            return retrying.skip(self, decision)
        if decision.deliveries > get_settings().poison_max_deliveries:
            return retrying.bury_poison(self, args, kwargs, decision)
        try:
            from resilience.breakers import breaker as breakers

            result = breakers.run_job(self, args, kwargs)
        except Retry:
            raise
        except (Ignore, Reject):
            executions.finish(self, "released")
            raise
        except Exception as exc:
            retrying.handle_failure(self, exc, args, kwargs)
            raise
        executions.finish(self, "done", result=result)  # with the result when the backend allows
        return result

    # -- inside a job -----------------------------------------------------------
    def progress(self, percent: float | None = None, note: str | None = None) -> bool:
        """Report progress: resets the job's stuck-job deadline.

        Returns False when the job's registry entry is gone (it finished, or it
        was declared stuck and requeued).
        """
        if self.request.called_directly:
            return False
        return executions.progress(self, percent=percent, note=note)


#: Options Celery reads with getattr() without declaring them on Task.
_CELERY_UNDECLARED_OPTIONS = frozenset({
    "autoretry_for", "dont_autoretry_for", "retry_kwargs", "default_retry_delay",
})


def _reject_unknown_options(cls: type) -> None:
    """Dramatiq-style check: an option no class in the hierarchy declares is a typo."""
    known = {name for base in cls.__bases__ for name in dir(base)}
    known |= RESILIENCE_OPTIONS | _CELERY_ROUTING_OPTIONS | _DECORATOR_KEYS | _CELERY_UNDECLARED_OPTIONS
    for option in cls.__dict__:
        if option not in known and not option.startswith("_"):
            raise UnknownTaskOption(cls.__dict__.get("name", cls.__name__), option)


#: Parameters of ``Celery.task`` itself (consumed before the task class is made).
_DECORATOR_PARAMS = frozenset({
    "name", "base", "bind", "shared", "lazy", "filter", "pydantic", "pydantic_strict",
    "pydantic_context", "pydantic_dump_kwargs", "trail",
})


def check_task_options(name: str, base: type, options: dict) -> None:
    """Raise :class:`UnknownTaskOption` for a decorator option nobody reads."""
    known = set(dir(base)) | RESILIENCE_OPTIONS | _CELERY_ROUTING_OPTIONS | _CELERY_UNDECLARED_OPTIONS \
        | _DECORATOR_PARAMS
    for option in options:
        if option not in known:
            raise UnknownTaskOption(name, option)
