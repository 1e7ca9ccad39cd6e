"""``resilience up``: start the platform in the foreground."""

from __future__ import annotations

import click

from resilience.core.logconfig import setup_cli_logging


@click.command(name="up", help="Start Redis (embedded when REDIS_URL is unset), a worker, beat and Flower; "
                               "Ctrl-C stops every process it started.")
@click.option("--concurrency", "-c", default=2, show_default=True, help="Worker pool processes.")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--no-beat", is_flag=True, help="Do not start beat.")
@click.option("--ha", is_flag=True, help="Run Redis under Sentinel locally: a primary, two replicas and three "
                                         "sentinels of the embedded binary (REDIS_URL must be unset).")
def command(concurrency: int, no_flower: bool, no_beat: bool, ha: bool) -> None:
    from resilience.cli.context import app_spec
    from resilience.core.settings import masked_url
    from resilience.platform.supervisor import Platform

    setup_cli_logging()
    platform = Platform(app_spec=app_spec(), concurrency=concurrency, flower=not no_flower,
                        beat=not no_beat, ha=ha).start()
    click.echo(f"Redis:  {masked_url(platform.redis_url or '')}")
    if platform.topology is not None:  # what another terminal needs to reach it
        click.echo(f"        export REDIS_URL='{platform.topology.url}' "
                   f"REDIS_SENTINEL_MASTER={platform.topology.master_name}")
    if platform.flower_credentials:  # where the password is, never the password
        click.echo(f"Flower: http://127.0.0.1:{platform.settings.flower_port}  ({platform.flower_login_hint()})")
    click.echo("Press Ctrl-C to stop.")
    platform.run_forever()
