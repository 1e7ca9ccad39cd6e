"""The test harness: a private redis-server for the session, real workers.

The session's redis-server runs on a free port with AOF in a temporary data
dir. ``REDIS_URL`` and ``RESILIENCE_DATA_DIR`` are set before any test module
is imported (``pytest_configure``), so the app, the platform's store and
subprocess workers all use it. Every test starts from an empty Redis.

``tests/unit`` holds the tests that need no Redis: a run of those alone
starts no redis-server, and no test there is given one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from resilience.embedded import RedisServerProcess
from resilience.settings import reset_settings
from resilience.testing import start_private_redis

# A user's project, run by tests/test_testing_plugin.py in a pytest of its own.
collect_ignore = ["plugin_example"]

UNIT_DIR = Path(__file__).parent / "unit"

_session_dir = Path(tempfile.mkdtemp(prefix="resilience-tests-"))
os.environ["RESILIENCE_DATA_DIR"] = str(_session_dir / "data")
for _name in list(os.environ):
    if _name.startswith("FEATURE_") or _name in {"RESILIENCE_KEY_PREFIX", "ALERT_WEBHOOK_URL", "SENTRY_DSN"}:
        del os.environ[_name]
_server: RedisServerProcess | None = None


def _unit_only(config: pytest.Config) -> bool:
    """Whether every path this run was given lies in tests/unit."""
    paths = [Path(config.invocation_params.dir, arg.split("::")[0]).resolve() for arg in config.args]
    return bool(paths) and all(path.is_relative_to(UNIT_DIR.resolve()) for path in paths)


def _start_server() -> RedisServerProcess:
    global _server
    if _server is None:
        _server = start_private_redis(_session_dir / "redis")
    return _server


def pytest_configure(config):
    if not _unit_only(config):
        _start_server()  # before test modules import the app: it must find REDIS_URL set


def pytest_unconfigure(config):
    if _server is not None:
        _server.stop()
    shutil.rmtree(_session_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> RedisServerProcess:
    """The session's redis-server: tests may stop, kill, freeze and restart it."""
    return _start_server()


@pytest.fixture(autouse=True)
def _fresh_redis(request):
    """Every test outside tests/unit starts with a running, empty Redis and default settings."""
    if request.path.is_relative_to(UNIT_DIR):
        reset_settings()
        yield
        reset_settings()
        return
    redis_server = request.getfixturevalue("redis_server")
    redis_server.thaw()
    if not redis_server.ping():
        redis_server.restart()
    from resilience import connection, outage
    from resilience.store import get_redis, reset_redis

    outage.reset_flusher()  # no flusher thread of an earlier test drains this test's spool
    reset_settings()
    reset_redis()
    get_redis().flushall()
    connection.reset()  # this process's view of its connections starts up, as in a new process
    yield
    redis_server.thaw()
    if not redis_server.ping():
        redis_server.restart()
    reset_settings()
    reset_redis()


@pytest.fixture
def r():
    """The platform's Redis client (decoded strings)."""
    from resilience.store import get_redis

    return get_redis()


@pytest.fixture(scope="session")
def app():
    import tests.jobs  # noqa: F401 - registers the test jobs
    from tasks.app import app as celery_app

    return celery_app


@pytest.fixture
def worker(app):
    """A real in-process worker (threads pool) for the test's duration."""
    from resilience.testing import in_process_worker

    with in_process_worker(app) as w:
        yield w


@pytest.fixture
def alerts_delivered():
    """Alerts queued by an earlier test are delivered before this one starts, and this one's after it."""
    from resilience import alerts

    assert alerts.flush(30)
    yield
    assert alerts.flush(30)


@pytest.fixture
def log_dir(tmp_path) -> Path:
    return tmp_path / "logs"
