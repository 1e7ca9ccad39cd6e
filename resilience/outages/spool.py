"""The publish spool: jobs submitted while Redis is unreachable, kept on local disk.

A job that cannot be published within ``PUBLISH_TIMEOUT_SEC`` is written to a
SQLite database in ``RESILIENCE_DATA_DIR`` (``spool.sqlite3``; WAL journal,
``synchronous=FULL``: a row that was written survives a crash or restart of
the producer) and published later, oldest first, by :class:`Flusher`.

"Once": each row is deleted in its own transaction right after its publish
succeeded. A crash between the publish and the delete publishes the row again
on the next flush, under the same job id, and the execution guard absorbs the
second delivery. Only one process flushes a spool at a time (an ``flock`` on
``spool.lock``, released by the kernel if the flusher dies), so rows go out in
order.

The spool holds at most ``SPOOL_MAX_JOBS`` rows; beyond that :func:`append`
raises :class:`~resilience.core.errors.SpoolFull`, logs an error and alerts.

A corrupt row (its arguments or options not JSON of the right types, no task
name) or one that Celery refuses to publish for its data (a ``TypeError`` or
``ValueError`` from ``send_task``) never holds back the rows behind it: it is
moved to the quarantine (:mod:`resilience.core.quarantine`; when even that is
refused, it is dropped with an ERROR naming it) and the flush goes on with
the next row.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kombu.exceptions import EncodeError

from resilience.core.connection import is_outage
from resilience.core.errors import ResilienceError, SpoolFull
from resilience.core.localfiles import private_dir, private_file
from resilience.core.quarantine import ARRAY, INTEGER, NUMBER, OBJECT, TEXT, Bad, Batch, Kind, Shape, decode, one_of
from resilience.core.settings import get_settings
from resilience.observability.alerts import alert

log = logging.getLogger(__name__)

__all__ = ["SpooledJob", "spool_path", "append", "pending", "oldest", "read", "remove", "flush_locked", "count",
           "drain"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spooled_jobs (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL UNIQUE,
    task       TEXT NOT NULL,
    args       TEXT NOT NULL,
    kwargs     TEXT NOT NULL,
    options    TEXT NOT NULL,
    spooled_at REAL NOT NULL
)
"""


#: The options of a spooled job that Celery's publish reads, with their types.
OPTIONS = Shape({"queue": TEXT, "exchange": TEXT, "routing_key": TEXT, "priority": INTEGER, "countdown": NUMBER,
                 "eta": TEXT, "expires": one_of(NUMBER, TEXT), "headers": OBJECT, "retries": INTEGER})


@dataclass(frozen=True)
class SpooledJob:
    """One row of the spool: everything needed to publish the job later."""

    seq: int
    job_id: str
    task: str
    args: list
    kwargs: dict
    options: dict
    spooled_at: float


def spool_dir() -> Path:
    return Path(get_settings().data_dir).expanduser()


def spool_path() -> Path:
    """The spool database of this data dir."""
    return spool_dir() / "spool.sqlite3"


@contextlib.contextmanager
def _db() -> Iterator[sqlite3.Connection]:
    path = spool_path()
    if not path.exists():
        # job arguments in plain text: 0600 in a 0700 dir (SQLite gives its WAL files the same mode)
        private_dir(path.parent)
        private_file(path)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_SCHEMA)
        yield conn
    finally:
        conn.close()


def _options_json(options: dict[str, Any]) -> str:
    # Only what Celery's apply_async accepts as plain data; anything else is kept as text.
    return json.dumps(options, default=str)


def append(task_name: str, args, kwargs, job_id: str, options: dict[str, Any]) -> int:
    """Spool one job; returns the number of jobs now spooled. Raises SpoolFull at the bound."""
    limit = get_settings().spool_max_jobs
    with _db() as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (n,) = conn.execute("SELECT COUNT(*) FROM spooled_jobs").fetchone()
            if n >= limit:
                conn.execute("ROLLBACK")
                _report_full(n, task_name, job_id)
                raise SpoolFull(f"the publish spool holds {n} jobs (SPOOL_MAX_JOBS={limit}); "
                                f"job {job_id} of {task_name!r} was not accepted while Redis is unreachable")
            conn.execute(
                "INSERT OR IGNORE INTO spooled_jobs (job_id, task, args, kwargs, options, spooled_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, task_name, json.dumps(list(args or ())), json.dumps(dict(kwargs or {})),
                 _options_json(options), time.time()))
            conn.execute("COMMIT")
        except SpoolFull:
            raise
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    return n + 1


def _report_full(n: int, task_name: str, job_id: str) -> None:
    log.error("publish spool full (%d jobs): rejected job %s of %s", n, job_id, task_name)
    try:
        alert(rule="spool_full", subject=str(spool_path().name), level="critical",
              title="Publish spool full", component="spool",
              message=f"the local publish spool holds {n} jobs; new jobs are refused until Redis is back",
              context={"spooled": n, "task": task_name})
    except Exception:  # an observer never breaks what it observes
        log.exception("spool_full alert not sent")


def count() -> int:
    """How many jobs wait in the spool (0 when there is no spool file)."""
    if not spool_path().exists():
        return 0
    with _db() as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM spooled_jobs").fetchone()
    return int(n)


def pending() -> bool:
    return count() > 0


def oldest(limit: int = 100) -> list[SpooledJob]:
    """The oldest readable spooled jobs, in submission order (corrupt rows are left out)."""
    return read(limit)[0]


def read(limit: int = 100) -> tuple[list[SpooledJob], list[Bad]]:
    """The oldest rows, in order: the jobs, and the rows that are not readable jobs."""
    with _db() as conn:
        rows = conn.execute("SELECT seq, job_id, task, args, kwargs, options, spooled_at FROM spooled_jobs"
                            " ORDER BY seq LIMIT ?", (limit,)).fetchall()
    jobs, bad = [], []
    for seq, job_id, task, *columns in rows:
        decoded, problem = [], None
        kinds: tuple[Shape | Kind, ...] = (ARRAY, OBJECT, OPTIONS)
        for name, raw, kind in zip(("args", "kwargs", "options"), columns, kinds, strict=False):
            value, problem = decode(raw, kind)
            if problem:
                problem = f"{name}: {problem}"
                break
            decoded.append(value)
        if problem is None and not (isinstance(task, str) and task and isinstance(job_id, str) and job_id):
            problem = "no task name or job id"
        if problem is None and not (isinstance(columns[3], (int, float)) and math.isfinite(columns[3])):
            problem = "spooled_at: not a number"
        if problem:
            bad.append(_bad_row(seq, job_id, task, columns, problem))
        else:
            args, kwargs, options = decoded
            jobs.append(SpooledJob(seq, job_id, task, list(args), dict(kwargs), options, columns[3]))
    return jobs, bad


def _bad_row(seq: int, job_id: Any, task: Any, columns: list, problem: str) -> Bad:
    """A spool row as a quarantine record (its columns as JSON text; ``member`` is its seq)."""
    names = ("args", "kwargs", "options", "spooled_at")
    row = {"seq": seq, "job_id": job_id, "task": task, **dict(zip(names, columns, strict=True))}
    raw = json.dumps(row, default=lambda v: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else repr(v))
    return Bad(str(spool_path()), f"row {seq}", raw, problem, member=str(seq))


def remove(seq: int) -> None:
    """Mark a spooled job as published (delete its row, durably)."""
    with _db() as conn:
        conn.execute("DELETE FROM spooled_jobs WHERE seq = ?", (seq,))


@contextlib.contextmanager
def flush_locked() -> Iterator[bool]:
    """Hold the spool's flush lock if no other process does; yields whether we hold it."""
    path = spool_dir() / "spool.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def drain(publish: Callable[[SpooledJob], None], *, batch: int = 100) -> int:
    """Publish spooled jobs oldest first until the spool is empty; returns how many went out.

    ``publish`` raising stops the drain (the job stays spooled, order kept),
    unless the error is about the job's own data: that row, like a corrupt
    one, is quarantined and the drain goes on. Returns -1 when another
    process is flushing this spool.
    """
    sent = 0
    with flush_locked() as held:
        if not held:
            return -1
        while True:
            jobs, bad = read(batch)
            if not jobs and not bad:
                return sent
            _quarantine(bad)
            for job in jobs:
                try:
                    publish(job)
                except Exception as err:
                    if not _refused_for_its_data(err):
                        raise
                    _quarantine([_bad_row(job.seq, job.job_id, job.task,
                                          [json.dumps(job.args), json.dumps(job.kwargs),
                                           _options_json(job.options), job.spooled_at],
                                          f"not publishable: {type(err).__name__}: {err}")])
                    continue
                remove(job.seq)
                sent += 1


def _refused_for_its_data(err: BaseException) -> bool:
    """A publish error caused by the job's data (not an outage, not the platform's configuration)."""
    return (isinstance(err, (TypeError, ValueError, LookupError, EncodeError))
            and not isinstance(err, ResilienceError) and not is_outage(err))


def _quarantine(rows: list[Bad]) -> None:
    """Move rows out of the spool into the quarantine; an outage stops the drain (the rows stay)."""
    if not rows:
        return
    batch = Batch("spool flush")
    for row in rows:
        batch.add(row)
    try:
        batch.flush(strict=True)
    except Exception as err:
        if is_outage(err):
            raise
        for row in rows:
            log.error("spooled %s dropped: %s; the quarantine refused it: %s", row.field, row.problem, err)
    for row in rows:
        remove(int(str(row.member)))

