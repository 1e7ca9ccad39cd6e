"""A private redis-server for a test run."""

from __future__ import annotations

import os
from pathlib import Path

from resilience.embedded import RedisServerProcess, find_redis_binary
from resilience.settings import load_settings, reset_settings
from resilience.store import reset_redis

__all__ = ["start_private_redis"]


def start_private_redis(directory: Path, *, appendonly: bool = True) -> RedisServerProcess:
    """Start a redis-server of this process's own (free port, data in ``directory``) and
    point this process and its children at it (``REDIS_URL``, settings re-read)."""
    server = RedisServerProcess(binary=find_redis_binary(load_settings()), directory=Path(directory),
                                appendonly=appendonly).start()
    os.environ["REDIS_URL"] = server.url
    reset_settings()
    reset_redis()
    return server
