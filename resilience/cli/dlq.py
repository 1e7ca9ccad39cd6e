"""``resilience dlq``: dead-letter tooling (not built yet)."""

import click


@click.group(name="dlq", help="Dead-letter queue: list, show, replay, purge, stats (not built yet).")
def command() -> None:
    pass
