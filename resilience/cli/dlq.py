"""``resilience dlq``: list, show, replay, purge and count dead-lettered jobs.

A thin layer over :mod:`resilience.jobs.deadletter`; every subcommand takes
``--json`` and then prints JSON only. Malformed entries are shown as such and
never stop a command; entry data is shown as text (:mod:`resilience.core.display`).
``dlq replay`` exits 1 when it refused an entry (its arguments were cut when
it was stored, or its queue is not the app's).
"""

from __future__ import annotations

import json
from typing import Any

import click

from resilience.cli.context import use_app
from resilience.core.display import cell, visible
from resilience.jobs import deadletter


def _filters(func):
    func = click.option("--since", default=None, metavar="TIME",
                        help="Only entries that failed at or after TIME (ISO 8601, UTC when no offset).")(func)
    func = click.option("--error-type", default=None,
                        help="Only entries with this error type (e.g. ConnectionError).")(func)
    func = click.option("--task", default=None, help="Only entries of this task name.")(func)
    return func


def _json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON only.")(func)


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return deadletter.parse_time(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint="--since") from None


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, default=str))


@click.group(name="dlq", help="Dead-letter queue (jobs:dead_letter): list, show, replay, purge, stats.")
def command() -> None:
    use_app()  # the app's settings, key prefix and Redis; replay publishes through it


@command.command(name="list", help="List entries, newest first.")
@_filters
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=0), help="Most entries to show.")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0),
              help="Skip this many (matching) entries first.")
@_json_option
def list_command(task, error_type, since, limit, offset, as_json) -> None:
    entries = deadletter.list_entries(task=task, error_type=error_type, since=_since(since), limit=limit,
                                      offset=offset)
    if as_json:
        _echo_json({"total": deadletter.count(), "entries": [e.to_json() for e in entries]})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Dead letters ({deadletter.count()} in total)")
    for column in ("#", "job id", "task", "error", "failed at", "retries", "reason"):
        table.add_column(column)
    for e in entries:
        if e.malformed:
            table.add_row(cell(e.index), cell("-"), cell("malformed", style="red"), cell(e.problem or "", limit=60),
                          cell(""), cell(""), cell(e.raw, limit=60))
            continue
        d = e.data or {}
        table.add_row(cell(e.index), cell(d["job_id"]), cell(d["task"]), cell(d["error_type"]),
                      cell(d["failed_at"]), cell(d["retry_count"]), cell(d["failure_reason"], limit=80))
    Console().print(table)


@command.command(name="show", help="Show one entry by job id.")
@click.argument("job_id")
@_json_option
def show_command(job_id, as_json) -> None:
    entry = deadletter.get(job_id)
    if entry is None:
        if as_json:
            _echo_json(None)
        raise click.ClickException(f"no dead-letter entry for job {job_id}")
    if as_json:
        _echo_json(entry.to_json())
        return
    data = entry.data or {}
    for name, value in data.items():
        if name == "traceback":
            continue
        shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
        click.echo(visible(f"{name:>15}: {shown}"))
    click.echo("      traceback:")
    click.echo(visible(data.get("traceback") or "  (none)", lines=True))


def _selection(ids, all_, task, error_type, since, verb: str) -> None:
    if not ids and not all_:
        raise click.UsageError(f"name job ids to {verb}, or pass --all (with filters)")
    if ids and (all_ or task or error_type or since):
        raise click.UsageError("give either job ids or --all with filters, not both")


def _report(outcome: deadletter.Outcome, verb: str, as_json: bool) -> None:
    if as_json:
        _echo_json(outcome.to_json())
    elif outcome.dry_run:
        click.echo(f"would {verb} {len(outcome.matched) - len(outcome.refused)} entries")
        for job_id in outcome.matched:
            click.echo(visible(f"  {job_id}"))
    else:
        click.echo(f"{verb}: {len(outcome.done)} done, {len(outcome.gone)} already gone"
                   + (f", {len(outcome.refused)} refused" if outcome.refused else ""))
    if outcome.refused:
        if not as_json:
            for job_id in outcome.refused:
                click.echo(visible(f"  refused {job_id}: {outcome.reasons.get(job_id, '')}"), err=True)
        raise click.exceptions.Exit(1)


@command.command(name="replay", help="Re-enqueue jobs as fresh attempts (same job id) and remove their entries.")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every entry matching the filters.")
@_filters
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@_json_option
def replay_command(ids, all_, task, error_type, since, dry_run, as_json) -> None:
    _selection(ids, all_, task, error_type, since, "replay")
    outcome = deadletter.replay(list(ids) or None, all=all_, task=task, error_type=error_type,
                                since=_since(since), dry_run=dry_run)
    _report(outcome, "replay", as_json)


@command.command(name="purge", help="Remove entries for good.")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every entry matching the filters.")
@_filters
@click.option("--malformed", is_flag=True, help="Also remove malformed entries.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; change nothing.")
@_json_option
def purge_command(ids, all_, task, error_type, since, malformed, dry_run, as_json) -> None:
    if not malformed:
        _selection(ids, all_, task, error_type, since, "purge")
    outcome = deadletter.purge(list(ids) or None, all=all_, task=task, error_type=error_type,
                               since=_since(since), malformed=malformed, dry_run=dry_run)
    _report(outcome, "purge", as_json)


@command.command(name="stats", help="Counts by task and by error fingerprint; malformed entries.")
@_json_option
def stats_command(as_json) -> None:
    result = deadletter.stats()
    if as_json:
        _echo_json(result)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(cell(f"{result['total']} entries, {result['malformed']} malformed; "
                       f"oldest {result['oldest_failed_at']}, newest {result['newest_failed_at']}"))
    for title, counts in (("By task", result["by_task"]), ("By error fingerprint", result["by_fingerprint"])):
        table = Table(title=title)
        table.add_column("name")
        table.add_column("count", justify="right")
        for name, n in counts.items():
            table.add_row(cell(name), cell(n))
        console.print(table)
