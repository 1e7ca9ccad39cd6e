"""The running job's re-publish of itself: a retry, a deferral or a parking is the same publish.

:func:`republishing` marks the block in which the platform re-publishes the
running job; :func:`republish_of_current` tells the publish path (submission,
the scheduler) which kind of re-publish a publish is, if any.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

__all__ = ["republish_of_current", "republishing"]

#: Set while the platform re-publishes the running job: ``"retry"`` (``Task.retry``, the
#: next attempt), ``"defer"`` (a busy duplicate, as it is) or ``"park"`` (an open breaker).
_republish: contextvars.ContextVar[str | None] = contextvars.ContextVar("resilience_republish", default=None)


@contextlib.contextmanager
def republishing(kind: str) -> Iterator[None]:
    """Mark the running job's re-publish of itself inside the block as the platform's ``kind``.

    Such a re-publish continues the same publish: it keeps the message's
    publish token and idempotency key, claims no key and is not spooled. Any
    other publish under the running job's id (``replace()``, ``task_id=``
    given again by the job) is a new publish, as in Celery.
    """
    token = _republish.set(kind)
    try:
        yield
    finally:
        _republish.reset(token)


def republish_of_current(task: Any, task_id: str | None) -> str | None:
    """The kind of platform re-publish of the running job this is, or None."""
    kind = _republish.get()
    if kind is None or task_id is None or task.request.called_directly or task.request.id != task_id:
        return None
    return kind
