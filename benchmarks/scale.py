"""Scale figures: ``python -m benchmarks.scale`` (run by the suite, everything on).

* the stuck-job sweep over ``--sweep-entries`` active jobs of live workers
  (the usual case: nothing is stuck), and, as the floor of a sweep that
  inspects every entry, reading and decoding all of them;
* one ``dlq list`` page and ``dlq stats`` with ``--dead-letters`` entries;
* memory (``MEMORY USAGE ... SAMPLES 0``) of ``errors:timeline`` and
  ``jobs:dead_letter`` filled to their caps, and whether they stay at the cap
  when the platform's own writers add more.

The features measured here are built alongside the benchmark, so each is
looked up by name when the benchmark runs; one that is missing is reported
as "not built" instead of failing the suite. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from resilience.deadletter import utc_iso
from resilience.keys import keys
from resilience.settings import get_settings
from resilience.store import get_redis

#: Function names tried, in order, for each measured operation.
SWEEP_NAMES = ("sweep", "sweep_once", "run_sweep")
DLQ_LIST_NAMES = ("list_entries", "list_page", "page", "list_dead_letters", "entries")
DLQ_STATS_NAMES = ("stats", "dead_letter_stats", "summary")
TRACK_NAMES = ("record_error", "track_error", "record")

BATCH = 2000
OVERFLOW = 1000
TRACEBACK = "".join(
    f'  File "/srv/app/payments/client.py", line {100 + i}, in call_{i}\n    response = session.post(url)\n'
    for i in range(8)) + "ConnectionError: upstream reset the connection\n"


def find(module_name: str, names: tuple[str, ...]) -> tuple[str, Callable] | None:
    """The first of ``names`` that ``module_name`` defines, or None."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    for name in names:
        fn = getattr(module, name, None)
        if callable(fn):
            return f"{module_name}.{name}", fn
    return None


def timed(fn: Callable[[], Any], repeat: int) -> dict:
    """Median, min and max wall time of ``repeat`` calls, in milliseconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples)}


def _pipelined(items, write: Callable) -> None:
    pipe = get_redis().pipeline(transaction=False)
    for n, item in enumerate(items, 1):
        write(pipe, item)
        if n % BATCH == 0:
            pipe.execute()
    pipe.execute()


# -- the stuck-job sweep -------------------------------------------------------------


def fill_active(count: int, now: float) -> None:
    """``count`` running jobs on four live workers, none past its deadline."""
    k = keys()
    workers = [f"bench-{i}@bench|scale" for i in range(4)]
    get_redis().zadd(k.worker_heartbeats, {w: now for w in workers})

    def write(pipe, i):
        job_id = f"bench-active-{i:06d}"
        entry = {"job_id": job_id, "task": "bench.noop", "worker": workers[i % 4], "hostname": "bench@bench",
                 "pid": 1000 + i % 4, "started_at": now - 5, "last_progress_at": now - 5, "progress": None,
                 "note": None, "timeout": 300, "attempt": 0, "queue": "celery", "exchange": "",
                 "delivery_tag": f"tag-{i}", "idempotency_key": None, "args": ["tput", 0.0, 1], "kwargs": {}}
        pipe.hset(k.active, job_id, json.dumps(entry))
        pipe.zadd(k.active_deadlines, {job_id: now + 300})

    _pipelined(range(count), write)


def read_every_entry() -> int:
    """What a sweep that inspects every entry cannot go below: read and decode them all."""
    k = keys()
    client = get_redis()
    entries = [json.loads(raw) for raw in client.hgetall(k.active).values()]
    client.zrange(k.worker_heartbeats, 0, -1, withscores=True)
    return len(entries)


def measure_sweep(count: int) -> dict:
    fill_active(count, time.time())
    floor = timed(read_every_entry, 3)
    found = find("resilience.sweeper", SWEEP_NAMES)
    if found is None:
        return {"status": "not built", "raw_scan": floor}
    name, sweep = found
    try:
        result = timed(sweep, 3)
    except Exception as err:  # an API that differs is reported, not fatal
        return {"status": f"error: {type(err).__name__}: {err}"[:200], "function": name, "raw_scan": floor}
    remaining = get_redis().hlen(keys().active)
    return {"status": "ok", "function": name, "entries": count, "entries_after": remaining, "raw_scan": floor,
            **result}


# -- the dead-letter queue -----------------------------------------------------------


def dead_letter_entry(i: int) -> dict:
    return {"job_id": f"bench-dead-{i:06d}", "task": "bench.charge", "args": [f"order-{i}", 1000 + i % 97],
            "kwargs": {"currency": "EUR", "api_token": "[REDACTED]"},
            "options": {"queue": "celery", "exchange": "", "idempotency_key": f"order-{i}",
                        "headers": {"retries": 4}},
            "failure_reason": f"upstream returned 503 for order-{i}", "error_type": "ConnectionError",
            "traceback": TRACEBACK, "failed_at": utc_iso(), "retry_count": 4, "worker": "bench@bench"}


def fill_dead_letters(count: int) -> None:
    key = keys().dead_letter
    _pipelined(range(count), lambda pipe, i: pipe.lpush(key, json.dumps(dead_letter_entry(i))))


def measure_dead_letters(count: int) -> dict:
    client = get_redis()
    key = keys().dead_letter
    fill_dead_letters(count)
    out: dict[str, Any] = {"entries": client.llen(key)}
    out["raw_page"] = timed(lambda: [json.loads(e) for e in client.lrange(key, 0, 49)], 5)
    for label, names, repeat in (("list", DLQ_LIST_NAMES, 5), ("stats", DLQ_STATS_NAMES, 3)):
        found = find("resilience.deadletter", names)
        if found is None:
            out[label] = {"status": "not built"}
            continue
        name, fn = found
        try:
            out[label] = {"status": "ok", "function": name, **timed(fn, repeat)}
        except Exception as err:
            out[label] = {"status": f"error: {type(err).__name__}: {err}"[:200], "function": name}
    out["memory"] = bounded("jobs:dead_letter", key, get_settings().dead_letter_max_entries,
                            write_dead_letters, "llen")
    return out


def write_dead_letters(n: int) -> str:
    """Add ``n`` entries through the platform's own writer (which must trim)."""
    from resilience import deadletter

    for i in range(n):
        deadletter.bury_entry(dead_letter_entry(10_000_000 + i))
    return "resilience.deadletter.bury_entry"


# -- the error timeline ----------------------------------------------------------------


def fill_timeline(count: int) -> None:
    key = keys().errors_timeline
    now_ms = int(time.time() * 1000)

    def write(pipe, i):
        record = {"component": "task", "operation": "bench.charge", "error_type": "ConnectionError",
                  "message": f"upstream reset the connection (order-{i})", "fingerprint": "3f2a9c0d1b7e4a55",
                  "job_id": f"bench-err-{i:06d}", "task": "bench.charge", "worker": "bench@bench",
                  "at": now_ms - i}
        pipe.zadd(key, {json.dumps(record): now_ms - i})

    _pipelined(range(count), write)


def write_errors(n: int) -> str | None:
    found = find("resilience.tracking", TRACK_NAMES)
    if found is None:
        return None
    name, record = found
    for i in range(n):
        record("task", "bench.charge", ConnectionError(f"upstream reset the connection ({i})"))
    flush = getattr(importlib.import_module("resilience.tracking"), "flush", None)
    if callable(flush):
        flush()
    return name


def bounded(label: str, key: str, cap: int, writer: Callable[[int], str | None], length: str) -> dict:
    """Memory at the cap, and the length after the platform writes ``OVERFLOW`` more."""
    client = get_redis()
    at_cap = getattr(client, length)(key)
    memory = client.memory_usage(key, samples=0) or 0
    out = {"key": label, "cap": cap, "length_at_cap": at_cap, "memory_bytes": memory,
           "bytes_per_entry": memory / at_cap if at_cap else 0}
    try:
        writer_name = writer(OVERFLOW)
    except Exception as err:
        out["bounded"] = f"error: {type(err).__name__}: {err}"[:200]
        return out
    if writer_name is None:
        out["bounded"] = "not built"
        return out
    after = getattr(client, length)(key)
    out.update({"writer": writer_name, "length_after_overflow": after, "overflow_writes": OVERFLOW,
                "memory_after_overflow_bytes": client.memory_usage(key, samples=0) or 0,
                "bounded": "yes" if after <= cap else "no"})
    return out


def measure_timeline(count: int) -> dict:
    fill_timeline(count)
    return bounded("errors:timeline", keys().errors_timeline, get_settings().error_timeline_max_entries,
                   write_errors, "zcard")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("--sweep-entries", type=int, default=10_000)
    parser.add_argument("--dead-letters", type=int, default=100_000)
    parser.add_argument("--timeline-entries", type=int, default=50_000)
    args = parser.parse_args(argv)
    from resilience.runtime import load_app

    load_app()  # the bundled app: the sweep and the dead-letter writer act on the installed app
    client = get_redis()
    result = {"sweep": measure_sweep(args.sweep_entries)}
    client.flushall()
    result["dead_letter"] = measure_dead_letters(args.dead_letters)
    client.flushall()
    result["timeline"] = measure_timeline(args.timeline_entries)
    client.flushall()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
