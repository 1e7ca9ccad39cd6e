"""A private redis-server for a test run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from resilience.core.embedded import RedisServerProcess, find_redis_binary
from resilience.core.settings import load_settings, reset_settings
from resilience.core.store import reset_redis
from resilience.testing.waiting import hold_outage

__all__ = ["PrivateRedis", "start_private_redis"]


def start_private_redis(directory: Path, *, appendonly: bool = True) -> RedisServerProcess:
    """Start a redis-server of this process's own (free port, data in ``directory``) and
    point this process and its children at it (``REDIS_URL``, settings re-read)."""
    server = RedisServerProcess(binary=find_redis_binary(load_settings()), directory=Path(directory),
                                appendonly=appendonly).start()
    os.environ["REDIS_URL"] = server.url
    reset_settings()
    reset_redis()
    return server


@dataclass
class PrivateRedis(RedisServerProcess):
    """A test's own redis-server that survives being killed with what it acknowledged.

    It writes every change to its AOF before it replies (``appendfsync no``:
    the write reaches the kernel, no fsync holds it back), so a SIGKILL loses
    nothing a client was told had happened, and a test that kills Redis
    mid-job checks the platform, not Redis's own fsync window. (A power loss
    could lose it; a test does not pull the plug.)
    """

    def command(self) -> list[str]:
        argv = super().command()
        argv[argv.index("--appendfsync") + 1] = "no"
        return argv

    @classmethod
    def in_directory(cls, directory: Path) -> PrivateRedis:
        """A server on a free port with its data in ``directory`` (not started)."""
        return cls(binary=find_redis_binary(load_settings()), directory=Path(directory))

    def crash(self, down_for: float = 0.0) -> PrivateRedis:
        """SIGKILL it, keep it down ``down_for`` seconds, then start it again on the same
        port with the same data (the crash-and-restart a chaos test needs)."""
        self.kill()
        if down_for:
            hold_outage(down_for)
        self.restart()
        return self

    def ensure_running(self) -> PrivateRedis:
        """Thaw it if frozen, start it if it was stopped or killed."""
        self.thaw()
        if not self.ping():
            self.restart()
        return self
