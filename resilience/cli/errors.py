"""``resilience errors``: error patterns and timeline (not built yet)."""

import click


@click.command(name="errors", help="Error patterns and the recent timeline (not built yet).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def command(as_json: bool) -> None:
    raise click.ClickException("`resilience errors` is not built yet")
