"""Worker heartbeats: each worker records that it is alive, from its main process.

A bootstep timer (not the jobs) writes ``ZADD workers:heartbeats <worker id> <now>``
every ``WORKER_HEARTBEAT_INTERVAL_SEC``; a worker whose heartbeat is older than
``WORKER_HEARTBEAT_TIMEOUT_SEC`` is dead. The execution guard reads it to tell a
live run from an abandoned one.

Each heartbeat also records, in ``workers:info``, the kombu delivery tags the
worker holds at that moment (its reserved and running requests). The sweep
compares them with kombu's ``unacked`` hash: a message no live worker holds,
delivered before the holders' latest heartbeats, is orphaned (its worker died,
or it was prefetched before a broker connection loss) and is put back.

The timer keeps beating through a warm shutdown, while running jobs finish;
the heartbeat is removed on ``worker_shutdown``, after the pool has stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time

from celery import bootsteps

from resilience.core.identity import worker_id
from resilience.core.keys import keys
from resilience.core.settings import get_settings
from resilience.core.store import get_redis

log = logging.getLogger(__name__)

__all__ = ["beat", "held_delivery_tags", "remove", "HeartbeatStep", "on_worker_shutdown"]


def held_delivery_tags() -> list[str]:
    """kombu delivery tags of the requests this worker process holds.

    Reserved and running requests, and those waiting for their ETA or
    countdown (a retry's delay), which stay unacked in kombu meanwhile.
    """
    from celery.worker import state

    tags = set()
    held = list(state.reserved_requests) + list(state.active_requests) + list(state.scheduled_requests)
    for request in held:
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag:
            tags.add(str(tag))
    return sorted(tags)


def beat(hostname: str, *, now: float | None = None, info: dict | None = None) -> None:
    """Record one heartbeat of the worker named ``hostname`` (one round trip)."""
    now = time.time() if now is None else now
    k = keys()
    wid = worker_id(hostname)
    pipe = get_redis().pipeline(transaction=True)
    pipe.zadd(k.worker_heartbeats, {wid: now})
    pipe.hset(k.worker_info, wid, json.dumps({"hostname": hostname, "pid": os.getpid(), "at": now, **(info or {})}))
    pipe.execute()


def remove(hostname: str) -> None:
    """Forget the heartbeat of a worker that stopped cleanly."""
    k = keys()
    wid = worker_id(hostname)
    pipe = get_redis().pipeline(transaction=True)
    pipe.zrem(k.worker_heartbeats, wid)
    pipe.hdel(k.worker_info, wid)
    pipe.execute()


class HeartbeatStep(bootsteps.StartStopStep):
    """Consumer bootstep: a timer entry that beats while the worker runs."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.tref = None
        self.started_at = time.time()

    def start(self, parent):
        self._cancel()  # a consumer restart (broker reconnect) starts the step again
        interval = get_settings().worker_heartbeat_interval_sec
        hostname = parent.hostname
        self._beat_safely(hostname)
        self.tref = parent.timer.call_repeatedly(interval, self._beat_safely, (hostname,), priority=10)

    def _beat_safely(self, hostname: str) -> None:
        try:
            beat(hostname, info={"started_at": self.started_at, "tags": held_delivery_tags()})
        except Exception as exc:  # Redis away: the next beat will tell
            log.warning("heartbeat of %s not recorded: %s", hostname, exc)

    def _cancel(self) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def stop(self, parent):
        """Keep beating: on a warm shutdown the pool still finishes running jobs."""

    def shutdown(self, parent):
        self._cancel()


def on_worker_shutdown(sender=None, **kwargs) -> None:
    hostname = getattr(sender, "hostname", None)
    if not hostname:
        return
    try:
        remove(hostname)
    except Exception as exc:  # an observer never breaks what it observes
        log.warning("heartbeat of %s not removed: %s", hostname, exc)
