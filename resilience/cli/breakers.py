"""``resilience breakers``: circuit breaker states (not built yet)."""

import click


@click.group(name="breakers", invoke_without_command=True,
             help="Circuit breaker states; `breakers reset NAME` (not built yet).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def command(as_json: bool) -> None:
    raise click.ClickException("`resilience breakers` is not built yet")
