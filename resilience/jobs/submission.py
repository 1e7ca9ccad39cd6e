"""The submit path of every job: validate, deduplicate, delay, publish.

``ResilientTask.apply_async`` calls :func:`submit`. In order:

1. a ``pydantic=True`` task's model arguments are dumped as Celery's
   ``apply_async`` dumps them; then the arguments must be encodable by the
   task's serializer (the app's ``task_serializer`` unless the task or the
   call names another; for JSON, kombu's JSON with its registered types:
   ``bytes``, ``datetime``, ``date``, ``time``, ``Decimal``, ``UUID``) within
   ``MAX_PAYLOAD_BYTES``; otherwise the caller gets
   :class:`~resilience.core.errors.UnserializableArgument` (naming the argument)
   or :class:`~resilience.core.errors.PayloadTooLarge`, and nothing is enqueued;
2. with an idempotency key (given, or derived for ``idempotent=True`` tasks)
   the key is claimed atomically; a duplicate returns the original job;
3. the message is published (delayed runs are kept durably in Redis, and a
   broker outage spools the job locally, see :mod:`resilience.jobs.scheduler` and
   :mod:`resilience.outages.outage`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kombu import serialization
from kombu.exceptions import SerializerNotInstalled
from kombu.utils import json as kombu_json

from resilience.core.errors import PayloadTooLarge, UnserializableArgument
from resilience.core.settings import get_settings

# canonical_json and the re-publish marker live with the modules below this one that use them;
# their names stay importable from here.
from resilience.jobs.idempotency import canonical_json
from resilience.jobs.republish import republish_of_current, republishing

__all__ = ["submit", "validate_arguments", "canonical_json", "serializer_of", "republishing",
           "republish_of_current"]


def serializer_of(task, options: dict[str, Any]) -> str:
    """The serializer a submission is published with: call > task > ``task_serializer``."""
    return options.get("serializer") or getattr(task, "serializer", None) or task.app.conf.task_serializer


def _encode(value: Any, serializer: str) -> str | bytes:
    if serializer == "json":
        # kombu's JSON (with its registered types), minus NaN and infinities, which are not JSON
        return kombu_json.dumps(value, allow_nan=False)
    return serialization.dumps(value, serializer=serializer)[2]


def _check(task_name: str, label: str, value: Any, serializer: str) -> None:
    try:
        _encode(value, serializer)
    except Exception as err:  # noqa: BLE001 - whatever the serializer raises, name the argument
        detail = str(err.__cause__ or err)  # kombu wraps the serializer's own error
        raise UnserializableArgument(task_name, label, detail, serializer) from None


def validate_arguments(task_name: str, args, kwargs, serializer: str = "json") -> int:
    """Raise naming the first argument ``serializer`` cannot encode; return the encoded size."""
    args = list(args or ())
    kwargs = dict(kwargs or {})
    try:
        encoded = _encode([args, kwargs], serializer)
    except SerializerNotInstalled:
        raise
    except Exception:
        for index, value in enumerate(args):
            _check(task_name, f"args[{index}]", value, serializer)
        for name, value in kwargs.items():
            if not isinstance(name, str):
                raise UnserializableArgument(task_name, f"kwargs key {name!r}", "keys must be strings",
                                             serializer) from None
            _check(task_name, f"kwargs[{name!r}]", value, serializer)
        raise
    size = len(encoded) if isinstance(encoded, bytes) else len(encoded.encode())
    limit = get_settings().max_payload_bytes
    if size > limit:
        raise PayloadTooLarge(f"task {task_name!r}: arguments are {size} bytes, over MAX_PAYLOAD_BYTES={limit}")
    return size


def submit(task, args, kwargs, *, task_id, producer, link, link_error, shadow,
           options: dict[str, Any], publish: Callable):
    """Submit a job; returns its ``AsyncResult`` (the original one for a duplicate)."""
    settings = get_settings()
    idempotency_key = options.pop("idempotency_key", None)
    dump_models = getattr(task, "_dump_pydantic_arguments", None)
    if dump_models is not None and options.get("serializer") != "pickle":
        args, kwargs = dump_models(args, kwargs)  # as Celery's apply_async does: validate what is sent
    validate_arguments(task.name, args, kwargs, serializer_of(task, options))

    resubmission = republish_of_current(task, task_id) is not None
    if resubmission and idempotency_key is None:
        idempotency_key = getattr(task.request, "idempotency_key", None)
    publish_token = None
    if settings.feature_idempotency:
        from resilience.jobs.executions import new_publish_token, publish_token_of

        # The execution guard tells deliveries of this publish from other publishes under the id.
        publish_token = publish_token_of(task.request) if resubmission else new_publish_token()

    def send(job_id: str, key: str | None, unreachable: BaseException | None = None):
        if key or publish_token:
            from resilience.jobs.executions import PUBLISH_HEADER

            headers = dict(options.get("headers") or {})
            headers.pop(PUBLISH_HEADER, None)
            if key:
                headers["idempotency_key"] = key
            if publish_token:
                headers[PUBLISH_HEADER] = publish_token
            options["headers"] = headers
        from resilience.jobs import scheduler
        from resilience.outages import outage

        # overrides: the scheduler publishes through its own producer, undelayed
        def plain(given=producer, **overrides):
            return publish(args, kwargs, task_id=job_id, producer=overrides.pop("producer", given), link=link,
                           link_error=link_error, shadow=shadow, **{**options, **overrides})

        target: Callable[..., Any] = plain
        if scheduler.wants_delay(options):
            if resubmission:
                # A retry or a deferral: published from the running job, not spooled
                # (kombu keeps its message meanwhile).
                return scheduler.schedule(task, args, kwargs, job_id, options, fallback=plain)

            def delayed(bounded):  # the durable delayed run, kept in Redis until due
                return scheduler.schedule(task, args, kwargs, job_id, options,
                                          fallback=lambda **overrides: plain(bounded, **overrides))

            target = delayed
        # What the spool keeps to publish it later: the options plus callbacks (signatures are JSON dicts).
        spooled = {**options, **{name: value for name, value in
                                 (("link", link), ("link_error", link_error), ("shadow", shadow)) if value}}
        if spooled.get("countdown") is not None:  # due relative to now, however late the spool is flushed
            due = datetime.now(UTC) + timedelta(seconds=float(spooled.pop("countdown")))
            spooled["eta"] = due.isoformat()
        return outage.publish_guarded(task, args, kwargs, job_id, spooled, target, producer=producer,
                                      unreachable=unreachable)

    if settings.feature_idempotency and not resubmission:
        from resilience.jobs import idempotency

        key = idempotency.key_for(task, args, kwargs, idempotency_key)
        if key is not None:
            return idempotency.submit_once(task, key, task_id or str(uuid.uuid4()), send)
    return send(task_id or str(uuid.uuid4()), idempotency_key)
