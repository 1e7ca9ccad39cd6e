"""``resilience sweep``: run the stuck-job sweep once and report what it did."""

from __future__ import annotations

import json

import click

from resilience.core.display import visible


def _echo(text: str) -> None:
    click.echo(visible(text))  # job ids, tasks, workers and problems are data


@click.command(name="sweep", help="Run the stuck-job sweep once and report what it did.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def command(as_json: bool) -> None:
    from resilience.cli.context import use_app
    from resilience.recovery import sweeper

    app = use_app()
    report = sweeper.sweep(app)
    if as_json:
        click.echo(json.dumps(report.as_dict(), default=str))
        return
    if not report.ran:
        _echo(f"sweep skipped: {report.skipped}")
        return
    _echo(f"sweep: {len(report.live_workers)} live workers, {len(report.dead_workers)} dead, "
          f"{report.active_jobs} active jobs, {report.duration_ms} ms")
    for action in report.restored:
        _echo(f"  restored   {action['job_id']} ({action['task']}) to queue {action['queue']}"
              f"{' from dead worker ' + str(action['worker']) if action.get('worker') else ''}")
    for action in report.requeued:
        _echo(f"  requeued   {action['job_id']} ({action['task']}) of dead worker {action['worker']}")
    for action in report.stopped:
        _echo(f"  stopped    {action['job_id']} ({action['task']}) on {action['worker']}: "
              f"{action['reason']}; {action['outcome']}")
    for problem in report.bad_records:
        _echo(f"  skipped    {problem}")
    if report.bad_records:
        _echo(f"  {report.quarantined} bad record(s) moved to the quarantine (`resilience quarantine`)")
    for error in report.errors:
        _echo(f"  error      {error}")
    if not report.acted:
        _echo("  nothing to recover")
