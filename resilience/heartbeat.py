"""Worker heartbeats: each worker records that it is alive, from its main process.

A bootstep timer (not the jobs) writes ``ZADD workers:heartbeats <worker id> <now>``
every ``WORKER_HEARTBEAT_INTERVAL_SEC``; a worker whose heartbeat is older than
``WORKER_HEARTBEAT_TIMEOUT_SEC`` is dead. The execution guard reads it to tell a
live run from an abandoned one.
"""

from __future__ import annotations

import json
import logging
import os
import time

from celery import bootsteps

from resilience.identity import worker_id
from resilience.keys import keys
from resilience.settings import Settings, get_settings
from resilience.store import get_redis

log = logging.getLogger(__name__)


def beat(hostname: str, *, now: float | None = None, info: dict | None = None) -> None:
    """Record one heartbeat of the worker named ``hostname`` (one round trip)."""
    now = time.time() if now is None else now
    k = keys()
    wid = worker_id(hostname)
    pipe = get_redis().pipeline(transaction=True)
    pipe.zadd(k.worker_heartbeats, {wid: now})
    pipe.hset(k.worker_info, wid, json.dumps({"hostname": hostname, "pid": os.getpid(), "at": now, **(info or {})}))
    pipe.execute()


class HeartbeatStep(bootsteps.StartStopStep):
    """Consumer bootstep: a hub/timer entry that beats while the worker runs."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.tref = None

    def start(self, parent):
        interval = get_settings().worker_heartbeat_interval_sec
        hostname = parent.hostname
        self._beat_safely(hostname)
        self.tref = parent.timer.call_repeatedly(interval, self._beat_safely, (hostname,), priority=10)

    def _beat_safely(self, hostname: str) -> None:
        try:
            beat(hostname)
        except Exception as exc:  # Redis away: the next beat will tell
            log.warning("heartbeat of %s not recorded: %s", hostname, exc)

    def stop(self, parent):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


def install(app, settings: Settings) -> None:
    if settings.feature_stuck_jobs:
        app.steps["consumer"].add(HeartbeatStep)
