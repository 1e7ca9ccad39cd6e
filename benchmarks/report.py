"""Turns raw results into the printed tables: medians, min-max, ratios to bare.

Every figure of a configuration is the median over its runs, shown with the
runs' min-max; ratios divide a configuration's median by bare Celery's median
from the same invocation (absolute figures move with the machine's load,
ratios of interleaved runs hold).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.suite import Plan, Results

__all__ = ["Summary", "summarise", "render", "final_line", "percentile", "table"]

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
        per_command={c: fig(lambda r, c=c: r["calls"].get(c, 0) / r["jobs"]) for c in commands},
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _ratio(value: float, base: float) -> str:
    if not (value == value and base == base) or base == 0:  # NaN-safe
        return "n/a"
    return f"{value / base:.2f}"


def _fmt(value: float, fmt: str = "{:.2f}") -> str:
    return "n/a" if value != value else fmt.format(value)


def e2e_ratio(summaries: dict[str, Summary]) -> float:
    bare, everything = summaries.get("bare"), summaries.get("all")
    if not bare or not everything or not bare.end_to_end.values or not everything.end_to_end.values:
        return float("nan")
    return everything.end_to_end.median / bare.end_to_end.median


def final_line(summaries: dict[str, Summary]) -> str:
    ratio = e2e_ratio(summaries)
    return f"resilience/bare end-to-end ratio: {_fmt(ratio)}"


def _throughput_table(summaries: list[Summary], bare: Summary) -> str:
    rows = [[s.name, s.end_to_end.text(), _ratio(s.end_to_end.median, bare.end_to_end.median),
             s.enqueue.text(), _ratio(s.enqueue.median, bare.enqueue.median),
             s.p50_ms.text("{:.1f}"), s.p99_ms.text("{:.1f}"),
             f"{s.runs}" + (f" ({s.failed} failed)" if s.failed else "")] for s in summaries]
    return table(["config", "end-to-end jobs/s", "ratio", "enqueue jobs/s", "ratio", "p50 ms", "p99 ms", "runs"],
                 rows)


def _cost_table(summaries: list[Summary], bare: Summary) -> str:
    rows = [[s.name, s.round_trips.text("{:.2f}"), _fmt(s.round_trips.median - bare.round_trips.median, "{:+.2f}"),
             s.commands.text("{:.1f}"), s.scripts.text("{:.2f}"), s.worker_cpu_us.text(),
             _ratio(s.worker_cpu_us.median, bare.worker_cpu_us.median), s.redis_cpu_us.text()]
            for s in summaries]
    return table(["config", "round trips/job", "vs bare", "commands/job", "scripts/job", "worker CPU us/job",
                  "ratio", "Redis CPU us/job"], rows)


def _command_table(summaries: list[Summary]) -> str:
    commands = sorted({c for s in summaries for c, f in s.per_command.items() if f.median >= 0.005})
    rows = []
    for command in commands:
        cells = []
        for s in summaries:
            f = s.per_command.get(command)
            cells.append(f"{f.median:.2f}" if f and f.median >= 0.005 else ".")
        rows.append([command, *cells])
    totals = [f"{s.commands.median:.2f}" for s in summaries]
    rows.append(["total", *totals])
    return table(["command", *[s.name for s in summaries]], rows)


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


def _verdict(extra_round_trips: float, target: float) -> str:
    return "met" if extra_round_trips <= target + ROUND_TRIP_RESOLUTION else "MISSED"


def _targets(summaries: dict[str, Summary], submit: dict[str, dict], scale: dict, plan: Plan) -> list[list[str]]:
    bare, everything = summaries.get("bare"), summaries.get("all")
    rows = []
    ratio = e2e_ratio(summaries)
    rows.append(["everything on: >= 0.90 of bare end-to-end", _fmt(ratio),
                 "n/a" if ratio != ratio else ("met" if ratio >= 0.90 else "MISSED")])
    if bare and everything and bare.round_trips.values and everything.round_trips.values:
        extra = everything.round_trips.median - bare.round_trips.median
        rows.append(["everything on: <= 2 extra round trips/job", f"{extra:+.2f}", _verdict(extra, 2)])
    keyed, plain = submit.get("all + idempotency key", {}), submit.get("all", {})
    if "round_trips" in keyed and "round_trips" in plain:
        extra = keyed["round_trips"] / keyed["jobs"] - plain["round_trips"] / plain["jobs"]
        rows.append(["idempotent submission: <= 1 extra round trip/delay()", f"{extra:+.2f}", _verdict(extra, 1)])
    sweep = {"entries": plan.sweep_entries, **scale.get("sweep", {})}
    rows.append([f"sweep of {sweep['entries']} active entries < 1 s",
                 _timing(sweep), "n/a" if sweep.get("status") != "ok" else
                 ("met" if sweep["median_ms"] < 1000 else "MISSED")])
    dlq = scale.get("dead_letter", {})
    page = dlq.get("list", {})
    rows.append([f"dlq list page < 100 ms at {dlq.get('entries', plan.dead_letters)} entries", _timing(page),
                 "n/a" if page.get("status") != "ok" else ("met" if page["median_ms"] < 100 else "MISSED")])
    for memory in (scale.get("timeline", {}), dlq.get("memory", {})):
        if memory:
            verdict = {"yes": "met", "no": "MISSED"}.get(memory.get("bounded"), "n/a")
            rows.append([f"{memory['key']} bounded at its cap", memory.get("bounded", "n/a"), verdict])
    return rows


def _closing_note(ordered: list[Summary], bare: Summary, targets: list[list[str]]) -> str:
    missed = [t[0] for t in targets if t[2] == "MISSED"]
    if not missed:
        return "Every target that could be measured was met."
    lines = ["Missed: " + "; ".join(missed) + ".", "What each feature adds over bare (round trips/job, "
             "end-to-end ratio, the commands it adds per job):"]
    singles = [s for s in ordered if s.name not in ("bare", "all") and s.runs]
    if not singles:  # only bare and all were run: show what everything on adds
        singles = [s for s in ordered if s.name == "all" and s.runs]
    singles.sort(key=lambda s: -(s.round_trips.median - bare.round_trips.median))
    for s in singles:
        added = []
        for command, figure in s.per_command.items():
            base = bare.per_command.get(command)
            diff = figure.median - (base.median if base else 0.0)
            if diff >= 0.05:
                added.append(f"{command} +{diff:.2f}")
        lines.append(f"  {s.name}: {s.round_trips.median - bare.round_trips.median:+.2f} round trips, "
                     f"ratio {_ratio(s.end_to_end.median, bare.end_to_end.median)}"
                     + (f" ({', '.join(added)})" if added else ""))
    return "\n".join(lines)


def render(results: Results, plan: Plan) -> str:
    """Every table of a suite run, as text."""
    ordered = [summarise(c.name, results.runs.get(c.name, [])) for c in plan.configs]
    summaries = {s.name: s for s in ordered}
    bare = summaries["bare"]
    out = [f"celery-resilience benchmark: {plan.runs} interleaved run(s) x {len(plan.configs)} configurations, "
           f"{plan.jobs} jobs per run, prefork pool of 2, late acks, prefetch 1, Redis {results.redis_version} "
           f"(AOF {'on, everysec' if plan.aof else 'off'}); medians (min-max); ratios against bare Celery "
           f"from this run. Took {results.seconds:.0f} s.", ""]
    out += ["Throughput and latency (latency: submit to start of the job body, "
            f"{plan.latency_jobs} jobs at {plan.latency_rate:.0f}/s)", _throughput_table(ordered, bare), ""]
    out += ["Cost per job (throughput phase; the job itself makes 1 round trip: INCRBY)",
            _cost_table(ordered, bare), ""]
    out += ["Redis commands per job, by command (INFO commandstats; commands inside scripts counted too)",
            _command_table(ordered), ""]
    out += [f"Submit cost: delay() alone, no worker running ({plan.submit_jobs} calls)",
            _submit_table(results.submit), ""]
    out += ["Scale figures (everything on)",
            table(["figure", "measured", "notes"], _scale_rows(results.scale, plan)), ""]
    targets = _targets(summaries, results.submit, results.scale, plan)
    out += ["Targets", table(["target", "measured", "verdict"], targets), ""]
    out += [_closing_note(ordered, bare, targets), ""]
    return "\n".join(out)
