"""``resilience errors``: error patterns and the recent timeline."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click


@click.command(name="errors", help="Error patterns (component:operation:error_type counts) and the recent timeline.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1),
              help="Timeline records to show, newest first.")
def command(as_json: bool, limit: int) -> None:
    from resilience.cli.context import use_app
    from resilience.core.keys import keys
    from resilience.core.quarantine import Batch, Reply
    from resilience.observability import tracking

    use_app()
    k = keys()
    seen = Batch("errors", move=False)  # a key of the wrong type: named, and the other one still shown
    patterns = seen.call(tracking.patterns, Reply(k.errors_patterns, "hash", list))
    timeline = seen.call(lambda: tracking.timeline(limit), Reply(k.errors_timeline, "sorted set", list))
    if as_json:
        click.echo(json.dumps({"patterns": patterns, "timeline": timeline, "problems": seen.problems}))
        return
    from rich.console import Console
    from rich.table import Table

    from resilience.core.display import cell

    table = Table(title="Error patterns")
    table.add_column("component:operation:error_type")
    table.add_column("count", justify="right")
    for row in patterns:
        table.add_row(cell(row["pattern"]), cell("malformed" if row.get("malformed") else row["count"]))
    recent = Table(title=f"Recent errors (newest {limit})")
    for column in ("time (UTC)", "task", "error", "fingerprint", "job", "outcome"):
        recent.add_column(column)
    for record in timeline:
        if record.get("malformed"):
            recent.add_row(cell("-"), cell("malformed", style="red"), cell(record.get("problem"), limit=80),
                           cell(""), cell(""), cell(record.get("raw"), limit=40))
            continue
        recent.add_row(cell(_when(record.get("timestamp"))), cell(record.get("operation")),
                       cell(f"{record.get('error_type')}: {record.get('error_message') or ''}", limit=80),
                       cell(record.get("fingerprint")), cell(record.get("job_id")),
                       cell((record.get("context") or {}).get("outcome", "")))
    console = Console()
    console.print(table)
    console.print(recent)
    for problem in seen.problems:
        console.print(cell(f"unreadable: {problem}", style="red"))


def _when(timestamp: float | None) -> str:
    try:
        return datetime.fromtimestamp(float(timestamp or 0), UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a time no calendar holds
        return "-"
