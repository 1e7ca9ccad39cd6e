"""``resilience down``: stop the data dir's embedded redis-server."""

from __future__ import annotations

import click


@click.command(name="down", help="Stop the embedded redis-server of RESILIENCE_DATA_DIR (one that a producer, "
                                 "worker or `resilience up` started and left running).")
def command() -> None:
    from resilience.core.embedded import embedded_url, stop_embedded
    from resilience.core.settings import get_settings

    settings = get_settings()
    url = embedded_url(settings)
    if url is None:
        click.echo(f"no embedded redis-server runs for {settings.data_dir}")
        return
    stop_embedded(settings)
    click.echo(f"stopped the embedded redis-server at {url}")
