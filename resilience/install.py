"""The one wiring point: ``install(app)`` attaches the platform to a Celery app.

It validates the settings (a bad value stops start-up naming the variable),
makes sure the app's tasks are ResilientTasks, and runs each feature's
installer, which connects its signal handlers (``dispatch_uid``, ``weak=False``),
bootsteps and beat entries. A feature whose flag is off installs nothing.
"""

from __future__ import annotations

import importlib
import logging

from celery import Celery

from resilience.settings import get_settings
from resilience.task import ResilientTask

log = logging.getLogger(__name__)

#: ``module:function`` of each feature's installer, called with the app.
FEATURE_INSTALLERS: list[str] = [
    "resilience.logredact:install",
    "resilience.heartbeat:install",
    "resilience.health:install",
    "resilience.tracking:install",
    "resilience.retrying:install",
    "resilience.sweeper:install",
    "resilience.outage:install",
]

_installed: set[int] = set()


def install(app: Celery) -> Celery:
    """Wire every enabled feature into ``app`` (idempotent per app)."""
    settings = get_settings()  # validates every setting now, at start-up
    if not issubclass(app.Task, ResilientTask):
        raise TypeError("create the app with Celery(..., task_cls=ResilientTask) before install(app)")
    if id(app) in _installed:
        return app
    _installed.add(id(app))
    _check_options_at_declaration(app)
    app.conf.beat_schedule = dict(app.conf.beat_schedule or {})
    for target in FEATURE_INSTALLERS:
        module_name, _, func = target.partition(":")
        getattr(importlib.import_module(module_name), func)(app, settings)
    return app


def _check_options_at_declaration(app: Celery) -> None:
    """Make ``@app.task(...)`` reject unknown options when the module is imported.

    Celery creates task classes lazily, so a typo in an option would otherwise
    surface only when the task is first used.
    """
    from resilience.task import check_task_options

    declare = app.task

    def task(*args, **options):
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
