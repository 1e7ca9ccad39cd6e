"""Which app a ``resilience`` command acts on: ``-A``/``RESILIENCE_APP``, or Celery's.

``resilience -A proj.celery:app status`` names the app as ``celery -A`` does;
``celery -A proj resilience status`` (the ``celery.commands`` plugin) acts on
the app Celery loaded. Either way the app becomes the one this process serves
(:func:`resilience.core.runtime.bind`), so the platform's settings, key prefix and
Redis are that app's. Read-only commands never start an embedded Redis and
print none of the platform's log records unless logging is configured.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from resilience.core import embedded, runtime
from resilience.outages import outage

__all__ = ["AppRef", "use_app"]


class AppRef:
    """The app of this invocation, imported on first use."""

    def __init__(self, spec: str | None = None, app: Any = None) -> None:
        self.spec = spec
        self._app = app

    def load(self) -> Any:
        if self._app is None:
            self._app = runtime.load_app(self.spec)
        runtime.bind(self._app)
        return self._app


def use_app(*, start_redis: bool = False) -> Any:
    """The app the current command acts on; with ``start_redis`` False (read-only
    commands) no embedded Redis is started on this command's behalf."""
    ctx = click.get_current_context()
    previous_flush = outage.publish_earlier_spool_at_load(False)
    ctx.call_on_close(lambda: outage.publish_earlier_spool_at_load(previous_flush))
    if not start_redis:
        previous = embedded.forbid_autostart()
        ctx.call_on_close(lambda: embedded.forbid_autostart(previous))
        _quiet_platform_logs(ctx)
    ref = ctx.find_object(AppRef)
    if ref is None:
        ref = AppRef()
        ctx.find_root().obj = ref
    return ref.load()


def _quiet_platform_logs(ctx: click.Context) -> None:
    """A read-only command's output is its report (and one line on stderr when it fails): the
    platform's own log records reach only handlers someone configured, never Python's last-resort
    printer on stderr."""
    logger = logging.getLogger("resilience")
    quiet = logging.NullHandler()
    logger.addHandler(quiet)
    ctx.call_on_close(lambda: logger.removeHandler(quiet))


def app_spec() -> str:
    """The ``-A`` value of this invocation (for commands that start processes)."""
    ref = click.get_current_context().find_object(AppRef)
    return (ref.spec if ref is not None else None) or runtime.BUNDLED_APP
