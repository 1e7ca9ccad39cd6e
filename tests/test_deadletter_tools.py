"""Operating the dead-letter queue: list, show, replay, purge, stats, trim (issue 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from resilience import deadletter, executions
from resilience.cli import main
from resilience.keys import keys
from resilience.testing import configure, wait_for
from tests.jobs import fail_permanent, fail_transient, runs

WAIT = 30
ROOT = Path(__file__).resolve().parent.parent


def entry(job_id: str, *, task: str = "tests.add", error_type: str = "PermanentError",
          failed_at: str = "2026-01-10T12:00:00Z", args=(1, 2)) -> dict:
    return {"job_id": job_id, "task": task, "args": list(args), "kwargs": {}, "options": {"queue": "celery"},
            "failure_reason": f"{error_type} in {job_id}", "error_type": error_type, "traceback": "",
            "failed_at": failed_at, "retry_count": 0, "worker": "w@test"}


def push(r, *entries) -> None:
    """Store entries oldest first, so the list reads newest first like the real one."""
    for e in entries:
        r.lpush(keys().dead_letter, e if isinstance(e, str) else json.dumps(e))


def dlq(*args: str) -> dict | list:
    result = CliRunner().invoke(main, ["dlq", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_replay_brings_a_job_back_to_life_and_its_success_removes_nothing_else(worker):
    other = fail_permanent.delay("stays")
    job = fail_transient.delay(times=3)  # max_retries=2: three failing runs, then dead-lettered
    backend = worker.app.backend
    wait_for(lambda: deadletter.count() == 2 and backend.get_task_meta(job.id)["status"] == "FAILURE", WAIT,
             message="both jobs to be dead-lettered")
    assert runs(job.id) == 3

    outcome = deadletter.replay([job.id])

    assert outcome.done == [job.id]
    wait_for(lambda: backend.get_task_meta(job.id)["status"] == "SUCCESS", WAIT, message="the replayed job to succeed")
    assert backend.get_task_meta(job.id)["result"] == "recovered"
    assert runs(job.id) == 4
    assert [e.job_id for e in deadletter.list_entries()] == [other.id]
    assert executions.job_state(job.id)["s"] == "done"


def test_replaying_one_entry_twice_enqueues_it_once(r):
    push(r, entry("j1"))
    seen_by_first, seen_by_second = deadletter.get("j1"), deadletter.get("j1")  # both terminals read it

    assert deadletter.replay_entry(seen_by_first) is True
    assert deadletter.replay_entry(seen_by_second) is False

    assert r.llen("celery") == 1 and deadletter.count() == 0
    message = json.loads(r.lindex("celery", 0))
    assert message["headers"]["id"] == "j1" and message["headers"]["retries"] == 0
    assert message["headers"]["task"] == "tests.add"


def test_concurrent_replay_from_two_terminals_enqueues_once(r):
    push(r, entry("j2"))
    argv = [sys.executable, "-m", "resilience.cli", "dlq", "replay", "j2", "--json"]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]

    assert sorted(len(res["done"]) for res in results) == [0, 1]
    assert r.llen("celery") == 1 and deadletter.count() == 0


def test_purge_with_filters_removes_only_what_matches(r):
    push(r, entry("a1", task="tests.a", error_type="KeyError", failed_at="2026-01-01T00:00:00Z"),
         entry("a2", task="tests.a", error_type="KeyError", failed_at="2026-03-01T00:00:00Z"),
         entry("a3", task="tests.a", error_type="ValueError", failed_at="2026-03-01T00:00:00Z"),
         entry("b1", task="tests.b", error_type="KeyError", failed_at="2026-03-01T00:00:00Z"),
         "not json at all")

    dry = deadletter.purge(all=True, task="tests.a", error_type="KeyError", dry_run=True)
    assert sorted(dry.matched) == ["a1", "a2"] and deadletter.count() == 5

    gone = dlq("purge", "--all", "--task", "tests.a", "--error-type", "KeyError", "--since", "2026-02-01")

    assert gone["done"] == ["a2"]
    assert sorted(e.job_id or "malformed" for e in deadletter.list_entries()) == ["a1", "a3", "b1", "malformed"]


def test_purge_by_id_and_of_malformed_entries(r):
    push(r, entry("c1"), entry("c2"), "{broken")

    assert deadletter.purge(["c1"]).done == ["c1"]
    assert deadletter.purge(malformed=True).done == ["malformed:0"]
    assert [e.job_id for e in deadletter.list_entries()] == ["c2"]


def test_entries_older_than_the_retention_are_trimmed_and_unreadable_ones_quarantined(r):
    from resilience import quarantine

    now = deadletter.parse_time("2026-06-30T00:00:00Z")
    push(r, entry("old1", failed_at="2026-05-01T00:00:00Z"), "not json",
         entry("old2", failed_at="2026-05-20T10:00:00Z"),
         entry("new1", failed_at="2026-06-10T00:00:00Z"), entry("new2", failed_at="2026-06-29T00:00:00Z"))

    result = deadletter.trim(now=now, ttl_days=30, batch=2)

    assert result == {"expired": 2, "capped": 0}
    assert [e.job_id for e in deadletter.list_entries()] == ["new2", "new1"]
    # issue 15: the entry whose age cannot be read is kept for an operator in the quarantine
    (kept,) = quarantine.entries()
    assert (kept["source"], kept["raw"], kept["problem"], kept["found_by"]) == \
        (keys().dead_letter, "not json", "not JSON", "dead-letter trim")


def test_entries_beyond_the_cap_are_trimmed_oldest_first(r):
    push(r, *(entry(f"e{n}", failed_at="2026-06-29T00:00:00Z") for n in range(6)))

    result = deadletter.trim(now=deadletter.parse_time("2026-06-30T00:00:00Z"), max_entries=4)

    assert result == {"expired": 0, "capped": 2}
    assert [e.job_id for e in deadletter.list_entries()] == ["e5", "e4", "e3", "e2"]


def test_the_beat_task_trims_with_the_settings(r, app):
    from resilience.testing import configure

    trim_dead_letters = app.tasks["resilience.trim_dead_letters"]

    push(r, entry("ancient", failed_at="2000-01-01T00:00:00Z"), entry("fresh", failed_at=deadletter.utc_iso()))
    with configure(dead_letter_max_entries=10):
        assert trim_dead_letters() == {"expired": 1, "capped": 0}
    assert [e.job_id for e in deadletter.list_entries()] == ["fresh"]


def test_malformed_entries_are_reported_and_never_crash_the_tooling_or_get_lost(r):
    push(r, entry("ok1"), "not json", json.dumps({"job_id": "half"}), json.dumps([1, 2]))

    listed = dlq("list")
    stats = dlq("stats")
    shown = dlq("show", "ok1")
    CliRunner().invoke(main, ["dlq", "list"], catch_exceptions=False)  # the table view too
    CliRunner().invoke(main, ["dlq", "stats"], catch_exceptions=False)

    problems = [e["problem"] for e in listed["entries"] if e.get("malformed")]
    assert problems == ["not a JSON object", "missing fields: task, args, kwargs, options, failure_reason, "
                        "error_type, traceback, failed_at, retry_count, worker", "not JSON"]
    assert stats["total"] == 4 and stats["malformed"] == 3 and stats["by_task"] == {"tests.add": 1}
    assert shown["job_id"] == "ok1"
    assert deadletter.count() == 4
    assert dlq("replay", "--all")["done"] == ["ok1"] and deadletter.count() == 3


def test_list_filters_limit_and_stats_fingerprints(r):
    push(r, entry("x1", task="tests.a", error_type="KeyError", failed_at="2026-01-01T00:00:00Z"),
         entry("x2", task="tests.a", error_type="KeyError", failed_at="2026-02-01T00:00:00Z"),
         entry("x3", task="tests.b", error_type="ValueError", failed_at="2026-03-01T00:00:00Z"))

    assert [e["job_id"] for e in dlq("list", "--task", "tests.a")["entries"]] == ["x2", "x1"]
    assert [e["job_id"] for e in dlq("list", "--error-type", "ValueError")["entries"]] == ["x3"]
    assert [e["job_id"] for e in dlq("list", "--since", "2026-01-15T00:00:00")["entries"]] == ["x3", "x2"]
    assert [e["job_id"] for e in dlq("list", "--limit", "1")["entries"]] == ["x3"]
    stats = dlq("stats")
    assert stats["by_task"] == {"tests.a": 2, "tests.b": 1}
    assert stats["by_fingerprint"] == {"KeyError: KeyError in xN": 2, "ValueError: ValueError in xN": 1}


def test_replay_all_with_filters_and_dry_run(r):
    push(r, entry("p1", task="tests.a"), entry("p2", task="tests.b"))

    assert dlq("replay", "--all", "--task", "tests.b", "--dry-run") == {
        "matched": ["p2"], "done": [], "gone": [], "refused": [], "reasons": {}, "dry_run": True}
    assert r.llen("celery") == 0
    assert dlq("replay", "--all", "--task", "tests.b")["done"] == ["p2"]
    assert r.llen("celery") == 1 and [e.job_id for e in deadletter.list_entries()] == ["p1"]


def test_an_unfiltered_page_of_a_large_queue_reads_only_that_page(r):
    pipe = r.pipeline(transaction=False)
    for n in range(100_000):
        pipe.lpush(keys().dead_letter, json.dumps(entry(f"big{n}")))
    pipe.execute()

    page = deadletter.list_entries(limit=20, offset=40)

    assert [e.job_id for e in page] == [f"big{100_000 - 41 - n}" for n in range(20)]
    assert [e.index for e in page] == list(range(40, 60))


def test_an_unknown_job_id_is_an_error_not_a_crash(r):
    result = CliRunner().invoke(main, ["dlq", "show", "nope"])
    assert result.exit_code == 1 and "no dead-letter entry" in result.output
    result = CliRunner().invoke(main, ["dlq", "replay"])
    assert result.exit_code == 2


def test_the_dead_letter_list_is_capped_on_every_write(r):
    """Memory stays bounded between beat trims: a write beyond the cap drops the oldest entry."""
    from resilience.keys import keys

    with configure(dead_letter_max_entries=3):
        for n in range(5):
            deadletter.bury_entry({"job_id": f"job-{n}", "task": "t", "args": [], "kwargs": {}, "options": {},
                                   "failure_reason": "x", "error_type": "E", "traceback": "",
                                   "retry_count": 0, "worker": "w"})
    ids = [json.loads(raw)["job_id"] for raw in r.lrange(keys().dead_letter, 0, -1)]
    assert ids == ["job-4", "job-3", "job-2"]
