"""``resilience errors``: error patterns and the recent timeline."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click


@click.command(name="errors", help="Error patterns (component:operation:error_type counts) and the recent timeline.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
@click.option("--limit", default=20, show_default=True, help="Timeline records to show, newest first.")
def command(as_json: bool, limit: int) -> None:
    from resilience import tracking
    from resilience.cli.context import use_app

    use_app()
    patterns = tracking.patterns()
    timeline = tracking.timeline(limit)
    if as_json:
        click.echo(json.dumps({"patterns": patterns, "timeline": timeline}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Error patterns")
    table.add_column("component:operation:error_type")
    table.add_column("count", justify="right")
    for row in patterns:
        table.add_row(row["pattern"], str(row["count"]))
    recent = Table(title=f"Recent errors (newest {limit})")
    for column in ("time (UTC)", "task", "error", "fingerprint", "job", "outcome"):
        recent.add_column(column)
    for record in timeline:
        when = datetime.fromtimestamp(float(record.get("timestamp", 0)), UTC).strftime("%Y-%m-%d %H:%M:%S")
        recent.add_row(when, str(record.get("operation")),
                       f"{record.get('error_type')}: {str(record.get('error_message', ''))[:80]}",
                       str(record.get("fingerprint")), str(record.get("job_id")),
                       str((record.get("context") or {}).get("outcome", "")))
    console = Console()
    console.print(table)
    console.print(recent)
