"""Sentry reporting through sentry-sdk's CeleryIntegration, when ``SENTRY_DSN`` is set.

The integration captures a job's real failures itself (it skips Celery's control
flow and the task's ``throws``, like :mod:`resilience.observability.tracking`). Our
``before_send`` adds what Sentry cannot know: the platform's fingerprint of the
error (the same one as in ``errors:timeline``, as the event's grouping
fingerprint and the ``resilience.fingerprint`` tag), and masks secrets in the
whole event through :func:`resilience.core.redact.redact` (arguments, frame
variables, messages). A failure inside the hook drops nothing and breaks nothing:
the event is sent redacted as far as possible.

sentry-sdk is initialised in workers and beat (``worker_init``, ``beat_init``:
before the pool forks, so its Celery patches are inherited) and again in each
pool process after fork (``worker_process_init``), so no process relies on a
sender thread that does not exist in it. Producers and the CLI do not report to
Sentry; call :func:`init` to make another process report.
"""

from __future__ import annotations

import logging
from typing import Any

from resilience.core.redact import redact
from resilience.core.settings import Settings, get_settings
from resilience.observability.tracking import fingerprint_of_exception

__all__ = ["before_send", "init", "init_on_signal"]

log = logging.getLogger(__name__)


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """Tag the event with the platform's fingerprint and mask its secrets."""
    try:
        exc_info = hint.get("exc_info") if hint else None
        if exc_info and exc_info[1] is not None:
            operation = _task_name(event) or "unknown"
            fp = fingerprint_of_exception(operation, exc_info[1], exc_info[2])
            event["fingerprint"] = [fp]
            tags = event.get("tags")
            if not isinstance(tags, dict):
                tags = {}
            tags["resilience.fingerprint"] = fp
            event["tags"] = tags
    except Exception as exc:  # never lose the event over a tag
        log.debug("sentry: could not fingerprint an event: %s", exc)
    try:
        return redact(event)
    except Exception as exc:
        log.warning("sentry: could not redact an event, dropping it: %s", exc)
        return None


def _task_name(event: dict[str, Any]) -> str | None:
    job = (event.get("extra") or {}).get("celery-job") or {}
    return job.get("task_name") or event.get("transaction")


def init(settings: Settings | None = None) -> bool:
    """Initialise sentry-sdk with the Celery integration; False when off or on failure."""
    settings = settings or get_settings()
    if not (settings.sentry_dsn and settings.feature_error_tracking):
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.celery import CeleryIntegration

        sentry_sdk.init(
            dsn=settings.sentry_dsn,
            environment=settings.environment,
            integrations=[CeleryIntegration(monitor_beat_tasks=False)],
            before_send=before_send,  # type: ignore[arg-type]  # sentry's Event is a TypedDict of this dict
            send_default_pii=False,
            traces_sample_rate=0.0,
        )
        return True
    except Exception as exc:  # a bad DSN never takes a worker down
        log.warning("sentry: not initialised: %s", exc)
        return False


def init_on_signal(**_: Any) -> None:
    init()
