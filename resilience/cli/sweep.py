"""``resilience sweep``: run the stuck-job sweep once (not built yet)."""

import click


@click.command(name="sweep", help="Run the stuck-job sweep once and report what it did (not built yet).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def command(as_json: bool) -> None:
    raise click.ClickException("`resilience sweep` is not built yet")
