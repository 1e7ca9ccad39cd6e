"""``python -m benchmarks`` (``make bench``): the cost of resilience, against plain Celery.

Options: ``--quick`` (a smoke run of about a minute: plain, plain-results,
flags-off and all, small sizes), ``--runs N``, ``--jobs N``, ``--configs a,b``
(single features to add; the four above always run), ``--no-aof``,
``--save PATH``. The tables go to stdout, progress to stderr. The last two
lines are always ``resilience/plain-celery end-to-end ratio: X.XX`` and
``resilience/flags-off end-to-end ratio: X.XX`` (``n/a``, and exit status 1,
when a configuration they need had no successful run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from benchmarks.report import complete, final_lines, render, summarise
from benchmarks.suite import REQUIRED, Plan, Results, configurations, run_suite


def plan_from(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run of about a minute: {', '.join(REQUIRED)}; small sizes")
    parser.add_argument("--runs", type=int, help="interleaved runs per configuration (default 3; quick 2)")
    parser.add_argument("--jobs", type=int, help="jobs per throughput run (default 600; quick 200)")
    parser.add_argument("--configs",
                        help=f"comma-separated feature configurations to run besides {', '.join(REQUIRED)}")
    parser.add_argument("--save", metavar="PATH", help="also write the raw results as JSON to PATH")
    parser.add_argument("--no-aof", dest="aof", action="store_false",
                        help="run Redis without AOF persistence (default: on, appendfsync everysec)")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1 or args.jobs is not None and args.jobs < 1:
        parser.error("--runs and --jobs must be at least 1")
    names = [n.strip() for n in args.configs.split(",") if n.strip()] if args.configs else None
    if args.quick:
        plan = Plan(runs=2, jobs=200, latency_jobs=50, submit_jobs=100, sweep_entries=1_000,
                    dead_letters=10_000, timeline_entries=5_000, configs=configurations(names or list(REQUIRED)))
    else:
        plan = Plan(configs=configurations(names))
    if args.runs is not None:
        plan.runs = args.runs
    if args.jobs is not None:
        plan.jobs = args.jobs
    plan.aof = args.aof
    plan.save = args.save
    return plan


def main(argv: list[str] | None = None) -> int:
    plan = plan_from(argv)
    results = Results()
    status = 1
    try:
        results = run_suite(plan)
        if plan.save:
            Path(plan.save).write_text(json.dumps(dataclasses.asdict(results), indent=1))
        print(render(results, plan))
        status = 0
    finally:
        summaries = {c.name: summarise(c.name, results.runs.get(c.name, [])) for c in plan.configs}
        print("\n".join(final_lines(summaries)), flush=True)
    return status if complete(summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
