"""``resilience status``: the job health dashboard."""

from __future__ import annotations

import json
import time

import click


@click.command(name="status", help="Job health: queue depths, active jobs, waiting retries, dead letters, "
                                   "workers and heartbeat ages, breakers, top error patterns.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, help="Refresh interval for --watch.")
def command(as_json: bool, watch: bool, interval: float) -> None:
    from rich.console import Console
    from rich.live import Live

    from resilience.status import collect, render
    from tasks.app import app

    if as_json:
        click.echo(json.dumps(collect(app)))
        return
    console = Console()
    if not watch:
        console.print(render(collect(app)))
        return
    with Live(render(collect(app)), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(collect(app)))
        except KeyboardInterrupt:
            pass
