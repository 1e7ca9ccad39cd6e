"""``resilience status``: the job health dashboard.

``--json`` prints one JSON object on stdout and nothing else. When Redis
cannot be reached the command says so on stderr and exits with status 1
(``--watch`` keeps refreshing and shows the error until Redis is back).
"""

from __future__ import annotations

import json
import sys
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
    from rich.text import Text

    from resilience.cli.context import use_app
    from resilience.core.errors import StoreUnavailable
    from resilience.probes.status import collect, render

    app = use_app()

    if as_json or not watch:
        try:
            snapshot = collect(app)
        except StoreUnavailable as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        if as_json:
            click.echo(json.dumps(snapshot, default=str))
        else:
            Console().print(render(snapshot))
        return

    def view():
        try:
            return render(collect(app))
        except StoreUnavailable as err:
            return Text(f"{time.strftime('%H:%M:%S')}  {err}  (retrying every {interval:g}s)", style="bold red")

    with Live(view(), console=Console(), refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(view())
        except KeyboardInterrupt:
            pass
