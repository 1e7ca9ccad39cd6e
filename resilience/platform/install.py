"""The one wiring point: ``install(app)`` attaches the platform to a Celery app.

It makes the app the one this process serves (:mod:`resilience.core.runtime`),
makes sure its tasks are ResilientTasks, declares every feature's platform
tasks on it, and, once the app is configured, walks
:data:`resilience.platform.features.FEATURES` with the app's settings (a bad value
stops start-up naming the setting): each enabled feature's signal handlers
(``dispatch_uid``, ``weak=False``), bootsteps and beat entries are added. A
feature whose flag is off adds nothing. Nothing else is wired anywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from resilience.core import runtime
from resilience.core.settings import forget_app_settings, load_settings, settings_for
from resilience.jobs.task import ResilientTask, check_task_options
from resilience.platform.features import FEATURES, configure_features, declare_features

__all__ = ["FEATURES", "install"]

log = logging.getLogger(__name__)

def install(app: Celery) -> Celery:
    """Wire every enabled feature into ``app`` (idempotent per app).

    Safe to call before or after the app is configured: features are wired
    when Celery loads the app's configuration (``on_after_configure``), with
    the settings read then (environment over the app's configuration), and
    again if it is configured anew, so beat entries survive a reload.
    """
    if not issubclass(app.Task, ResilientTask):
        raise TypeError("create the app with Celery(..., task_cls=ResilientTask) before install(app)")
    runtime.bind(app)
    if app.__dict__.get("_resilience_installed"):
        return app
    load_settings()  # the environment is validated now, at import: a bad value names its variable
    app._resilience_installed = True
    app.on_configure.connect(_on_configure, weak=False)
    app.on_after_configure.connect(_on_after_configure, weak=False)
    _check_options_at_declaration(app)
    declare_features(app)  # log redaction from here on, and the platform tasks
    if app.configured:
        _install_features(app)
    return app


def _on_configure(sender: Celery, **_: object) -> None:
    # Celery is loading the configuration: a settings read now must not load it again.
    sender._resilience_configuring = True


def _on_after_configure(sender: Celery, **_: object) -> None:
    sender._resilience_configuring = False
    forget_app_settings(sender)
    _install_features(sender)


def _install_features(app: Celery) -> None:
    settings = settings_for(app)  # validates the environment and the app's configuration together
    app.conf.beat_schedule = dict(app.conf.beat_schedule or {})
    configure_features(app, settings)


def _check_options_at_declaration(app: Celery) -> None:
    """Make ``@app.task(...)`` reject unknown options when the module is imported.

    Celery creates task classes lazily, so a typo in an option would otherwise
    surface only when the task is first used.
    """
    declare = app.task

    def task(*args: Any, **options: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not options:
            return declare(*args)
        fun_name = options.get("name")

        def check(fun):
            base = options.get("base") or app.Task
            check_task_options(fun_name or f"{fun.__module__}.{fun.__name__}", base, options)
            return declare(*args, **options)(fun)

        if len(args) == 1 and callable(args[0]):
            return check(args[0])
        return check

    task.__doc__ = declare.__doc__
    app.task = task
