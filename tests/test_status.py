"""``resilience status``: the dashboard matches the known state and never crashes (issue 8)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from rich.console import Console

from resilience.keys import keys
from resilience.testing import configure, free_port, in_process_worker, wait_for


def status_json() -> dict:
    proc = subprocess.run([sys.executable, "-m", "resilience.cli", "status", "--json"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # JSON only on stdout


def test_status_json_matches_the_known_state_after_a_scripted_run(app, r):
    from tests.jobs import add, fail_permanent

    # Given two jobs that were dead-lettered by a real worker ...
    with configure(health_port=0), in_process_worker(app) as worker:
        for reason in ("no such customer", "bad invoice"):
            fail_permanent.delay(reason)
        wait_for(lambda: r.llen(keys().dead_letter) == 2, timeout=30, message="two dead letters")
        tracked = "task:tests.fail_permanent:PermanentError"
        wait_for(lambda: r.hget(keys().errors_patterns, tracked) == "2", timeout=30, message="the failures tracked")
        hostname = worker.hostname
        wait_for(lambda: any(w.startswith(hostname + "|") for w in r.zrange(keys().worker_heartbeats, 0, -1)),
                 timeout=30, message="a heartbeat")
    # ... three jobs waiting with no worker, a breaker and error patterns as their features record them
    for n in range(3):
        add.delay(n, n)
    r.hset(keys().breakers_status, "payments-api", json.dumps({"state": "open", "failures": 5, "opened_at": 1.0}))
    r.hset(keys().errors_patterns, mapping={"task:run:ValueError": 7, "http:get:Timeout": 12, "db:q:KeyError": 1})

    snapshot = status_json()

    assert snapshot["queues"]["celery"] == 3 and snapshot["pending"] == 3
    assert snapshot["active"] == 0
    assert snapshot["dead_letter"] == 2
    assert [w["worker"].split("|")[0] for w in snapshot["workers"]] == [hostname]
    assert snapshot["workers"][0]["heartbeat_age_sec"] < 120
    assert snapshot["breakers"]["payments-api"]["state"] == "open"
    assert [e["pattern"] for e in snapshot["top_errors"]] == ["http:get:Timeout", "task:run:ValueError",
                                                              tracked, "db:q:KeyError"]


def test_status_never_crashes_on_malformed_entries(app, r):
    from resilience.status import collect, render

    r.hset(keys().breakers_status, mapping={"garbage": "{not json", "list": "[1, 2]"})
    r.hset(keys().errors_patterns, mapping={"x:y:Z": "many", "a:b:C": 2})
    r.hset(keys().worker_health, "w|1", "not json")
    r.zadd(keys().worker_heartbeats, {"w|1": 1.0})

    snapshot = collect(app)
    assert snapshot["breakers"]["garbage"]["state"] == "malformed"
    assert snapshot["breakers"]["list"]["state"] == "malformed"
    assert snapshot["top_errors"][0] == {"pattern": "a:b:C", "count": 2}
    assert snapshot["workers"][0]["alive"] is False
    out = io.StringIO()
    Console(file=out, width=160).print(render(snapshot))
    assert "garbage" in out.getvalue() and "DEAD" in out.getvalue()


def test_status_with_redis_unreachable_exits_non_zero_with_a_message_on_stderr():
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = subprocess.run([sys.executable, "-m", "resilience.cli", "status", "--json"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "REDIS_URL": url})
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "unreachable" in proc.stderr and "Traceback" not in proc.stderr


def test_status_table_shows_each_section(app, r):
    r.lpush(keys().dead_letter, "{}")
    proc = subprocess.run([sys.executable, "-m", "resilience.cli", "status"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "160"})
    assert proc.returncode == 0, proc.stderr
    for title in ("Jobs", "Queues", "Workers", "Circuit breakers", "Top error patterns"):
        assert title in proc.stdout
