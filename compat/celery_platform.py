"""pytest plugin: Celery's integration tests on apps with the platform installed.

Loaded by ``python -m compat`` (``-p compat.celery_platform``) in both runs.
With ``COMPAT_PLATFORM=1`` every app Celery's fixtures create
(``celery.contrib.testing.app.TestApp``: the session worker's app and each
test's app) is made the way the README tells a project to adopt the
platform: ``task_cls=ResilientTask``, the recommended Celery settings of
``resilience/bundled/config.py`` (the test's own settings win: broker,
backend, ``result_extended``, marks), then ``install(app)``. Without it the
apps are Celery's own.

In both runs it records each test's outcome (a test failed when any phase or
subtest of its last attempt failed; Celery reruns its flaky tests) as JSON
lines in ``COMPAT_RESULTS``.
"""

from __future__ import annotations

import json
import os
import types
from typing import Any

import pytest

#: Settings of the bundled config that name this repository's Redis or files, not a recommendation.
_NOT_RECOMMENDATIONS = frozenset({"broker_url", "result_backend", "beat_schedule_filename"})


def recommended_settings() -> dict[str, Any]:
    """The Celery settings ``resilience/bundled/config.py`` recommends to any project."""
    from resilience.bundled import config

    return {name: value for name, value in vars(config).items()
            if not name.startswith("_") and name.islower() and name not in _NOT_RECOMMENDATIONS
            and not isinstance(value, (types.ModuleType, types.FunctionType, type))}


def _platform_test_app(original):
    def test_app(name=None, config=None, **kwargs):
        from resilience import ResilientTask, install

        kwargs.setdefault("task_cls", ResilientTask)
        app = original(name, config={**recommended_settings(), **(config or {})}, **kwargs)
        return install(app)

    return test_app


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("COMPAT_PLATFORM") == "1":
        from celery.contrib.testing import app as testing_app

        testing_app.TestApp = _platform_test_app(testing_app.TestApp)


_outcomes: dict[str, str] = {}
_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "setup":  # each attempt starts here: a test rerun as flaky counts as its last attempt
        _outcomes.pop(report.nodeid, None)
    if report.failed:
        outcome = "failed"
    elif report.skipped:
        outcome = "skipped"  # skipped or xfailed (a strict xpass is reported as failed)
    elif report.when == "call":
        outcome = "passed"
    else:
        return
    previous = _outcomes.get(report.nodeid)
    if previous is None or _RANK[outcome] > _RANK[previous]:
        _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("COMPAT_RESULTS")
    if not path:
        return
    with open(path, "w") as out:
        for nodeid, outcome in sorted(_outcomes.items()):
            out.write(json.dumps({"test": nodeid, "outcome": outcome}) + "\n")
