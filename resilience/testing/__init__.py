"""Test helpers shipped with the library, so users test their tasks as we test ours.

* :func:`wait_for` waits on a condition with a deadline (never sleep to synchronise);
* :class:`~resilience.core.embedded.RedisServerProcess` is a private redis-server
  that a test can stop, kill (SIGKILL), freeze (SIGSTOP) and restart;
  :class:`PrivateRedis` is one that loses nothing it acknowledged when killed,
  with ``crash()`` to kill and restart it;
* :class:`SentinelTopology` is a primary, two replicas and three sentinels
  (real redis-server processes) whose primary a test can SIGKILL and restart;
* :func:`configure` points this process (settings, store, Celery app) at a Redis
  and applies setting overrides;
* :func:`in_process_worker` runs a real Celery worker in a thread (fast);
* :class:`SubprocessWorker` runs a real worker of any app as a child process
  that a test can kill, with its output in a log file;
* :class:`JobInspector` asserts what happened to a job (ran once,
  dead-lettered with a reason, retried N times with these delays) from the
  platform's records and the runs and retries that :mod:`~resilience.testing.recorder`
  records in test workers.

The pytest plugin (:mod:`resilience.testing.pytest_plugin`) turns these into
fixtures. Each helper lives in a module of its own; this package is the place
to import them from.
"""

from resilience.core.embedded import RedisServerProcess, find_redis_binary, free_port
from resilience.testing.config import configure, settings_env
from resilience.testing.jobs import JobInspector
from resilience.testing.recorder import RetryRecord
from resilience.testing.servers import PrivateRedis, start_private_redis
from resilience.testing.topology import SentinelTopology
from resilience.testing.waiting import flushing_paused, hold_outage, wait_for
from resilience.testing.workers import SubprocessWorker, in_process_worker, worker_health_url

__all__ = [
    "JobInspector", "PrivateRedis", "RedisServerProcess", "RetryRecord", "SentinelTopology", "SubprocessWorker",
    "configure",
    "find_redis_binary", "flushing_paused", "free_port", "hold_outage", "in_process_worker", "settings_env",
    "start_private_redis", "wait_for", "worker_health_url",
]
