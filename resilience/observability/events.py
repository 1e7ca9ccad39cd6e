"""Worker events for Flower, published in batches.

Celery buffers a worker's task events (``task-received``, ``task-started``,
``task-succeeded``, ...) and publishes the buffer on the next tick of the
worker's event loop: with a pool of two and prefetch 1 that is about 2.5
``PUBLISH`` round trips per job, the largest per-job cost of keeping Flower
working. This consumer step publishes the buffer at most every
``WORKER_EVENT_FLUSH_INTERVAL_SEC`` (0.5 s) instead, from the event loop's
timer, and once more when the consumer stops, so the events of a busy worker
cost a fraction of a round trip per job and reach Flower within that interval.
Celery's own limit still applies: a buffer of ``buffer_limit`` events (24) is
published at once. ``WORKER_EVENT_FLUSH_INTERVAL_SEC=0`` keeps Celery's
per-tick flush. Events other than task events (worker heartbeats, online,
offline) are not buffered by Celery and are unchanged.

``TASK_SENT_EVENT`` (off by default) is the bundled app's
``task_send_sent_event``: a ``task-sent`` event published by the caller on
every submit, one more round trip per ``delay()``, so that Flower lists a job
before a worker has received it.
"""

from __future__ import annotations

import logging

from celery import bootsteps

from resilience.core.settings import get_settings

__all__ = ["EventBatchStep"]

log = logging.getLogger(__name__)


class EventBatchStep(bootsteps.StartStopStep):
    """Publishes the consumer's buffered task events on a timer instead of every loop tick."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.consumer = c
        self.interval = get_settings().worker_event_flush_interval_sec
        self.pending = None  # the timer entry of the next flush
        if self.interval > 0:
            # Celery's Events step hands this to each event dispatcher it builds.
            c.on_send_event_buffered = self.schedule

    def schedule(self) -> None:
        hub = self.consumer.hub
        if self.pending is None and hub is not None:
            self.pending = hub.call_later(self.interval, self.flush)

    def flush(self) -> None:
        self.pending = None
        dispatcher = self.consumer.event_dispatcher
        if dispatcher is None:
            return
        try:
            dispatcher.flush()
        except Exception as exc:  # Redis away: Celery keeps the buffer, the next event schedules a flush
            log.warning("task events not published: %s", exc)

    def stop(self, c):
        if self.pending is not None:
            self.pending.cancel()
        self.flush()

    shutdown = stop
