"""Publishing while Redis is unreachable: bounded, then spooled (or a clear error).

:func:`publish_guarded` wraps every non-delayed publish of
:mod:`resilience.jobs.submission`:

* it never holds the caller longer than ``PUBLISH_TIMEOUT_SEC``: Celery's
  ``apply_async`` runs on the caller's thread, with Celery's per-thread
  context (the thread's result backend, the task it is running, so parent
  and root ids and ``result.children`` are right), through a producer whose
  network publish alone runs on a helper thread (:class:`BoundedProducer`);
  the caller waits at most that long for it, so even a frozen Redis
  (SIGSTOP, no socket error ever) cannot hang ``.delay()``;
* when the publish fails or times out, ``PUBLISH_OUTAGE_MODE=spool`` (default)
  writes the job to the local spool (:mod:`resilience.outages.spool`) and returns its
  ``AsyncResult`` at once; ``raise`` raises
  :class:`~resilience.core.errors.BrokerUnavailable`;
* while jobs wait in this process's spool, or the broker is known to be down,
  new jobs are spooled directly, behind them, so they are published in
  submission order and callers are not held once per job;
* a background :class:`Flusher` thread (started lazily, and at start-up when a
  previous run left spooled jobs) publishes the spool oldest first as soon as
  Redis answers, reconnecting with capped exponential backoff and jitter.

A publish that timed out may still complete later on its helper thread; the
job is then published twice under one job id (the same publish, with the same
publish token) and the execution guard runs its body once. With
``FEATURE_ENHANCED_REDIS=false`` this module is a pass-through.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery import bootsteps

from resilience.core import connection
from resilience.core.backoff import ExponentialBackoff

# The deadline machinery lives in resilience.core.bounded (below the job modules, which use it too);
# these names stay importable from here.
from resilience.core.bounded import BoundedProducer, bounded_producer, call_bounded, publish_bounded, within_deadline
from resilience.core.errors import BrokerUnavailable
from resilience.core.runtime import app_or_bound
from resilience.core.settings import get_settings
from resilience.jobs import idempotency
from resilience.outages import spool

log = logging.getLogger(__name__)

__all__ = ["publish_guarded", "call_bounded", "within_deadline", "BoundedProducer", "Flusher", "flusher",
           "SpoolWatch", "SpoolWatchStep", "report_spool_left",
           "publish_what_an_earlier_run_spooled", "watch_from_beat"]

def publish_guarded(task, args, kwargs, job_id: str, options: dict[str, Any], publish: Callable[[Any], Any],
                    *, producer=None, unreachable: BaseException | None = None):
    """Publish within ``PUBLISH_TIMEOUT_SEC``; spool or raise when Redis is unreachable.

    ``publish(producer)`` publishes the job on the caller's thread through
    ``producer``, a :class:`BoundedProducer` around the caller's ``producer``
    (or one from the app's pool); network steps other than the broker write
    go through :func:`within_deadline`. ``unreachable`` is an outage the
    caller already met on its way here (the idempotency claim): the job is
    then spooled (or refused) without a second wait.
    """
    settings = get_settings()
    if not settings.feature_enhanced_redis:
        if unreachable is not None:
            raise unreachable
        return publish(producer)
    spooling = settings.publish_outage_mode == "spool"
    if spooling and (flusher().busy() or connection.is_down("broker")):
        return _spool(task, args, kwargs, job_id, options, reason="jobs already wait in the spool")
    try:
        if unreachable is not None:
            raise unreachable
        with bounded_producer(task.app, producer, settings.publish_timeout_sec) as bounded:
            result = publish(bounded)
    except Exception as err:
        if not connection.is_outage(err):
            raise
        connection.mark_down("broker", err)
        if not spooling:
            flusher().watch()
            raise BrokerUnavailable(f"Redis did not accept job {job_id} of {task.name!r} within "
                                    f"{settings.publish_timeout_sec}s ({err}); PUBLISH_OUTAGE_MODE=raise") from err
        return _spool(task, args, kwargs, job_id, options, reason=str(err))
    connection.mark_up("broker")
    return result


def _spool(task, args, kwargs, job_id: str, options: dict[str, Any], *, reason: str):
    options = {k: v for k, v in options.items() if k not in {"producer", "connection"}}
    if isinstance(options.get("eta"), datetime):
        options["eta"] = options["eta"].isoformat()
    parent = task.app.current_worker_task
    if parent is not None:  # its place in the task tree, as Celery's publish would record it
        options["parent_id"] = options.get("parent_id") or parent.request.id
        options["root_id"] = options.get("root_id") or parent.request.root_id or parent.request.id
    n = spool.append(task.name, args, kwargs, job_id, options)
    log.info("spooled job %s of %s (%d waiting): %s", job_id, task.name, n, reason)
    _report_spool_at_exit()
    flusher().wake()
    result = task.AsyncResult(job_id)
    if parent is not None and options.get("add_to_parent", True):
        parent.add_trail(result)
    return result


_exit_report_registered = False


def _report_spool_at_exit() -> None:
    """A process that spooled jobs says, when it exits, how many still wait and where."""
    global _exit_report_registered
    if not _exit_report_registered:
        _exit_report_registered = True
        atexit.register(report_spool_left)


def report_spool_left() -> int:
    """Try one bounded flush, then log how many spooled jobs are left and where; returns that count.

    Nothing is lost when a producer exits with jobs in its spool: the rows stay
    on disk, and every worker and beat using the same data dir publishes them
    (:class:`SpoolWatch`), as does ``resilience spool flush``.
    """
    try:
        left = spool.count()
        if left and not connection.is_down("broker"):
            flusher().flush_once()
            left = spool.count()
        if left:
            log.warning("%d spooled job(s) wait in %s: a worker or beat using this data dir publishes them "
                        "when Redis takes writes again (or run `resilience spool flush`)", left, spool.spool_path())
        return left
    except Exception:  # noqa: BLE001 - at exit, never raise over what the process was doing
        log.debug("could not report the publish spool at exit", exc_info=True)
        return 0


class SpoolWatch:
    """Publishes what any process left in this data dir's spool: runs in every worker and in beat.

    Every ``SPOOL_CHECK_INTERVAL_SEC`` it looks at the spool (a file check, and
    a COUNT when the file exists) and wakes this process's flusher when jobs
    wait, so jobs a short-lived producer spooled before it exited never wait on
    that producer.
    """

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SpoolWatch:
        self._thread = threading.Thread(target=self._run, name="resilience-spool-watch", daemon=True)
        self._thread.start()
        return self

    def check(self) -> bool:
        """One look; True when spooled jobs were found (and the flusher woken)."""
        if spool.pending():
            flusher().wake()
            return True
        return False

    def _run(self) -> None:
        interval = self.interval or get_settings().spool_check_interval_sec
        while not self._stop.wait(interval):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a broken spool file is reported by the flusher; look again later
                log.debug("spool check failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()


class SpoolWatchStep(bootsteps.StartStopStep):
    """Worker bootstep: a :class:`SpoolWatch` for the worker's lifetime (its main process)."""

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.watch: SpoolWatch | None = None

    def start(self, parent):
        self.watch = SpoolWatch().start()

    def stop(self, parent):
        if self.watch is not None:
            self.watch.stop()
            self.watch = None

    shutdown = stop


_beat_watch: SpoolWatch | None = None


def watch_from_beat(**_: Any) -> None:
    global _beat_watch
    if _beat_watch is None:
        _beat_watch = SpoolWatch().start()


def _publish_spooled(app, job: spool.SpooledJob, timeout: float) -> None:
    # By name, with Celery's own publish: the flushing process need not import the job's module.
    key = (job.options.get("headers") or {}).get("idempotency_key")
    if key and get_settings().feature_idempotency:
        # Spooled because its key could not be claimed: claim it now (again, harmlessly,
        # if this row is published a second time after a crash).
        owner = publish_bounded(lambda: idempotency.claim(key, job.job_id), timeout)
        if owner is not None and owner != job.job_id:
            log.warning("spooled job %s of %s not published: job %s owns its idempotency key %r",
                        job.job_id, job.task, owner, key)
            return
    publish_bounded(lambda: app.send_task(job.task, job.args, job.kwargs, task_id=job.job_id, **job.options),
                    timeout)


class Flusher:
    """This process's background thread that publishes the spool when Redis is back.

    It runs while jobs wait (``busy()``), retrying with capped exponential
    backoff and jitter (``REDIS_RECONNECT_BASE_SEC`` .. ``REDIS_RECONNECT_MAX_SEC``),
    and stops when the spool is empty. ``watch()`` runs it without jobs, only
    to notice the broker coming back (``PUBLISH_OUTAGE_MODE=raise``).
    """

    def __init__(self, app=None) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._busy = False
        self.published = 0

    def busy(self) -> bool:
        """Whether this process has jobs in the spool that are not yet published."""
        return self._busy

    def wake(self) -> None:
        self._busy = True
        self._start()
        self._wake.set()

    def watch(self) -> None:
        self._start()

    def flush_once(self) -> int:
        """Publish what the spool holds now, on the calling thread (each publish bounded);
        stops at the first failure. Returns how many went out (-1: another process flushes)."""
        settings = get_settings()
        try:
            sent = spool.drain(lambda job: _publish_spooled(self._app_or_default(), job,
                                                            settings.publish_timeout_sec))
        except Exception as err:  # noqa: BLE001 - still unreachable or full: the rows stay
            log.info("spool not flushed: %s", err)
            return 0
        if sent > 0:
            self.published += sent
            log.warning("published %d spooled job(s)", sent)
        return sent

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="resilience-spool-flusher", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """End the thread at its next step (it may be waiting on Redis); spooled jobs stay spooled."""
        self._stopped.set()
        self._wake.set()

    def _app_or_default(self):
        return app_or_bound(self._app)

    def _run(self) -> None:
        settings = get_settings()
        backoff = ExponentialBackoff(base=settings.redis_reconnect_base_sec, cap=settings.redis_reconnect_max_sec)
        attempt = 0
        while not self._stopped.is_set():
            try:
                sent = spool.drain(lambda job: _publish_spooled(self._app_or_default(), job,
                                                                settings.publish_timeout_sec))
            except Exception as err:  # Redis still away: wait and try again
                if connection.is_outage(err):
                    connection.mark_down("broker", err)
                    connection.check_alerts()
                else:
                    log.exception("spooled job could not be published; it stays spooled")
                delay = backoff.compute(attempt)
                attempt += 1
                log.debug("spool flush failed (%s); retrying in %.2fs", err, delay)
                self._wake.wait(delay)
                self._wake.clear()
                continue
            if sent == -1:  # another process flushes this spool; look again shortly
                self._wake.wait(settings.redis_reconnect_max_sec)
                self._wake.clear()
                continue
            if sent:
                self.published += sent
                log.warning("published %d spooled job(s)", sent)
            connection.mark_up("broker")
            with self._lock:
                if spool.count() == 0:
                    self._busy = False
                    self._thread = None
                    return


_flusher: Flusher | None = None
_flusher_lock = threading.Lock()


def reset_flusher() -> None:
    """Stop and forget this process's flusher (tests: each starts without one left by another)."""
    global _flusher
    with _flusher_lock:
        previous, _flusher = _flusher, None
    if previous is not None:
        previous.stop()


def flusher() -> Flusher:
    """This process's spool flusher (one per process)."""
    global _flusher
    with _flusher_lock:
        if _flusher is None:
            _flusher = Flusher()
        return _flusher


#: Whether loading an app wakes the flusher for jobs an earlier run left in the spool. Off in a
#: ``resilience`` command's process: a command does what it says (``spool flush`` publishes them
#: itself and reports what it did) and leaves publishing in the background to workers and beat.
_publish_earlier_spool_at_load = True


def publish_earlier_spool_at_load(enabled: bool) -> bool:
    """Switch :func:`publish_what_an_earlier_run_spooled` on or off for this process; returns the previous value."""
    global _publish_earlier_spool_at_load
    previous, _publish_earlier_spool_at_load = _publish_earlier_spool_at_load, enabled
    return previous


def publish_what_an_earlier_run_spooled(app: Any) -> None:
    """Give this process its flusher for ``app`` and wake it when the spool holds jobs of an earlier run."""
    global _flusher
    if not _publish_earlier_spool_at_load:
        return
    with _flusher_lock:
        if _flusher is None:
            _flusher = Flusher(app)
        current = _flusher
    try:
        if spool.pending():
            log.warning("found %d spooled job(s) from an earlier run; publishing them", spool.count())
            current.wake()
    except Exception:  # a broken spool file must not stop the app from loading
        log.exception("could not read the publish spool")
