"""``resilience sweep``: run the stuck-job sweep once and report what it did."""

from __future__ import annotations

import json

import click


@click.command(name="sweep", help="Run the stuck-job sweep once and report what it did.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def command(as_json: bool) -> None:
    from resilience import sweeper
    from resilience.cli.context import use_app

    app = use_app()
    report = sweeper.sweep(app)
    if as_json:
        click.echo(json.dumps(report.as_dict(), default=str))
        return
    if not report.ran:
        click.echo(f"sweep skipped: {report.skipped}")
        return
    click.echo(f"sweep: {len(report.live_workers)} live workers, {len(report.dead_workers)} dead, "
               f"{report.active_jobs} active jobs, {report.duration_ms} ms")
    for action in report.restored:
        click.echo(f"  restored   {action['job_id']} ({action['task']}) to queue {action['queue']}"
                   f"{' from dead worker ' + action['worker'] if action.get('worker') else ''}")
    for action in report.requeued:
        click.echo(f"  requeued   {action['job_id']} ({action['task']}) of dead worker {action['worker']}")
    for action in report.stopped:
        click.echo(f"  stopped    {action['job_id']} ({action['task']}) on {action['worker']}: "
                   f"{action['reason']}; {action['outcome']}")
    for error in report.errors:
        click.echo(f"  error      {error}")
    if not report.acted:
        click.echo("  nothing to recover")
