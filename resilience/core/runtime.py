"""Which Celery app this process serves: the one given to ``install(app)``.

Every operation of the platform takes the app it acts on (from the task, the
signal sender, the caller or the CLI's ``-A``). Where nothing hands one over
(a producer calling ``delay()``, a background thread started by a feature),
the app that ``install()`` was last given in this process is used: a worker,
beat or producer process serves one app. Nothing here imports an app, so a
user's project never has the repository's bundled app built behind its back.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from resilience.core.errors import ConfigurationError, ResilienceError

__all__ = ["BUNDLED_APP", "bind", "bound_app", "app_or_bound", "unbind", "load_app", "transport_options"]

#: The app the ``resilience`` command acts on when no ``-A``/``RESILIENCE_APP`` names one.
BUNDLED_APP = "resilience.bundled:app"

_lock = threading.Lock()
_bound: weakref.ReferenceType | None = None


def bind(app: Any) -> None:
    """Make ``app`` the one this process serves (``install`` calls this)."""
    global _bound
    with _lock:
        _bound = weakref.ref(app)


def unbind(app: Any | None = None) -> None:
    """Forget the bound app (only if it is ``app``, when given)."""
    global _bound
    with _lock:
        if app is None or (_bound is not None and _bound() is app):
            _bound = None


def bound_app() -> Any | None:
    """The app given to ``install()`` in this process, if it is still alive."""
    ref = _bound
    return ref() if ref is not None else None


def app_or_bound(app: Any | None = None) -> Any:
    """``app`` if given, else the bound app; a clear error when there is neither."""
    if app is not None:
        return app
    bound = bound_app()
    if bound is None:
        raise ConfigurationError("no Celery app: pass app=... or call resilience.install(app) in this process")
    return bound


def transport_options(app: Any) -> dict:
    """The broker transport options of ``app`` (kombu's key names, visibility timeout ...)."""
    return dict(app.conf.broker_transport_options or {})


def load_app(spec: str | None = None) -> Any:
    """Import the Celery app named ``spec`` as ``celery -A`` does (``proj``, ``proj.celery``,
    ``proj.celery:app``), from the working directory too; the bundled app by default.

    A spec that cannot be imported raises :class:`ConfigurationError` naming it;
    errors of the platform itself raised while the app module loads (a bad
    setting, no Redis) pass through as they are.
    """
    from celery import Celery
    from celery.app.utils import find_app

    spec = spec or BUNDLED_APP
    try:
        app = find_app(spec)
    except ResilienceError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to import it is the same one-line error
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigurationError(f"cannot load the Celery app {spec!r}: {detail}") from None
    if not isinstance(app, Celery):
        raise ConfigurationError(f"cannot load the Celery app {spec!r}: it names a {type(app).__name__}, "
                                 "not a Celery app")
    return app
