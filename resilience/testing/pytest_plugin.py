"""pytest plugin: test your own Celery tasks on the platform, with real parts.

Loaded in every pytest session where celery-resilience is installed (entry
point ``pytest11``: ``resilience``; ``-p no:resilience`` turns it off). It
does nothing until a test uses one of its fixtures: importing it starts no
server and changes no environment variable.

Fixtures (all named ``resilience_*``):

``resilience_redis`` (session)
    A private redis-server (:class:`~resilience.testing.PrivateRedis`) on a
    free port with its data in a temporary directory. While it runs, this
    process and the workers it starts use it: ``REDIS_URL``,
    ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` (which Celery prefers
    to any ``broker_url``/``result_backend`` in your configuration) name it,
    ``RESILIENCE_DATA_DIR`` is a temporary directory and ``HEALTH_PORT`` is 0
    (a free port). Tests may ``stop()``, ``kill()``, ``freeze()``, ``thaw()``,
    ``restart()`` or ``crash()`` it; the next test gets it running again.
``resilience_app_spec`` (session)
    The name of your app, as ``celery -A`` takes it: ``--resilience-app`` on
    the command line, else ``resilience_app`` in the ini file.
``resilience_celery_app`` (session)
    Your Celery app, as your project builds it: the app the spec names.
    Override this fixture to build it yourself.
``resilience_app`` (session)
    That app with the platform installed (``install(app)``; the app must be
    created with ``task_cls=ResilientTask``) and pointed at the private Redis.
``resilience_worker`` (function)
    A real worker in a thread of the test process, consuming every queue the
    app routes to (options from ``resilience_worker_options``).
``resilience_subprocess_worker`` (function)
    A factory: ``resilience_subprocess_worker(name=..., concurrency=...,
    env=...)`` starts a real ``celery -A <spec> worker`` child process, waits
    until it is ready and returns a :class:`~resilience.testing.SubprocessWorker`
    (``kill()`` sends SIGKILL). Every one started is stopped after the test.
``resilience_jobs`` (function)
    A :class:`~resilience.testing.JobInspector`: ``assert_ran_once``,
    ``assert_dead_lettered``, ``assert_retried``, ``wait_started``,
    ``wait_finished(sweep=True)``, ``runs``, ``retries``, ...

Every test that uses any of them starts with the private Redis running and
empty (``FLUSHALL``) and with settings read afresh; workers are per test.
Runs and retries are recorded by :mod:`resilience.testing.recorder` in the
test process and in every worker these fixtures start.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import pytest

INI_APP = "resilience_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("resilience", "celery-resilience")
    group.addoption("--resilience-app", dest="resilience_app", default=None, metavar="MODULE[:ATTR]",
                    help="the Celery app under test, as `celery -A` names it (e.g. proj.celery:app)")
    parser.addini(INI_APP, "the Celery app under test, as `celery -A` names it (e.g. proj.celery:app)",
                  default="")


# -- Redis --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def resilience_redis(tmp_path_factory: pytest.TempPathFactory):
    """A private redis-server for the session; this process and its workers use it.

    At the end of the session the environment is restored; the server itself
    runs until the process exits, for the platform's background threads.
    """
    from resilience.core.embedded import forbid_autostart
    from resilience.core.settings import reset_settings
    from resilience.core.store import reset_redis
    from resilience.testing.config import patched_environ
    from resilience.testing.servers import PrivateRedis

    # Nothing in this process may start an embedded Redis in the project's directory, not even a
    # background thread of the platform still running after the session (it is never allowed again).
    forbid_autostart(True)
    root = tmp_path_factory.mktemp("resilience")
    server = PrivateRedis.in_directory(root / "redis").start()
    env = {
        "REDIS_URL": server.url,
        "CELERY_BROKER_URL": server.url,
        "CELERY_RESULT_BACKEND": server.url,
        "RESILIENCE_DATA_DIR": str(root / "data"),
        "HEALTH_PORT": "0",
    }
    with patched_environ(env):
        reset_settings()
        reset_redis()
        yield server
    reset_settings()
    # The platform's background threads (alert summaries, deferred writes) may still touch
    # Redis until the process exits: they keep talking to this server, stopped at exit.
    reset_redis(server.url)
    atexit.register(server.stop)


@pytest.fixture(autouse=True)
def _resilience_clean_slate(request: pytest.FixtureRequest) -> None:
    """A test using the plugin's fixtures starts with the private Redis up and empty."""
    if "resilience_redis" not in request.fixturenames:
        return
    import redis

    from resilience.core import connection, runtime
    from resilience.core.settings import reset_settings
    from resilience.core.store import reset_redis

    server = request.getfixturevalue("resilience_redis")
    server.ensure_running()
    if "resilience_app" in request.fixturenames:
        runtime.bind(request.getfixturevalue("resilience_app"))
    reset_settings()
    reset_redis()
    connection.reset()
    client = redis.Redis.from_url(server.url)  # the private server itself, whatever a test configured
    try:
        client.flushall()
    finally:
        client.close()


# -- the app ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def resilience_app_spec(pytestconfig: pytest.Config) -> str | None:
    """``--resilience-app``, else the ini option ``resilience_app`` (None when neither is set)."""
    return pytestconfig.getoption("resilience_app") or pytestconfig.getini(INI_APP) or None


@pytest.fixture(scope="session")
def resilience_celery_app(resilience_app_spec: str | None):
    """Your Celery app, as your project builds it. Override to build it yourself."""
    from resilience.core.runtime import load_app

    if not resilience_app_spec:
        raise pytest.UsageError(
            "name the Celery app under test: `resilience_app = proj.celery:app` in pytest.ini "
            "(or [tool.pytest.ini_options]), `--resilience-app proj.celery:app`, "
            "or override the resilience_celery_app fixture")
    return load_app(resilience_app_spec)


@pytest.fixture(scope="session")
def resilience_app(resilience_redis, resilience_celery_app):
    """Your app with the platform installed, using the private Redis."""
    from resilience import install
    from resilience.core import runtime
    from resilience.core.settings import reset_settings
    from resilience.core.store import get_redis, reset_redis
    from resilience.testing import recorder

    app = install(resilience_celery_app)
    url = resilience_redis.url
    app.conf.update(broker_url=url, result_backend=url)  # the environment says so too; Celery prefers it
    backend_cls = app.backend_cls
    if isinstance(backend_cls, str) and "+" in backend_cls:
        # A backend class chosen together with its URL when the app was configured (the platform's
        # tracked Redis backend, say), maybe at collection, before the private Redis existed.
        app.backend_cls = f"{backend_cls.split('+', 1)[0]}+{url}"
    backend_url = getattr(app.backend, "url", None)
    if isinstance(backend_url, str) and backend_url.startswith("redis") and backend_url != url:
        raise RuntimeError(f"the app's result backend ({backend_url}) was built before the tests pointed it "
                           f"at the private Redis ({url}): do not use results at import time")
    runtime.bind(app)
    reset_settings()
    reset_redis()
    get_redis().ping()  # the platform's own client reaches the private Redis, or this fails now
    recorder.enable()
    yield app
    recorder.disable()
    runtime.unbind(app)


# -- workers -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def resilience_worker_options() -> dict:
    """Keyword arguments for :func:`~resilience.testing.in_process_worker`
    (``concurrency``, ``pool``, ``queues`` ...). Override to change them."""
    return {}


@pytest.fixture
def resilience_worker(resilience_app, resilience_worker_options):
    """A real worker in a thread of the test process, for the test's duration."""
    from resilience.core.queues import queue_names
    from resilience.testing import in_process_worker

    options = {"queues": queue_names(resilience_app), **resilience_worker_options}
    with in_process_worker(resilience_app, **options) as worker:
        yield worker


@pytest.fixture
def resilience_subprocess_worker(resilience_app, resilience_app_spec, pytestconfig, tmp_path):
    """Start real worker processes of your app that a test can kill (``worker.kill()``)."""
    from resilience.core.queues import queue_names
    from resilience.testing import SubprocessWorker

    if not resilience_app_spec:
        raise pytest.UsageError("a subprocess worker needs the app's name: set `resilience_app` in the ini "
                                "file or pass --resilience-app")
    started: list[SubprocessWorker] = []
    pythonpath = _project_paths(pytestconfig)

    def start(*, name: str | None = None, concurrency: int = 1, pool: str = "prefork",
              queues: list[str] | None = None, include: list[str] | None = None, env: dict | None = None,
              extra_args: list[str] | None = None, ready_timeout: float = 120.0) -> SubprocessWorker:
        worker = SubprocessWorker(
            tmp_path / "worker-logs", app=resilience_app_spec, name=name, concurrency=concurrency, pool=pool,
            queues=queues or queue_names(resilience_app), include=["resilience.testing.record", *(include or ())],
            env=env, extra_args=extra_args, cwd=str(pytestconfig.rootpath), pythonpath=pythonpath)
        started.append(worker)
        return worker.start().wait_ready(ready_timeout)

    yield start
    for worker in started:
        worker.stop()


def _project_paths(config: pytest.Config) -> list[str]:
    """The import paths of the test process outside the interpreter's own (the project's
    directories that pytest or PYTHONPATH added), so a worker imports what the tests import."""
    interpreter = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths = [str(config.rootpath)]
    for entry in sys.path:
        path = Path(entry or os.getcwd()).resolve()
        if path.is_dir() and not any(path == root or root in path.parents for root in interpreter):
            paths.append(str(path))
    return list(dict.fromkeys(paths))


# -- assertions ------------------------------------------------------------------------------
@pytest.fixture
def resilience_jobs(resilience_app):
    """Assertions on what happened to jobs (:class:`~resilience.testing.JobInspector`)."""
    from resilience.testing import JobInspector

    return JobInspector(resilience_app)
