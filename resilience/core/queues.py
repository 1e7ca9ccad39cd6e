"""The queues an app publishes to (the platform's own queue included): what status, the
dead-letter replay, the alert rules and the test workers read."""

from __future__ import annotations

from typing import Any

from resilience.core.settings import settings_for

__all__ = ["queue_names"]


def queue_names(app: Any) -> list[str]:
    """The queues ``app`` publishes to: its default queue, ``task_queues``, queues named
    in dict-form ``task_routes``, and the platform's own queue when one is set."""
    names = {app.conf.task_default_queue or "celery"}
    for queue in app.conf.task_queues or ():
        names.add(getattr(queue, "name", str(queue)))
    routes = app.conf.task_routes
    for route in routes if isinstance(routes, (list, tuple)) else [routes]:
        if isinstance(route, dict):
            for target in route.values():
                queue = target.get("queue") if isinstance(target, dict) else None
                if isinstance(queue, str):
                    names.add(queue)
    platform_queue = settings_for(app).platform_task_queue
    if platform_queue:
        names.add(platform_queue)
    return sorted(names)
