"""``resilience quarantine``: the bad records the platform set aside; list and purge them.

``resilience quarantine`` (or ``quarantine list``) shows them newest first:
where each came from (key and field, or spool row), what was wrong, which
part of the platform found it and when, and the start of its text.
``resilience quarantine purge ID... | --all`` deletes them. ``--json`` prints
JSON only.
"""

from __future__ import annotations

import json

import click

from resilience.core.display import cell, visible


def _json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON only.")(func)


@click.group(name="quarantine", invoke_without_command=True,
             help="Bad records the platform set aside (not JSON, wrong types, keys of the wrong type): "
                  "`quarantine list`, `quarantine purge ID... | --all`.")
@_json_option
@click.pass_context
def command(ctx: click.Context, as_json: bool) -> None:
    from resilience.cli.context import use_app

    use_app()
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command, as_json=as_json)


@command.command(name="list", help="Quarantined records, newest first.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=0), help="Most records to show.")
@click.option("--source", default=None, metavar="KEY", help="Only records taken from this key.")
@_json_option
def list_command(limit: int = 50, source: str | None = None, as_json: bool = False) -> None:
    from resilience.core import quarantine

    records = quarantine.entries(limit=limit or None, source=source)
    total = quarantine.count()
    if as_json:
        click.echo(json.dumps({"total": total, "records": records}, default=str))
        return
    if not records:
        click.echo("the quarantine is empty")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Quarantine ({total} records)")
    for column in ("id", "at (UTC)", "source", "field", "found by", "problem", "raw"):
        table.add_column(column)
    for record in records:
        raw = record.get("raw")
        if raw is None and record.get("raw_base64"):
            raw = f"(not UTF-8; base64) {record['raw_base64']}"
        table.add_row(cell(record.get("id")), cell(record.get("at") or ""), cell(record.get("source") or ""),
                      cell(record.get("field") or ""), cell(record.get("found_by") or ""),
                      cell(record.get("problem") or "", limit=120), cell(raw or "", limit=80))
    Console().print(table)


@command.command(name="purge", help="Delete quarantined records by id, or every one with --all.")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Delete every quarantined record.")
@_json_option
def purge_command(ids: tuple[str, ...], all_: bool, as_json: bool) -> None:
    from resilience.core import quarantine

    if bool(ids) == all_:
        raise click.UsageError("name record ids to purge, or pass --all (not both)")
    removed = quarantine.purge(None if all_ else list(ids))
    if as_json:
        click.echo(json.dumps({"purged": removed}))
    else:
        click.echo(f"purged {removed} quarantined record(s)" + ("" if all_ else f" of {len(ids)} named"))
    if not all_ and removed < len(ids):
        missing = len(ids) - removed
        click.echo(visible(f"{missing} id(s) were not in the quarantine"), err=True)
