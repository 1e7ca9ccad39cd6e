"""Test helpers shipped with the library, so users test their tasks as we test ours.

* :func:`wait_for` waits on a condition with a deadline (never sleep to synchronise);
* :class:`~resilience.embedded.RedisServerProcess` is a private redis-server
  that a test can stop, kill (SIGKILL), freeze (SIGSTOP) and restart;
* :func:`configure` points this process (settings, store, Celery app) at a Redis
  and applies setting overrides;
* :func:`in_process_worker` runs a real Celery worker in a thread (fast);
* :class:`SubprocessWorker` runs a real worker as a child process that a test
  can kill, with its output in a log file.

Each lives in a module of its own (``waiting``, ``servers``, ``config``,
``workers``); this package is the place to import them from.
"""

from resilience.embedded import RedisServerProcess, find_redis_binary, free_port
from resilience.testing.config import configure, settings_env
from resilience.testing.servers import start_private_redis
from resilience.testing.waiting import hold_outage, wait_for
from resilience.testing.workers import SubprocessWorker, in_process_worker, worker_health_url

__all__ = [
    "RedisServerProcess", "SubprocessWorker", "configure", "find_redis_binary", "free_port",
    "hold_outage", "in_process_worker", "settings_env", "start_private_redis", "wait_for",
    "worker_health_url",
]
