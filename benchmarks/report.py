"""Turns raw results into the printed tables: medians, min-max, ratios to plain Celery.

Every figure of a configuration is the median over its runs, shown with the
runs' min-max; ratios divide a configuration's median by the median of plain
Celery with the Redis result backend (``plain-results``) from the same
invocation, and the throughput table also gives the ratio to the platform
with every flag off (``flags-off``). Absolute figures move with the machine's
load; ratios of interleaved runs hold.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.suite import Plan, Results

from benchmarks.suite import BASELINE, EVERYTHING, FLAGS_OFF, PLAIN, REQUIRED

__all__ = ["Summary", "summarise", "render", "final_lines", "percentile", "table", "targets"]

SCRIPT_COMMANDS = ("evalsha", "eval", "fcall", "evalsha_ro", "eval_ro")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


@dataclass
class Figure:
    """One figure of a configuration over its runs."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def text(self, fmt: str = "{:.0f}") -> str:
        if not self.values:
            return "n/a"
        if len(self.values) == 1:
            return fmt.format(self.median)
        return f"{fmt.format(self.median)} ({fmt.format(min(self.values))}-{fmt.format(max(self.values))})"


@dataclass
class Summary:
    """A configuration's figures over its successful runs."""

    name: str
    runs: int
    failed: int
    end_to_end: Figure
    enqueue: Figure
    p50_ms: Figure
    p99_ms: Figure
    round_trips: Figure
    commands: Figure
    scripts: Figure
    worker_cpu_us: Figure
    redis_cpu_us: Figure
    rss_mib: Figure
    per_command: dict[str, Figure]


def summarise(name: str, runs: list[dict]) -> Summary:
    ok = [r for r in runs if "error" not in r]

    def fig(value: Callable[[dict], float]) -> Figure:
        return Figure([value(r) for r in ok])

    commands = sorted({c for r in ok for c in r["calls"]})
    return Summary(
        name=name, runs=len(ok), failed=len(runs) - len(ok),
        end_to_end=fig(lambda r: r["jobs"] / r["end_to_end_sec"]),
        enqueue=fig(lambda r: r["jobs"] / r["enqueue_sec"]),
        p50_ms=fig(lambda r: percentile(r["latencies_sec"], 0.50) * 1000),
        p99_ms=fig(lambda r: percentile(r["latencies_sec"], 0.99) * 1000),
        round_trips=fig(lambda r: r["round_trips"] / r["jobs"]),
        commands=fig(lambda r: sum(r["calls"].values()) / r["jobs"]),
        scripts=fig(lambda r: sum(r["calls"].get(c, 0) for c in SCRIPT_COMMANDS) / r["jobs"]),
        worker_cpu_us=fig(lambda r: r["cpu_sec"].get("worker", 0.0) / r["jobs"] * 1e6),
        redis_cpu_us=fig(lambda r: r["cpu_sec"].get("redis", 0.0) / r["jobs"] * 1e6),
        rss_mib=Figure([r["rss_bytes"] / 2**20 for r in ok if r.get("rss_bytes")]),
        per_command={c: fig(lambda r, c=c: r["calls"].get(c, 0) / r["jobs"]) for c in commands},
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if i == 0 else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=False))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _ratio(value: float, base: float) -> str:
    if not (value == value and base == base) or base == 0:  # NaN-safe
        return "n/a"
    return f"{value / base:.2f}"


def _fmt(value: float, fmt: str = "{:.2f}") -> str:
    return "n/a" if value != value else fmt.format(value)


def _median(summaries: dict[str, Summary], name: str, figure: str) -> float:
    summary = summaries.get(name)
    return getattr(summary, figure).median if summary else float("nan")


def _over(summaries: dict[str, Summary], name: str, base: str, figure: str = "end_to_end") -> float:
    """``name``'s median of ``figure`` divided by ``base``'s (NaN when either has no run)."""
    value, under = _median(summaries, name, figure), _median(summaries, base, figure)
    return value / under if under == under and under else float("nan")


def final_lines(summaries: dict[str, Summary]) -> list[str]:
    """The closing lines: everything on against plain Celery with results, then against flags-off."""
    return [f"resilience/plain-celery end-to-end ratio: {_fmt(_over(summaries, EVERYTHING, BASELINE))}",
            f"resilience/flags-off end-to-end ratio: {_fmt(_over(summaries, EVERYTHING, FLAGS_OFF))}"]


def complete(summaries: dict[str, Summary]) -> bool:
    """Whether every configuration the closing lines need had a successful run."""
    return all(summaries.get(name) is not None and summaries[name].runs for name in (BASELINE, FLAGS_OFF, EVERYTHING))


def _runs(s: Summary) -> str:
    return f"{s.runs}" + (f" ({s.failed} failed)" if s.failed else "")


def _throughput_table(summaries: list[Summary], base: Summary, flags_off: Summary) -> str:
    rows = [[s.name, s.end_to_end.text(), _ratio(s.end_to_end.median, base.end_to_end.median),
             _ratio(s.end_to_end.median, flags_off.end_to_end.median),
             s.enqueue.text(), _ratio(s.enqueue.median, base.enqueue.median),
             s.p50_ms.text("{:.1f}"), s.p99_ms.text("{:.1f}"), _runs(s)] for s in summaries]
    return table(["config", "end-to-end jobs/s", "ratio", "vs flags-off", "enqueue jobs/s", "ratio", "p50 ms",
                  "p99 ms", "runs"], rows)


def _cost_table(summaries: list[Summary], base: Summary) -> str:
    rows = [[s.name, s.round_trips.text("{:.2f}"), _fmt(s.round_trips.median - base.round_trips.median, "{:+.2f}"),
             s.commands.text("{:.1f}"), s.scripts.text("{:.2f}"), s.worker_cpu_us.text(),
             _ratio(s.worker_cpu_us.median, base.worker_cpu_us.median), s.redis_cpu_us.text(),
             s.rss_mib.text("{:.0f}"), _ratio(s.rss_mib.median, base.rss_mib.median)]
            for s in summaries]
    return table(["config", "round trips/job", f"vs {BASELINE}", "commands/job", "scripts/job", "worker CPU us/job",
                  "ratio", "Redis CPU us/job", "worker RSS MiB", "ratio"], rows)


def _command_table(summaries: list[Summary]) -> str:
    commands = sorted({c for s in summaries for c, f in s.per_command.items() if f.median >= 0.005})
    rows = []
    for command in commands:
        cells = []
        for s in summaries:
            f = s.per_command.get(command)
            cells.append(f"{f.median:.2f}" if f and f.median >= 0.005 else ".")
        rows.append([command, *cells])
    totals = [_fmt(s.commands.median) for s in summaries]
    rows.append(["total", *totals])
    return table(["command", *[s.name for s in summaries]], rows)


def _per_call(entry: dict, field: str = "round_trips") -> float:
    if field not in entry or not entry.get("jobs"):
        return float("nan")
    return entry[field] / entry["jobs"]


def _submit_table(submit: dict[str, dict]) -> str:
    rows = []
    for label, r in submit.items():
        if "error" in r:
            rows.append([label, "error", "", r["error"][:80]])
            continue
        jobs = r["jobs"]
        top = sorted(r["calls"].items(), key=lambda kv: -kv[1])
        rows.append([label, f"{r['round_trips'] / jobs:.2f}", f"{sum(r['calls'].values()) / jobs:.2f}",
                     ", ".join(f"{c} {n / jobs:.2f}" for c, n in top if n / jobs >= 0.005)])
    return table(["delay() with", "round trips/call", "commands/call", "commands per call"], rows)


def _timing(entry: dict) -> str:
    if entry.get("status") != "ok":
        return entry.get("status", "n/a")
    return f"{entry['median_ms']:.1f} ms ({entry['min_ms']:.1f}-{entry['max_ms']:.1f})"


def _scale_rows(scale: dict, plan: Plan) -> list[list[str]]:
    if "error" in scale:
        return [["scale figures", "error", scale["error"][:100]]]
    sweep = {"entries": plan.sweep_entries, **scale.get("sweep", {})}
    dlq = scale.get("dead_letter", {})
    rows = [[f"stuck-job sweep, {sweep.get('entries', '?')} active entries", _timing(sweep),
             sweep.get("function", "resilience.sweeper")],
            [f"raw HGETALL jobs:active + decode, {sweep.get('entries', '?')} entries",
             _timing({"status": "ok", **sweep["raw_scan"]}) if "raw_scan" in sweep else "n/a",
             "floor of a sweep that reads every entry"],
            [f"dlq list, one page, {dlq.get('entries', '?')} entries", _timing(dlq.get("list", {})),
             dlq.get("list", {}).get("function", "resilience.deadletter")],
            [f"raw LRANGE page (50) + decode, {dlq.get('entries', '?')} entries",
             _timing({"status": "ok", **dlq["raw_page"]}) if "raw_page" in dlq else "n/a", "redis-py"],
            [f"dlq stats, {dlq.get('entries', '?')} entries", _timing(dlq.get("stats", {})),
             dlq.get("stats", {}).get("function", "resilience.deadletter")]]
    for memory in (scale.get("timeline", {}), dlq.get("memory", {})):
        if not memory:
            continue
        after = memory.get("length_after_overflow")
        detail = f"bounded: {memory.get('bounded', 'n/a')}"
        if after is not None:
            detail += f" (length {after} after {memory.get('overflow_writes', '?')} more writes by {memory['writer']})"
        rows.append([f"memory of {memory['key']} at cap {memory['cap']}",
                     f"{memory['memory_bytes'] / 1e6:.1f} MB ({memory['bytes_per_entry']:.0f} B/entry)", detail])
    return rows


#: Round trips are counted as Redis read events, which merge now and then
#: (two requests read in one go) or split; differences within this are noise.
ROUND_TRIP_RESOLUTION = 0.05

PASS, MISS, NA = "pass", "MISS", "n/a"


def _at_least(value: float, target: float) -> str:
    return NA if value != value else (PASS if value >= target else MISS)


def _at_most(value: float, target: float, slack: float = 0.0) -> str:
    return NA if value != value else (PASS if value <= target + slack else MISS)


def targets(summaries: dict[str, Summary], submit: dict[str, dict]) -> list[list[str]]:
    """The targets of issue 14 (the hot path), each with its measured value and pass / MISS / n/a."""
    rows = []
    ratio = _over(summaries, EVERYTHING, BASELINE)
    rows.append([f"everything on: >= 0.80 of {BASELINE} end-to-end", _fmt(ratio), _at_least(ratio, 0.80)])
    ratio = _over(summaries, EVERYTHING, FLAGS_OFF)
    rows.append([f"everything on: >= 0.95 of {FLAGS_OFF} end-to-end", _fmt(ratio), _at_least(ratio, 0.95)])
    extra = _median(summaries, EVERYTHING, "round_trips") - _median(summaries, BASELINE, "round_trips")
    rows.append([f"everything on: round trips/job <= {BASELINE} + 2", _fmt(extra, "{:+.2f}"),
                 _at_most(extra, 2, ROUND_TRIP_RESOLUTION)])
    extra = (_per_call(submit.get(f"{EVERYTHING} + idempotency key", {}))
             - _per_call(submit.get(BASELINE, {})))
    rows.append([f"delay() with an idempotency key: <= {BASELINE} delay() + 1 round trip", _fmt(extra, "{:+.2f}"),
                 _at_most(extra, 1, ROUND_TRIP_RESOLUTION)])
    ratio = _over(summaries, EVERYTHING, BASELINE, "worker_cpu_us")
    rows.append([f"everything on: worker CPU/job <= 1.25x {BASELINE}", _fmt(ratio, "{:.2f}x"), _at_most(ratio, 1.25)])
    ratio = _over(summaries, EVERYTHING, BASELINE, "rss_mib")
    rows.append([f"everything on: worker memory <= 1.2x {BASELINE}", _fmt(ratio, "{:.2f}x"), _at_most(ratio, 1.2)])
    return rows


def _scale_targets(scale: dict, plan: Plan) -> list[list[str]]:
    """The scale targets of issue 9."""
    rows = []
    sweep = {"entries": plan.sweep_entries, **scale.get("sweep", {})}
    rows.append([f"sweep of {sweep['entries']} active entries < 1 s",
                 _timing(sweep), NA if sweep.get("status") != "ok" else _at_most(sweep["median_ms"], 999.999)])
    dlq = scale.get("dead_letter", {})
    page = dlq.get("list", {})
    rows.append([f"dlq list page < 100 ms at {dlq.get('entries', plan.dead_letters)} entries", _timing(page),
                 NA if page.get("status") != "ok" else _at_most(page["median_ms"], 99.999)])
    for memory in (scale.get("timeline", {}), dlq.get("memory", {})):
        if memory:
            verdict = {"yes": PASS, "no": MISS}.get(memory.get("bounded"), NA)
            rows.append([f"{memory['key']} bounded at its cap", memory.get("bounded", NA), verdict])
    return rows


def _difference(s: Summary, base: Summary) -> str:
    """What ``s`` adds over ``base`` per job: round trips, worker CPU, end-to-end ratio, commands."""
    added = []
    for command in sorted(set(s.per_command) | set(base.per_command)):
        mine, theirs = s.per_command.get(command), base.per_command.get(command)
        diff = (mine.median if mine else 0.0) - (theirs.median if theirs else 0.0)
        if abs(diff) >= 0.05:
            added.append(f"{command} {diff:+.2f}")
    return (f"{s.round_trips.median - base.round_trips.median:+.2f} round trips, "
            f"{s.worker_cpu_us.median - base.worker_cpu_us.median:+.0f} us worker CPU, "
            f"end-to-end ratio {_ratio(s.end_to_end.median, base.end_to_end.median)}"
            + (f" ({', '.join(added)})" if added else ""))


def _closing_note(ordered: list[Summary], summaries: dict[str, Summary], verdicts: list[list[str]]) -> str:
    missed = [t[0] for t in verdicts if t[2] == MISS]
    lines = ["Missed: " + "; ".join(missed) + "." if missed else "Every target that could be measured was met.",
             "What each step adds per job (round trips, worker CPU, end-to-end ratio, commands by name):"]
    steps = [(BASELINE, PLAIN), (FLAGS_OFF, BASELINE)]
    singles = [s.name for s in ordered if s.name not in REQUIRED]
    steps += [(name, FLAGS_OFF) for name in singles]
    steps += [(EVERYTHING, FLAGS_OFF), (EVERYTHING, BASELINE)]
    for name, base in steps:
        s, b = summaries.get(name), summaries.get(base)
        if s and b and s.runs and b.runs:
            lines.append(f"  {name} over {base}: {_difference(s, b)}")
    return "\n".join(lines)


def render(results: Results, plan: Plan) -> str:
    """Every table of a suite run, as text."""
    ordered = [summarise(c.name, results.runs.get(c.name, [])) for c in plan.configs]
    summaries = {s.name: s for s in ordered}
    base, flags_off = summaries[BASELINE], summaries[FLAGS_OFF]
    out = [f"celery-resilience benchmark: {plan.runs} interleaved run(s) x {len(plan.configs)} configurations, "
           f"{plan.jobs} jobs per run, prefork pool of 2, late acks, prefetch 1, Redis {results.redis_version} "
           f"(AOF {'on, everysec' if plan.aof else 'off'}); medians (min-max); ratios against plain Celery with "
           f"the Redis result backend ({BASELINE}) from this run. Took {results.seconds:.0f} s.", ""]
    out += ["Throughput and latency (latency: submit to start of the job body, "
            f"{plan.latency_jobs} jobs at {plan.latency_rate:.0f}/s)", _throughput_table(ordered, base, flags_off), ""]
    out += ["Cost per job (throughput phase; the job itself makes 1 round trip: INCRBY; "
            "worker RSS: main + pool processes after the run)", _cost_table(ordered, base), ""]
    out += ["Redis commands per job, by command (INFO commandstats; commands inside scripts counted too)",
            _command_table(ordered), ""]
    out += [f"Submit cost: delay() alone, no worker running ({plan.submit_jobs} calls)",
            _submit_table(results.submit), ""]
    out += ["Scale figures (everything on)",
            table(["figure", "measured", "notes"], _scale_rows(results.scale, plan)), ""]
    verdicts = targets(summaries, results.submit)
    out += ["Targets (issue 14: the hot path)", table(["target", "measured", "verdict"], verdicts), ""]
    scale_verdicts = _scale_targets(results.scale, plan)
    out += ["Targets (issue 9: scale)", table(["target", "measured", "verdict"], scale_verdicts), ""]
    out += [_closing_note(ordered, summaries, verdicts + scale_verdicts), ""]
    return "\n".join(out)
