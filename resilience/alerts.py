"""Webhook alerts. Placeholder until the alerting feature lands: alerts are logged.

Interface used by other features::

    alert(rule, subject, level=..., title=..., message=..., component=..., context={...})

``rule`` names the alert rule (e.g. "breaker_state", "stuck_jobs_recovered");
``subject`` what it is about (a breaker name, a queue): the same rule and
subject are sent at most once per ``ALERT_WINDOW_SEC``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def alert(rule: str, subject: str, *, level: str, title: str, message: str, component: str,
          context: dict[str, Any] | None = None) -> None:
    log.log(logging.CRITICAL if level == "critical" else logging.WARNING,
            "alert [%s] %s: %s (%s)", level, title, message, subject)
