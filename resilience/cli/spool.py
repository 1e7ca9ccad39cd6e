"""``resilience spool [list|flush] [--json]``: the jobs waiting in the data dir's publish spool.

Jobs are spooled when Redis could not take them (down, frozen or full); every
worker and beat using the same data dir publishes them once Redis accepts
writes again. ``list`` shows them, ``flush`` publishes them now through the
app (``-A``), oldest first, and stops at the first job Redis refuses.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from resilience.cli.context import use_app
from resilience.core.display import visible


@click.group(name="spool", invoke_without_command=True,
             help="Jobs waiting in the local publish spool (RESILIENCE_DATA_DIR/spool.sqlite3): list, flush.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
@click.pass_context
def command(ctx: click.Context, as_json: bool) -> None:
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command, as_json=as_json)


@command.command(name="list", help="Spooled jobs, oldest first.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=0), help="Most jobs to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def list_command(as_json: bool, limit: int = 50) -> None:
    from resilience.core.errors import RedisNotRunning
    from resilience.outages import spool

    try:
        use_app()  # the app's data dir; listing needs no Redis
    except RedisNotRunning:
        pass
    total = spool.count()
    jobs, bad = spool.read(limit) if total else ([], [])
    rows: list[dict[str, Any]] = [{"job_id": job.job_id, "task": job.task, "spooled_at": job.spooled_at,
             "age_sec": round(time.time() - job.spooled_at, 1)} for job in jobs]
    # corrupt rows: the next flush moves them to the quarantine
    unreadable = [{"row": row.field, "problem": row.problem} for row in bad]
    if as_json:
        click.echo(json.dumps({"path": str(spool.spool_path()), "total": total, "jobs": rows,
                               "unreadable": unreadable}))
        return
    click.echo(visible(f"{total} job(s) in {spool.spool_path()}"))
    for row in rows:
        click.echo(visible(f"  {row['job_id']}  {row['task']}  spooled {row['age_sec']:.0f}s ago"))
    for row in unreadable:
        click.echo(visible(f"  unreadable {row['row']}: {row['problem']} (quarantined by the next flush)"))


@command.command(name="flush", help="Publish the spooled jobs now, oldest first, through the app (-A).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def flush_command(as_json: bool) -> None:
    from resilience.outages import spool
    from resilience.outages.outage import Flusher

    app = use_app()
    sent = Flusher(app).flush_once()
    left = spool.count()
    if as_json:
        click.echo(json.dumps({"published": max(sent, 0), "left": left, "busy": sent == -1}))
        return
    if sent == -1:
        click.echo(f"another process is flushing the spool right now; {left} job(s) left")
    else:
        click.echo(f"published {sent} spooled job(s); {left} left")
