"""The benchmark suite (issue 9): it runs end to end and counts what it claims to count.

No timing is asserted here: figures belong to the benchmark's report.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.probes import delta, snapshot
from benchmarks.report import final_line, percentile, summarise

ROOT = Path(__file__).resolve().parent.parent


def _run(jobs: int, seconds: float, round_trips: int, calls: dict[str, int]) -> dict:
    return {"jobs": jobs, "enqueue_sec": seconds / 2, "end_to_end_sec": seconds, "calls": calls,
            "round_trips": round_trips, "cpu_sec": {"worker": 0.1, "redis": 0.02},
            "latencies_sec": [0.001 * i for i in range(1, 101)]}


def test_a_pipeline_counts_as_one_round_trip_and_each_of_its_commands(r):
    before = snapshot(r, {})
    pipe = r.pipeline(transaction=False)
    pipe.incr("bench:a")
    pipe.incr("bench:a")
    pipe.get("bench:a")
    pipe.execute()
    window = delta(before, snapshot(r, {}))

    assert window.reads == 1
    assert window.calls == {"incrby": 2, "get": 1}


def test_a_script_counts_as_one_round_trip_with_the_commands_it_runs(r):
    before = snapshot(r, {})
    r.eval("redis.call('INCR', KEYS[1]); return redis.call('INCR', KEYS[1])", 1, "bench:b")
    window = delta(before, snapshot(r, {}))

    assert window.reads == 1
    assert window.calls == {"eval": 1, "incr": 2}


def test_cpu_of_a_process_tree_is_read_from_proc(r):
    window = delta(snapshot(r, {"me": os.getpid()}), snapshot(r, {"me": os.getpid()}))

    assert window.cpu["me"] >= 0.0


def test_the_final_ratio_divides_medians_of_everything_on_by_bare():
    bare = [_run(100, 1.0, 400, {"lpush": 100}), _run(100, 0.5, 400, {"lpush": 100}),
            _run(100, 2.0, 400, {"lpush": 100})]
    everything = [_run(100, 2.0, 600, {"evalsha": 200}), _run(100, 1.0, 600, {"evalsha": 200}),
                  _run(100, 4.0, 600, {"evalsha": 200})]
    summaries = {"bare": summarise("bare", bare), "all": summarise("all", everything)}

    assert summaries["bare"].end_to_end.median == 100.0
    assert summaries["all"].round_trips.median == 6.0
    assert final_line(summaries) == "resilience/bare end-to-end ratio: 0.50"


def test_the_final_line_is_printed_even_without_figures():
    assert final_line({"bare": summarise("bare", [{"error": "worker did not start"}])}) == \
        "resilience/bare end-to-end ratio: n/a"


def test_percentiles_are_nearest_rank():
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0


@pytest.mark.slow
def test_quick_benchmark_prints_every_table_and_the_final_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURE_")}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)

    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for heading in ("Throughput and latency", "Cost per job", "Redis commands per job, by command",
                    "Submit cost", "Scale figures", "Targets"):
        assert heading in out, f"missing table {heading!r}:\n{out}"
    for config in ("bare", "all"):
        assert re.search(rf"^{config}\s+\d+", out, re.MULTILINE), f"no figures for {config}:\n{out}"
    assert "failed" not in out.split("Cost per job")[0]
    assert re.fullmatch(r"resilience/bare end-to-end ratio: \d+\.\d\d", out.strip().splitlines()[-1])


def test_a_feature_not_built_yet_is_found_as_missing_not_as_an_error():
    from benchmarks.scale import find

    assert find("resilience.no_such_feature", ("sweep",)) is None
    assert find("resilience.deadletter", ("no_such_function", "bury_entry"))[0] == "resilience.deadletter.bury_entry"


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
