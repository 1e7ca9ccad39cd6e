"""The stuck-job sweep: bring back the work of dead workers and stop stuck jobs.

Run by beat every ``STUCK_SWEEP_INTERVAL_SEC`` (``resilience.sweep_stuck_jobs``
in ``tasks/platform.py``) and by ``resilience sweep``. A token-checked lock
(:mod:`resilience.core.locks`) that expires before the next run makes sure two
beats, or beat and a manual sweep, never act twice; every action is also a
compare-and-swap in Lua, so even without the lock nothing is pushed twice.

One sweep, in order:

1. **Orphaned messages** (:mod:`resilience.transport.unacked`): a message in kombu's
   ``unacked`` hash that no live worker holds (per the delivery tags each
   heartbeat records), delivered before the oldest live worker's latest
   heartbeat, goes back on its queue exactly as kombu's ``restore_by_tag``
   would put it, and its ``unacked`` entry is dropped so kombu's age-based
   restore never brings it back again. This covers the jobs of dead workers
   and messages stranded by a broker connection loss.
2. **Jobs of dead workers whose message is gone** (acked early, or restored
   already): rebuilt from their ``jobs:active`` entry and published again
   under the same job id and attempt.
3. **Jobs without progress** for their timeout on a live worker: claimed
   (``lua/sweep_claim.lua``: the execution record moves to the next attempt, so
   the stopped run's late finish or redelivery never runs it twice), stopped
   with SIGKILL through the ``resilience_terminate`` control command, then
   retried with the task's backoff or dead-lettered when its retries are spent.

The whole sweep costs a fixed number of round trips (pipelines), whatever
the number of active jobs; only the jobs it acts on cost more.

A bad record (a ``jobs:active`` entry, a ``workers:info`` record or an
``unacked`` entry that is not JSON of the expected shape) is skipped and moved
to the quarantine (:mod:`resilience.core.quarantine`) in one more round trip; a
worker whose ``workers:info`` record is bad counts as holding no messages
(as one without a record). A key of the wrong type is reported once and the
sweep goes on without it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from resilience.core.connection import is_outage
from resilience.core.identity import hostname_of
from resilience.core.keys import keys
from resilience.core.locks import Lock
from resilience.core.observe import guarded
from resilience.core.quarantine import ARRAY, INTEGER, NUMBER, OBJECT, TEXT, Batch, Reply, Shape
from resilience.core.runtime import app_or_bound, transport_options
from resilience.core.settings import Settings, get_settings
from resilience.core.store import get_redis, load_script
from resilience.jobs import deadletter, retrying, scheduler
from resilience.jobs.executions import PUBLISH_HEADER
from resilience.jobs.task import ResilientTask
from resilience.observability import alert_rules, metrics
from resilience.transport import unacked

__all__ = ["SweepReport", "sweep", "register_control_command", "TERMINATE_SIGNAL", "LOCK_NAME"]

log = logging.getLogger(__name__)

LOCK_NAME = "sweeper"

#: The signal that stops a stuck job's pool process. SIGKILL, not SIGTERM: a job
#: that stopped reporting progress is often blocked in C code or a socket read,
#: or swallows SystemExit, and a SIGTERM it ignores would leave the slot taken
#: while its retry already runs elsewhere. The execution guard makes a job cut
#: off mid-way safe to run again, so nothing is gained by a polite stop.
TERMINATE_SIGNAL = "SIGKILL"

#: A ``jobs:active`` entry as the sweep reads it (``resilience.jobs.executions.registry_entry`` writes it).
ACTIVE_ENTRY = Shape({"task": TEXT, "worker": TEXT, "hostname": TEXT, "started_at": NUMBER,
                      "last_progress_at": NUMBER, "timeout": NUMBER, "attempt": INTEGER, "queue": TEXT,
                      "exchange": TEXT, "delivery_tag": TEXT, "idempotency_key": TEXT, "args": ARRAY,
                      "kwargs": OBJECT}, required=("task", "worker"))
#: A ``workers:info`` record (``resilience.recovery.heartbeat`` writes it).
WORKER_INFO = Shape({"at": NUMBER, "started_at": NUMBER, "tags": ARRAY})


@dataclass
class SweepReport:
    """What one sweep saw and did (``resilience sweep --json`` prints it)."""

    ran: bool = True
    skipped: str | None = None
    at: float = 0.0
    duration_ms: float = 0.0
    live_workers: list[str] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)
    active_jobs: int = 0
    restored: list[dict] = field(default_factory=list)
    requeued: list[dict] = field(default_factory=list)
    forgotten_workers: list[str] = field(default_factory=list)
    stopped: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Bad records skipped (``key [field]: problem``), and how many of them were quarantined.
    bad_records: list[str] = field(default_factory=list)
    quarantined: int = 0

    @property
    def acted(self) -> int:
        return len(self.restored) + len(self.requeued) + len(self.stopped)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- entry point ---------------------------------------------------------------------
def sweep(app=None, *, now: float | None = None) -> SweepReport:
    """Run one sweep under the sweep lock; returns what it did."""
    settings = get_settings()
    if not settings.feature_stuck_jobs:
        return SweepReport(ran=False, skipped="FEATURE_STUCK_JOBS is off")
    started = time.monotonic()
    lock = Lock(LOCK_NAME, ttl_ms=_lock_ttl_ms(settings))
    if not lock.acquire():
        return SweepReport(ran=False, skipped="another sweep holds the lock")
    try:
        report = _sweep(app_or_bound(app), settings, time.time() if now is None else now)
    finally:
        try:
            lock.release()
        except Exception as exc:  # it expires on its own
            log.warning("sweep lock not released: %s", exc)
    report.duration_ms = round((time.monotonic() - started) * 1000, 1)
    _record(report)
    return report


def _lock_ttl_ms(settings: Settings) -> int:
    """Four fifths of the sweep interval: always free again before the next run."""
    return max(100, int(settings.stuck_sweep_interval_sec * 800))


# -- the sweep -------------------------------------------------------------------------
def _sweep(app, settings: Settings, now: float) -> SweepReport:
    k = keys()
    r = get_redis()
    report = SweepReport(at=now)
    transport = transport_options(app)
    batch = Batch("sweep")
    try:
        _sweep_records(app, r, k, settings, now, transport, batch, report)
    finally:
        report.bad_records = batch.problems
        report.quarantined = len(batch.flush(r, now=now))
    return report


def _sweep_records(app, r, k, settings: Settings, now: float, transport: dict, batch: Batch,
                   report: SweepReport) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.zrange(k.worker_heartbeats, 0, -1, withscores=True)
    pipe.hgetall(k.worker_info)
    pipe.hgetall(k.active)
    pipe.zrangebyscore(k.active_deadlines, "-inf", now)
    pipe.zrange(k.kombu_unacked_index(transport), 0, -1, withscores=True)
    beats, infos, raw_active, overdue, unacked_index = batch.execute(pipe, [
        Reply(k.worker_heartbeats, "sorted set", list), Reply(k.worker_info, "hash", dict),
        Reply(k.active, "hash", dict), Reply(k.active_deadlines, "sorted set", list),
        Reply(k.kombu_unacked_index(transport), "sorted set", list)])

    live = {w: t for w, t in beats if t > now - settings.worker_heartbeat_timeout_sec}
    report.live_workers = sorted(live)
    active = {}
    for job_id, raw in raw_active.items():
        entry = batch.hash_value(k.active, job_id, raw, ACTIVE_ENTRY, companion=k.active_deadlines)
        if entry is not None:
            active[job_id] = entry
    report.active_jobs = len(active)
    report.dead_workers = sorted({w for w, _ in beats if w not in live}
                                 | {e.get("worker") for e in active.values()
                                    if e.get("worker") and e.get("worker") not in live
                                    and _abandoned(e, now, settings)})
    dead = set(report.dead_workers)

    held: set[str] = set()
    beat_times = []
    for worker in live:
        raw = infos.get(worker)
        info = (batch.hash_value(k.worker_info, worker, raw, WORKER_INFO) if raw is not None else None) or {}
        held.update(str(t) for t in info.get("tags") or ())
        beat_times.append(float(info.get("at") or live[worker]))
    # A message delivered after a live worker's latest heartbeat may be held
    # without being listed yet: leave it for a later sweep.
    margin = settings.worker_heartbeat_interval_sec
    cutoff = (min(beat_times) if beat_times else now) - margin
    orphans = [tag for tag, delivered in unacked_index if tag not in held and delivered < cutoff]

    entry_by_tag = {str(e["delivery_tag"]): (job_id, e) for job_id, e in active.items() if e.get("delivery_tag")}
    restored_jobs = _restore_orphans(r, orphans, entry_by_tag, dead, report, transport, batch)

    in_unacked = {tag for tag, _ in unacked_index}
    for job_id, entry in active.items():
        worker = entry.get("worker")
        if worker in dead and job_id not in restored_jobs and str(entry.get("delivery_tag")) not in in_unacked:
            _for_one_job(report, job_id, _requeue_from_entry, app, r, k, settings, job_id, entry, now, report)

    for job_id in overdue:
        entry = active.get(job_id)
        if entry is None or entry.get("worker") not in live:
            continue
        _for_one_job(report, job_id, _stop_stuck, app, r, k, settings, job_id, entry, now, report)
    _forget_long_dead_workers(r, k, beats, active, now, settings, report)


def _for_one_job(report: SweepReport, job_id: str, action, *args) -> None:
    """Act on one job: an error other than an outage is reported, and the sweep goes on with the next."""
    try:
        action(*args)
    except Exception as exc:
        if is_outage(exc):
            raise
        report.errors.append(f"job {job_id}: {exc}")
        log.exception("sweep: could not act on job %s", job_id)


#: A dead worker stays listed (as DEAD in ``resilience status``) this long.
FORGET_DEAD_WORKERS_AFTER_SEC = 24 * 3600


def _forget_long_dead_workers(r, k, beats, active: dict, now: float, settings: Settings,
                              report: SweepReport) -> None:
    """Drop heartbeats of workers dead for a day that no registry entry names any more."""
    horizon = now - max(FORGET_DEAD_WORKERS_AFTER_SEC, 10 * settings.worker_heartbeat_timeout_sec)
    named = {e.get("worker") for e in active.values()}
    gone = [w for w, beat in beats if beat < horizon and w not in named]
    if gone:
        pipe = r.pipeline(transaction=True)
        pipe.zrem(k.worker_heartbeats, *gone)
        pipe.hdel(k.worker_info, *gone)
        pipe.execute()
        report.forgotten_workers = sorted(gone)


def _abandoned(entry: dict, now: float, settings: Settings) -> bool:
    """A run whose worker never beat counts as dead once it is older than the heartbeat timeout."""
    return float(entry.get("started_at") or 0) < now - settings.worker_heartbeat_timeout_sec


# -- 1. orphaned messages ------------------------------------------------------------
def _restore_orphans(r, tags: list[str], entry_by_tag: dict, dead: set[str], report: SweepReport,
                     transport: dict, batch: Batch) -> set[str]:
    """Push orphaned ``unacked`` messages back (a fixed number of round trips for all of them)."""
    candidates = []
    for tag in tags:
        job_id, entry = entry_by_tag.get(tag, ("", {}))
        owner = entry.get("worker") or ""
        if job_id and owner not in dead:
            job_id = ""  # the entry belongs to a run on a live worker: leave it
        candidates.append(unacked.Candidate(tag, job_id=job_id, owner=owner))
    restored = set()
    for done in unacked.restore(r, candidates, transport, batch):
        headers = done.payload.get("headers") or {}
        tag, job_id, owner = done.candidate.tag, done.candidate.job_id, done.candidate.owner
        action = {"job_id": headers.get("id") or job_id or None, "task": headers.get("task"),
                  "queue": done.queue, "delivery_tag": tag, "worker": owner or None}
        report.restored.append(action)
        if job_id:
            restored.add(job_id)
        log.warning("sweep: put orphaned message %s of job %s (%s) back on queue %s",
                    tag, action["job_id"], action["task"], done.queue)
    return restored


# -- 2. jobs of dead workers -----------------------------------------------------------
def _requeue_from_entry(app, r, k, settings: Settings, job_id: str, entry: dict, now: float,
                        report: SweepReport) -> None:
    claimed = _claim(r, k, settings, job_id, entry["worker"], "+inf", "", entry.get("attempt") or 0, now)
    if not claimed:
        return
    attempt = int(entry.get("attempt") or 0)
    try:
        _publish(app, entry, job_id, retries=attempt, countdown=0)
    except Exception as exc:
        report.errors.append(f"job {job_id}: requeue failed: {exc}")
        log.exception("sweep: could not requeue job %s of dead worker %s", job_id, entry["worker"])
        return
    report.requeued.append({"job_id": job_id, "task": entry.get("task"), "worker": entry["worker"],
                            "queue": entry.get("queue"), "attempt": attempt})
    log.warning("sweep: requeued job %s (%s) of dead worker %s from its registry entry",
                job_id, entry.get("task"), entry["worker"])


def _claim(r, k, settings: Settings, job_id: str, worker: str, deadline: str, state: str, attempt: int,
           now: float) -> str | None:
    """The claimed entry's JSON, or None when another sweep or the run itself got there first."""
    raw = load_script("sweep_claim", r)(
        keys=[k.job_state(job_id), k.active, k.active_deadlines],
        args=[job_id, worker, deadline, state, int(attempt), repr(now), settings.idempotency_ttl_sec,
              int(settings.feature_idempotency)],
    )
    return raw or None


def _publish(app, entry: dict, job_id: str, *, retries: int, countdown: float) -> None:
    """Publish a job again from its registry entry, under its own id."""
    options: dict[str, Any] = {"task_id": job_id, "retries": retries}
    if entry.get("queue"):
        options["queue"] = entry["queue"]
    if countdown > 0:
        options["countdown"] = countdown
    headers = {}
    if entry.get("idempotency_key"):
        headers["idempotency_key"] = entry["idempotency_key"]
    if entry.get("publish"):  # the same publish, put back: the execution guard runs it at most once
        headers[PUBLISH_HEADER] = entry["publish"]
    if headers:
        options["headers"] = headers
    args, kwargs = list(entry.get("args") or []), dict(entry.get("kwargs") or {})
    task = app.tasks.get(entry.get("task"))
    if task is None:
        app.send_task(entry["task"], args=args, kwargs=kwargs, **options)
        return
    def plain(**overrides):
        return task.plain_apply_async(args, kwargs, **{**options, **overrides})

    if scheduler.wants_delay(options):  # durable delayed runs, when that feature is on
        scheduler.schedule(task, args, kwargs, job_id, options, fallback=plain)
    else:
        plain()


# -- 3. jobs without progress -----------------------------------------------------------
def _stop_stuck(app, r, k, settings: Settings, job_id: str, entry: dict, now: float, report: SweepReport) -> None:
    task = app.tasks.get(entry.get("task")) or ResilientTask
    attempt = int(entry.get("attempt") or 0)
    timeout = float(entry.get("timeout") or settings.job_progress_timeout_sec)
    retry = attempt < retrying.max_retries_of(task)
    state, next_attempt = ("retrying", attempt + 1) if retry else ("dead", attempt)
    if not _claim(r, k, settings, job_id, entry["worker"], repr(now), state, next_attempt, now):
        return  # it finished or reported progress meanwhile
    stalled = now - float(entry.get("last_progress_at") or entry.get("started_at") or now)
    reason = f"no progress for {int(round(max(stalled, timeout)))} s"
    _terminate(app, job_id, entry, report)
    action = {"job_id": job_id, "task": entry.get("task"), "worker": entry["worker"], "attempt": attempt,
              "reason": reason}
    try:
        if retry:
            delay = retrying.backoff_of(task).compute(attempt)
            _publish(app, entry, job_id, retries=next_attempt, countdown=delay)
            action.update(outcome="retried", countdown=round(delay, 3))
        else:
            deadletter.bury_entry(_dead_letter_entry(entry, job_id, reason), job_id=job_id,
                                  delivery_tag=entry.get("delivery_tag"), app=app)
            action.update(outcome="dead_lettered")
    except Exception as exc:
        report.errors.append(f"job {job_id}: {exc}")
        log.exception("sweep: could not retry or dead-letter stuck job %s", job_id)
        action.update(outcome="failed", error=str(exc))
    report.stopped.append(action)
    log.warning("sweep: stopped job %s (%s) on %s: %s; %s", job_id, entry.get("task"), entry["worker"],
                reason, action["outcome"])


def _terminate(app, job_id: str, entry: dict, report: SweepReport) -> None:
    """Ask the job's worker to kill the pool process running it (no reply awaited)."""
    try:
        app.control.broadcast("resilience_terminate", arguments={"job_id": job_id, "signal": TERMINATE_SIGNAL},
                              destination=[entry.get("hostname") or hostname_of(entry["worker"])])
    except Exception as exc:
        report.errors.append(f"job {job_id}: terminate failed: {exc}")
        log.warning("sweep: could not ask %s to stop job %s: %s", entry["worker"], job_id, exc)


def _dead_letter_entry(entry: dict, job_id: str, reason: str) -> dict[str, Any]:
    attempt = int(entry.get("attempt") or 0)
    return {
        "job_id": job_id,
        "task": entry.get("task"),
        "args": entry.get("args") or [],
        "kwargs": entry.get("kwargs") or {},
        "options": {"queue": entry.get("queue"), "exchange": entry.get("exchange"),
                    "idempotency_key": entry.get("idempotency_key"), "headers": {"retries": attempt}},
        "failure_reason": reason,
        "error_type": "StuckJob",
        "traceback": "",
        "failed_at": deadletter.utc_iso(),
        "retry_count": attempt,
        "worker": entry.get("hostname") or hostname_of(entry.get("worker") or ""),
    }


# -- bookkeeping -------------------------------------------------------------------------
def _record(report: SweepReport) -> None:
    """Count and alert; an observer never breaks the sweep."""
    try:
        pipe = get_redis().pipeline(transaction=False)
        stats = keys().stats("sweeper")
        pipe.hincrby(stats, "runs", 1)
        pipe.hset(stats, mapping={"last_run_at": report.at, "last_duration_ms": report.duration_ms,
                                  "last_active_jobs": report.active_jobs})
        for name, items in (("restored", report.restored), ("requeued", report.requeued)):
            if items:
                pipe.hincrby(stats, name, len(items))
        if report.quarantined:
            pipe.hincrby(stats, "quarantined", report.quarantined)
        for outcome in ("retried", "dead_lettered", "failed"):
            count = sum(1 for a in report.stopped if a.get("outcome") == outcome)
            if count:
                pipe.hincrby(stats, f"stuck_{outcome}", count)
        pipe.execute()
    except Exception as exc:
        log.warning("sweep statistics not recorded: %s", exc)
    if not report.acted:
        return
    with guarded("sweep: stuck_jobs_recovered metric"):
        for action, items in (("restored", report.restored), ("requeued", report.requeued)):
            for item in items:
                metrics.stuck_jobs_recovered.labels(task=item.get("task") or "unknown", action=action).inc()
        for item in report.stopped:
            metrics.stuck_jobs_recovered.labels(task=item.get("task") or "unknown",
                                                action=item.get("outcome") or "stopped").inc()
    with guarded("sweep: stuck_jobs_recovered alert"):
        alert_rules.stuck_jobs_recovered(
            report.acted, [str(a["job_id"]) for a in report.restored + report.requeued + report.stopped
                           if a.get("job_id")],
            subject="sweeper", restored=len(report.restored), requeued=len(report.requeued),
            stopped=len(report.stopped), dead_workers=report.dead_workers)


# -- worker side: the terminate command ------------------------------------------------
def register_control_command() -> None:
    """``resilience_terminate``: kill the pool process running one job.

    Celery's ``revoke(terminate=True)`` would also put the job id on every
    worker's revoked list, so its retry, published under the same id, would be
    discarded; this command stops the run and nothing else.
    """
    from celery.worker import state as worker_state
    from celery.worker.control import control_command, nok, ok

    @control_command(args=[("job_id", str), ("signal", str)], signature="<job_id> [signal]")
    def resilience_terminate(state, job_id, signal=TERMINATE_SIGNAL, **kwargs):
        for request in list(worker_state.active_requests):
            if request.id == job_id:
                request.terminate(state.consumer.pool, signal=signal)
                log.warning("job %s stopped by the stuck-job sweep (%s)", job_id, signal)
                return ok(f"terminated {job_id}")
        return nok(f"job {job_id} is not running here")
