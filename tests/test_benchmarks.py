"""The benchmark suite (issues 9 and 14): it runs end to end and counts what it claims to count.

No timing is asserted here: figures belong to the benchmark's report.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.probes import delta, rss_bytes, snapshot
from benchmarks.report import complete, final_lines, percentile, summarise, targets

ROOT = Path(__file__).resolve().parent.parent


def _run(jobs: int, seconds: float, round_trips: int, calls: dict[str, int], cpu_sec: float = 0.1,
         rss_mib: int = 150) -> dict:
    return {"jobs": jobs, "enqueue_sec": seconds / 2, "end_to_end_sec": seconds, "calls": calls,
            "round_trips": round_trips, "cpu_sec": {"worker": cpu_sec, "redis": 0.02},
            "latencies_sec": [0.001 * i for i in range(1, 101)], "rss_bytes": rss_mib * 2**20}


def _submit(jobs: int, round_trips: int) -> dict:
    return {"jobs": jobs, "round_trips": round_trips, "calls": {"lpush": jobs}}


def _counted_alone(r, action, commands: set[str]):
    """The window around ``action``; taken again while another client of the test's Redis (a
    reconnect, a background thread an earlier test left) ran commands inside it, since the
    server's counters are global."""
    for _ in range(20):
        before = snapshot(r, {})
        action()
        window = delta(before, snapshot(r, {}))
        if set(window.calls) <= commands:
            break
    return window


def test_a_pipeline_counts_as_one_round_trip_and_each_of_its_commands(r):
    def run() -> None:
        pipe = r.pipeline(transaction=False)
        pipe.incr("bench:a")
        pipe.incr("bench:a")
        pipe.get("bench:a")
        pipe.execute()

    window = _counted_alone(r, run, {"incrby", "get"})

    assert window.reads == 1
    assert window.calls == {"incrby": 2, "get": 1}


def test_a_script_counts_as_one_round_trip_with_the_commands_it_runs(r):
    window = _counted_alone(r, lambda: r.eval("redis.call('INCR', KEYS[1]); return redis.call('INCR', KEYS[1])",
                                              1, "bench:b"), {"eval", "incr"})

    assert window.reads == 1
    assert window.calls == {"eval": 1, "incr": 2}


def test_cpu_of_a_process_tree_is_read_from_proc(r):
    window = delta(snapshot(r, {"me": os.getpid()}), snapshot(r, {"me": os.getpid()}))

    assert window.cpu["me"] >= 0.0


def test_the_closing_lines_divide_everything_on_by_plain_celery_with_results_then_by_flags_off():
    plain_results = [_run(100, 0.5, 800, {"lpush": 100}), _run(100, 0.25, 800, {"lpush": 100}),
                     _run(100, 1.0, 800, {"lpush": 100})]
    flags_off = [_run(100, 1.0, 1400, {"lpush": 100}), _run(100, 0.5, 1400, {"lpush": 100}),
                 _run(100, 2.0, 1400, {"lpush": 100})]
    everything = [_run(100, 2.0, 1600, {"evalsha": 200}), _run(100, 1.0, 1600, {"evalsha": 200}),
                  _run(100, 4.0, 1600, {"evalsha": 200})]
    summaries = {"plain-results": summarise("plain-results", plain_results),
                 "flags-off": summarise("flags-off", flags_off), "all": summarise("all", everything)}

    assert summaries["plain-results"].end_to_end.median == 200.0
    assert summaries["all"].round_trips.median == 16.0
    assert summaries["all"].rss_mib.median == 150.0
    assert final_lines(summaries) == ["resilience/plain-celery end-to-end ratio: 0.25",
                                      "resilience/flags-off end-to-end ratio: 0.50"]
    assert complete(summaries)


def test_the_closing_lines_are_printed_even_without_figures():
    summaries = {"plain-results": summarise("plain-results", [{"error": "worker did not start"}]),
                 "flags-off": summarise("flags-off", [_run(100, 1.0, 1400, {})]),
                 "all": summarise("all", [_run(100, 1.0, 1600, {})])}

    assert final_lines(summaries) == ["resilience/plain-celery end-to-end ratio: n/a",
                                      "resilience/flags-off end-to-end ratio: 1.00"]
    assert not complete(summaries)  # the suite then exits with status 1


def test_each_target_of_issue_14_passes_or_misses_against_plain_celery_with_results():
    # plain-results: 100 jobs/s, 8 round trips, 4 ms CPU and 100 MiB; flags-off 90 jobs/s
    summaries = {"plain-results": summarise("plain-results", [_run(100, 1.0, 800, {}, 0.4, 100)]),
                 "flags-off": summarise("flags-off", [_run(100, 100 / 90, 1400, {}, 0.6, 110)]),
                 "all": summarise("all", [_run(100, 100 / 85, 1050, {}, 0.6, 115)])}
    submit = {"plain-results": _submit(100, 300), "all + idempotency key": _submit(100, 500)}

    verdicts = {row[0]: (row[1], row[2]) for row in targets(summaries, submit)}

    assert verdicts == {
        "everything on: >= 0.80 of plain-results end-to-end": ("0.85", "pass"),
        "everything on: >= 0.95 of flags-off end-to-end": ("0.94", "MISS"),
        "everything on: round trips/job <= plain-results + 2": ("+2.50", "MISS"),
        "delay() with an idempotency key: <= plain-results delay() + 1 round trip": ("+2.00", "MISS"),
        "everything on: worker CPU/job <= 1.25x plain-results": ("1.50x", "MISS"),
        "everything on: worker memory <= 1.2x plain-results": ("1.15x", "pass"),
    }


def test_a_target_without_its_figures_is_not_applicable():
    verdicts = targets({"all": summarise("all", [_run(100, 1.0, 1600, {})])}, {})

    assert {row[2] for row in verdicts} == {"n/a"}


def test_resident_memory_of_a_process_tree_is_read_from_proc():
    assert rss_bytes(os.getpid()) > 1_000_000


def test_the_plain_celery_app_loads_nothing_of_this_project():
    # as the worker does: the app, then its includes (the shared job)
    code = ("import sys, benchmarks.plain_app as m; m.app.loader.import_default_modules(); "
            "t = m.app.tasks['bench.noop']; "
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('resilience', 'tasks', 'celeryconfig'))); "
            "print([c.__module__ for c in type(t).__mro__]); print(m.app.conf.result_backend)")
    env = {k: v for k, v in os.environ.items() if k != "PLAIN_CELERY_RESULTS"}
    for results, backend in (("false", "None"), ("true", env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**env, "PLAIN_CELERY_RESULTS": results})
        assert done.returncode == 0, done.stderr
        project_modules, task_classes, configured = done.stdout.splitlines()
        assert project_modules == "[]"
        assert "resilience" not in task_classes
        assert configured == backend


def test_percentiles_are_nearest_rank():
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0


@pytest.mark.slow
@pytest.mark.timeout(600)  # four configurations, two runs each: about a minute, more on a busy machine
def test_quick_benchmark_prints_every_table_and_the_closing_lines():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURE_")}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=540)

    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for heading in ("Throughput and latency", "Cost per job", "Redis commands per job, by command",
                    "Submit cost", "Scale figures", "Targets (issue 14: the hot path)", "Targets (issue 9: scale)"):
        assert heading in out, f"missing table {heading!r}:\n{out}"
    for config in ("plain", "plain-results", "flags-off", "all"):
        assert re.search(rf"^{config}\s+\d+", out, re.MULTILINE), f"no figures for {config}:\n{out}"
    assert "failed" not in out.split("Cost per job")[0]
    submit_costs = out.split("Submit cost")[1]
    assert re.search(r"^plain-results\s+\d+\.\d\d\s+\d+\.\d\d\s+\w", submit_costs, re.MULTILINE)
    *_, plain_celery, flags_off = out.strip().splitlines()
    assert re.fullmatch(r"resilience/plain-celery end-to-end ratio: \d+\.\d\d", plain_celery)
    assert re.fullmatch(r"resilience/flags-off end-to-end ratio: \d+\.\d\d", flags_off)


def test_a_feature_not_built_yet_is_found_as_missing_not_as_an_error():
    from benchmarks.scale import find

    assert find("resilience.no_such_feature", ("sweep",)) is None
    assert find("resilience.jobs.deadletter", ("no_such_function", "bury_entry"))[0] \
        == "resilience.jobs.deadletter.bury_entry"


def test_a_key_at_its_cap_is_bounded_only_if_the_writer_trims_it(r):
    from benchmarks.scale import bounded

    r.rpush("bench:capped", *range(100))

    def trimming(n: int) -> str:
        for i in range(n):
            r.lpush("bench:capped", i)
            r.ltrim("bench:capped", 0, 99)
        return "trimming writer"

    def growing(n: int) -> str:
        r.lpush("bench:capped", *range(n))
        return "growing writer"

    trimmed = bounded("bench:capped", "bench:capped", 100, trimming, "llen")
    grown = bounded("bench:capped", "bench:capped", 100, growing, "llen")

    assert trimmed["bounded"] == "yes" and trimmed["memory_bytes"] > 0
    assert grown["bounded"] == "no" and grown["length_after_overflow"] == 100 + 1000


# -- benchmarks/profile_job.py: where a job's cost goes ---------------------------------------------

_POOL_ROOT = ["TaskPool.on_start (celery/concurrency/prefork.py:182)", "Worker.__call__ (billiard/pool.py:293)",
              "Worker.workloop (billiard/pool.py:369)", "build_tracer.<locals>.trace_task (celery/app/trace.py:564)"]


def test_a_sample_is_charged_to_what_caused_it_not_to_the_pieces_it_used():
    from benchmarks.profile_job import component_of

    def frames(*leaf: str) -> list[str]:
        return [*_POOL_ROOT, *leaf]

    assert component_of(frames("Backend.mark_as_done (celery/backends/base.py:1)", "dumps (json/__init__.py:1)")) \
        == "result: SUCCESS write"
    assert component_of(frames("Backend.store_result (celery/backends/base.py:1)",
                               "TrackedRetry.call_with_retry (resilience/core/connection.py:1)")) \
        == "result: STARTED write"
    assert component_of(frames("ResilientTask.__call__ (resilience/jobs/task.py:1)",
                               "begin (resilience/jobs/executions.py:1)",
                               "Redis.execute_command (redis/client.py:1)")) == "execution guard scripts"
    assert component_of(frames("ResilientTask.__call__ (resilience/jobs/task.py:1)")) \
        == "platform: resilience/jobs/task.py"
    assert component_of(frames("dumps (json/__init__.py:1)")) == "json"
    # the frames above the pool's work loop (its fork inside the worker's start-up) do not count
    assert component_of(frames()) == "Celery: trace in the pool"


def test_py_spy_stacks_are_counted_per_process_and_component():
    from benchmarks.profile_job import samples_by_component

    main = 'process 10:"celery worker";thread (10): MainThread;asynloop (celery/worker/loops.py:1)'
    pool = f'process 10:"celery worker";process 11:"celery worker";thread (11): MainThread;{";".join(_POOL_ROOT)}'
    raw = "\n".join([f"{main};EventDispatcher.send (celery/events/dispatcher.py:1) 7",
                     f"{pool};noop (benchmarks/jobs.py:1) 3",
                     f"{pool};Backend.mark_as_done (celery/backends/base.py:1) 5"])

    assert samples_by_component(raw) == {"main": {"task events": 7},
                                         "pool": {"the job body (INCR)": 3, "result: SUCCESS write": 5}}


def test_a_transaction_is_one_request_and_each_request_has_its_step():
    from benchmarks.profile_job import requests_of, step_of

    raw = [(1, ["LPUSH", "celery", "{...}"]),
           (2, ["MULTI"]), (3, ["BRPOP", "celery", "1"]),
           (2, ["ZADD", "unacked_index", "1.0", "tag"]), (2, ["HSET", "unacked", "tag", "[...]"]), (2, ["EXEC"]),
           (4, ["EVALSHA", "abc", "4", "jobs:state:x", "..."]),
           (4, ["MULTI"]), (4, ["SETEX", "celery-task-meta-x", "86400", '{"status": "STARTED", ...}']),
           (4, ["PUBLISH", "celery-task-meta-x", "{...}"]), (4, ["EXEC"]),
           (9, ["INFO", "everything"])]
    roles = {1: "producer", 2: "main", 3: "main", 4: "pool"}

    found = requests_of(raw, roles, ignore={9})
    steps = [step_of(r, {"abc": "job_start"}) for r in found]

    assert steps == ["submit: LPUSH the message", "fetch: BRPOP",
                     "delivery: unacked bookkeeping (MULTI ZADD HSET EXEC)", "execution guard: job_start.lua",
                     "result: STARTED write (MULTI SETEX PUBLISH EXEC)"]
    assert [r.role for r in found] == ["producer", "main", "main", "pool", "pool"]


def test_the_platform_scripts_are_named_by_their_sha1():
    import hashlib

    from benchmarks.profile_job import script_names
    from resilience.store import load_script

    assert script_names()[load_script("job_start").sha] == "job_start"
    source = (ROOT / "resilience" / "core" / "lua" / "lock_release.lua").read_bytes()  # a script without fragments
    assert script_names()[hashlib.sha1(source).hexdigest()] == "lock_release"
