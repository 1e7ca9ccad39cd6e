"""``resilience demo``: the platform plus a workload that shows each feature."""

from __future__ import annotations

import click

from resilience.core.logconfig import setup_cli_logging


@click.command(name="demo", help="`up` plus a demonstration workload (flaky jobs that retry, duplicates "
                                 "absorbed, jobs that land in the dead-letter queue) and a live status view.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--rate", type=float, default=4.0, show_default=True, help="Jobs submitted per second.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--outage-after", type=float, default=None,
              help="Stop the embedded Redis for 5 s after this many seconds, to watch jobs spool and "
                   "workers reconnect.")
@click.option("--ha", is_flag=True, help="Run Redis under Sentinel locally (a primary, two replicas, three "
                                         "sentinels).")
@click.option("--failover-after", type=float, default=None,
              help="With a local Sentinel topology (implies --ha): SIGKILL the primary after this many seconds, "
                   "to watch Sentinel promote a replica and the platform follow it.")
def command(duration: float | None, rate: float, no_flower: bool, outage_after: float | None, ha: bool,
            failover_after: float | None) -> None:
    import logging

    from resilience.cli.context import app_spec
    from resilience.platform.demo import Demo

    setup_cli_logging(logging.WARNING)
    Demo(duration=duration, rate=rate, flower=not no_flower, outage_after=outage_after,
         ha=ha or failover_after is not None, failover_after=failover_after, app_spec=app_spec()).run()
