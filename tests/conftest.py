"""The test harness: a private redis-server for the session, real workers.

The session's redis-server runs on a free port with AOF in a temporary data
dir. ``REDIS_URL`` and ``RESILIENCE_DATA_DIR`` are set before the Celery app is
imported, so the app, the platform's store and subprocess workers all use it.
Every test starts from an empty Redis.
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

_session_dir = Path(tempfile.mkdtemp(prefix="resilience-tests-"))
os.environ["RESILIENCE_DATA_DIR"] = str(_session_dir / "data")
for _name in list(os.environ):
    if _name.startswith("FEATURE_") or _name in {"RESILIENCE_KEY_PREFIX", "ALERT_WEBHOOK_URL", "SENTRY_DSN"}:
        del os.environ[_name]
_server = start_private_redis(_session_dir / "redis")


def pytest_unconfigure(config):
    _server.stop()
    shutil.rmtree(_session_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> RedisServerProcess:
    """The session's redis-server: tests may stop, kill, freeze and restart it."""
    return _server


@pytest.fixture(autouse=True)
def _fresh_redis(redis_server):
    """Every test starts with a running, empty Redis and default settings."""
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
def log_dir(tmp_path) -> Path:
    return tmp_path / "logs"
