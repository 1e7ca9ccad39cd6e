"""The platform's exception tree.

::

    ResilienceError
    ├── ConfigurationError          bad configuration, found at start-up
    │   ├── SettingsError           a malformed environment variable (names it)
    │   └── UnknownTaskOption       a task declared with an option nobody reads
    ├── PermanentError              raised by a job: never retry, dead-letter now
    │   └── PoisonJob               the job's deliveries kept killing their worker
    ├── SubmissionError             a job could not be submitted; nothing enqueued
    │   ├── UnserializableArgument  the serializer cannot encode an argument (names it)
    │   ├── PayloadTooLarge         the message exceeds the size limit
    │   ├── InvalidIdempotencyKey   an idempotency key that is blank or too long
    │   ├── BrokerUnavailable       Redis unreachable and spooling is off
    │   └── SpoolFull               Redis unreachable and the local spool is full
    ├── CircuitOpenError            a call was refused by an open circuit breaker
    ├── ReplayRefused               a dead-letter entry names a queue that is not the app's
    ├── EmbeddedRedisError          the embedded redis-server could not start
    │   └── RedisNotRunning         none runs, and this process may not start one
    ├── StoreUnavailable            the platform's Redis store did not answer
    └── ReplicasBehind              fewer replicas than REDIS_MIN_REPLICAS_ACK confirmed a write in time

Control flow (Celery's ``Retry``, ``Ignore``, ``Reject``, and
:class:`JobNotStarted`, a ``Reject``) is kept apart from these errors: it is
never tracked, alerted or dead-lettered. Errors from the
Redis driver are translated at the boundary (``raise X(...) from err``).
"""

from __future__ import annotations

from collections.abc import Callable

from celery.exceptions import Ignore, Reject, Retry

#: How a secret value appears in a message (:mod:`resilience.core.settings` shows secrets so too).
HIDDEN = "<hidden>"


#: Celery's control-flow exceptions: never errors, never retried, tracked or alerted.
CONTROL_FLOW: tuple[type[BaseException], ...] = (Retry, Ignore, Reject)

class ResilienceError(Exception):
    """Root of every error the platform raises itself."""


class ConfigurationError(ResilienceError):
    """The platform is configured in a way it cannot run with."""


class SettingsError(ConfigurationError):
    """A setting has a malformed value.

    The message names the setting; its value is shown only as far as it holds
    no secret (:func:`resilience.core.settings.shown_value`): secret settings are
    hidden and passwords in URLs masked. ``value`` keeps that shown form only.
    """

    #: How a value may be shown: :func:`resilience.core.settings.shown_value`, which
    #: :mod:`resilience.core.settings` puts here when it is imported (it imports this
    #: module, so this one cannot import it). Until then every value is hidden.
    show: Callable[[str, str], str] = staticmethod(lambda name, value: HIDDEN)

    def __init__(self, name: str, value: str, reason: str) -> None:
        self.name = name
        self.value = type(self).show(name, value)
        self.reason = reason
        shown = f" (value {HIDDEN})" if self.value == HIDDEN else f"={self.value!r}"
        super().__init__(f"{name}{shown}: {reason}")


class UnknownTaskOption(ConfigurationError, TypeError):
    """A task was declared with an option that no part of the platform reads."""

    def __init__(self, task: str, option: str) -> None:
        self.task = task
        self.option = option
        super().__init__(f"task {task!r}: unknown option {option!r}")


class PermanentError(ResilienceError):
    """Raised by a job to say retrying cannot help; the job is dead-lettered at once."""


class PoisonJob(PermanentError):
    """The job's deliveries kept killing their pool process; it was dead-lettered without a run.

    Raised in the delivery that finds it out, so Celery stores the job's
    FAILURE and calls its ``link_error`` callbacks, as for any job that failed
    for good.
    """


class SubmissionError(ResilienceError):
    """A job could not be submitted; nothing was enqueued."""


class UnserializableArgument(SubmissionError, TypeError):
    """A job argument cannot be encoded by the task's serializer (JSON by default)."""

    def __init__(self, task: str, argument: str, detail: str, serializer: str = "json") -> None:
        self.task = task
        self.argument = argument
        self.serializer = serializer
        what = "JSON-serialisable" if serializer == "json" else f"encodable with the {serializer!r} serializer"
        super().__init__(f"task {task!r}: argument {argument} is not {what} ({detail})")


class PayloadTooLarge(SubmissionError, ValueError):
    """A job's encoded arguments exceed the configured size limit."""


class InvalidIdempotencyKey(SubmissionError, ValueError):
    """An explicit idempotency key is blank or longer than the limit; nothing was claimed or enqueued."""


class BrokerUnavailable(SubmissionError, ConnectionError):
    """Redis could not be reached in the bounded publish time and spooling is off."""


class SpoolFull(SubmissionError):
    """Redis is unreachable and the local publish spool has reached its bound."""


class CircuitOpenError(ResilienceError):
    """A call was refused because its circuit breaker is open."""

    def __init__(self, breaker: str, retry_after_sec: float | None = None) -> None:
        self.breaker = breaker
        self.retry_after_sec = retry_after_sec
        suffix = f"; retry in {retry_after_sec:.1f}s" if retry_after_sec is not None else ""
        super().__init__(f"circuit breaker {breaker!r} is open{suffix}")


class ReplayRefused(ResilienceError, ValueError):
    """A dead-letter entry cannot be replayed as it is (its queue is not one of the app's)."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id}: {reason}")


class EmbeddedRedisError(ResilienceError):
    """The embedded redis-server could not be found or started."""


class RedisNotRunning(EmbeddedRedisError):
    """No Redis is configured or running, and this command does not start one.

    Read-only commands (``status``, ``dlq``, ``breakers``, ``errors``, ``sweep``,
    ``health``) never start a server on someone's behalf: they say so and exit.
    """


class StoreUnavailable(ResilienceError, ConnectionError):
    """The platform's Redis store did not answer in time."""


class ReplicasBehind(ResilienceError):
    """A write reached the primary but too few replicas confirmed it within the timeout.

    The write may be lost if the primary fails now, so the platform treats it
    as not done: a publish stays in the spool and goes out again, a job's
    start is withdrawn and its message put back, a job's outcome is written
    again. Classified as an outage (:func:`resilience.core.connection.is_outage`);
    deliberately not an ``OSError``, so kombu does not tear the connection down
    for it.
    """

    def __init__(self, what: str, acked: int, wanted: int, timeout_ms: int) -> None:
        self.acked, self.wanted = acked, wanted
        super().__init__(f"{what}: {acked} of {wanted} replica(s) confirmed it within {timeout_ms} ms")


class JobNotStarted(Reject):
    """A job could not start because Redis was unreachable; its message goes back on the queue.

    Raised before the job's body runs, so running it later is its first run.
    Celery treats it as a ``Reject(requeue=True)``: nothing is acknowledged,
    stored as a failure, retried or dead-lettered.
    """

    def __init__(self, reason: str | None = None, requeue: bool = True) -> None:
        # Same arguments as Reject: the pool pickles it to the worker, which rebuilds it from args.
        super().__init__(reason, requeue=requeue)
