"""What error tracking and alerting cost a failing job: ``python benchmarks/bench_tracking.py``.

Starts a private redis-server, then times, per error:
* ``record_error`` (what the job's thread pays: build the record, append to the buffer),
* ``alert`` (queue for the sender thread),
* a synchronous write of the same record (what an unbatched design would make the job wait for),
and the flusher's cost per record when it writes a batch in one Lua call.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N = 5000


def main() -> None:
    from resilience.embedded import RedisServerProcess, find_redis_binary
    from resilience.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServerProcess(binary=find_redis_binary(load_settings()), directory=Path(tmp))
        server.start()
        try:
            os.environ.update({"REDIS_URL": server.url, "ERROR_FLUSH_INTERVAL_SEC": "3600",
                               "ALERT_WEBHOOK_URL": "", "ALERT_QUEUE_MAX": str(N * 2)})
            run()
        finally:
            server.stop()


def run() -> None:
    import json
    import logging

    logging.getLogger("resilience").setLevel(logging.ERROR)  # the alerts are logged; not what is measured

    from resilience import alerts, tracking
    from resilience.keys import keys
    from resilience.store import get_redis

    try:
        raise ValueError("card 4242 declined for order 17 (api_key=sk-live-1)")
    except ValueError as err:
        exc = err
    context = {"args": ["order-17"], "kwargs": {"api_key": "sk-live-1", "amount": 1000}}
    client = get_redis()
    client.ping()

    started = time.perf_counter()
    for _ in range(N):
        tracking.record_error("task", "bench.charge", exc, job_id="j", task="bench.charge", context=context)
    record_us = (time.perf_counter() - started) / N * 1e6

    started = time.perf_counter()
    written = tracking.flush()
    flush_us = (time.perf_counter() - started) / max(written, 1) * 1e6

    record = tracking.record_error("task", "bench.charge", exc, context=context)
    tracking.flush()
    started = time.perf_counter()
    for _ in range(N // 5):
        pipe = client.pipeline(transaction=True)
        pipe.zadd(keys().errors_timeline, {json.dumps(record) + str(_): time.time() * 1000})
        pipe.hincrby(keys().errors_patterns, "task:bench.charge:ValueError", 1)
        pipe.execute()
    sync_us = (time.perf_counter() - started) / (N // 5) * 1e6

    started = time.perf_counter()
    for i in range(N):
        alerts.alert("bench", str(i % 10), level="warning", title="t", message="m", component="bench",
                     context=context)
    alert_us = (time.perf_counter() - started) / N * 1e6
    alerts.flush(60)

    print(f"{'per error, on the job thread':<48}{'us':>10}")
    print(f"{'record_error (buffered)':<48}{record_us:>10.1f}")
    print(f"{'alert (queued for the sender thread)':<48}{alert_us:>10.1f}")
    print(f"{'synchronous Redis write instead (unbatched)':<48}{sync_us:>10.1f}")
    print(f"{'flusher, per record: build + batched Lua (off path)':<48}{flush_us:>10.1f}")
    print(f"records written: {written}; ratio synchronous / buffered: {sync_us / record_us:.1f}x")


if __name__ == "__main__":
    main()
