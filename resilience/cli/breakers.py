"""``resilience breakers``: circuit breaker states; ``resilience breakers reset NAME``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # a time no calendar holds
        return None


def rows() -> list[dict]:
    """One row per breaker: name, state, failures, opened_at (ISO 8601), time to half-open.

    A malformed record is a row with ``state: "malformed"`` and its ``problem``.
    """
    from resilience.breakers import breaker

    result = []
    for name, record in breaker.status().items():
        if record.get("malformed"):
            result.append({"name": name, "state": "malformed", "problem": record.get("problem"),
                           "raw": record.get("raw")})
            continue
        result.append({
            "name": name,
            "state": record.get("state"),
            "failures": record.get("failures", 0),
            "opened_at": _iso(record.get("opened_at")),
            "half_open_in_sec": record.get("half_open_in_sec"),
            "fail_max": record.get("fail_max"),
            "reset_timeout_sec": record.get("reset_timeout_sec"),
        })
    return result


@click.group(name="breakers", invoke_without_command=True,
             help="Circuit breaker states; `breakers reset NAME` closes one for the whole cluster.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
@click.pass_context
def command(ctx: click.Context, as_json: bool) -> None:
    from resilience.cli.context import use_app

    use_app()
    if ctx.invoked_subcommand is not None:
        return
    table = rows()
    if as_json:
        click.echo(json.dumps(table))
        return
    if not table:
        click.echo("no circuit breakers have been used yet")
        return
    from rich.console import Console
    from rich.table import Table

    from resilience.core.display import cell

    view = Table(title="Circuit breakers")
    for column in ("breaker", "state", "failures", "opened at (UTC)", "half-open in"):
        view.add_column(column)
    for row in table:
        if row["state"] == "malformed":
            view.add_row(cell(row["name"]), cell("malformed", style="red"), cell(row.get("problem"), limit=60),
                         cell("-"), cell("-"))
            continue
        due = row["half_open_in_sec"]
        view.add_row(cell(row["name"]), cell(row["state"]), cell(row["failures"]), cell(row["opened_at"] or "-"),
                     cell(f"{due:.1f}s" if due is not None else "-"))
    Console().print(view)


@command.command(name="reset", help="Close breaker NAME for every process and host.")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def reset_command(name: str, as_json: bool) -> None:
    from resilience.breakers import breaker
    from resilience.core.display import visible

    before = breaker.reset(name)
    if as_json:
        click.echo(json.dumps({"name": name, "previous_state": before, "state": "closed"}))
    else:
        click.echo(visible(f"circuit breaker {name}: {before} -> closed"))
