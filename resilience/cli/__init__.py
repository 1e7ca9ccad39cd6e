"""The ``resilience`` command: run the platform and look after it.

Each command lives in its own module of this package. Every command that
takes ``--json`` prints machine-readable JSON on stdout and nothing else.
"""

from __future__ import annotations

import sys

import click

from resilience.errors import ConfigurationError, ResilienceError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="celery-resilience")
def main() -> None:
    """celery-resilience: Celery on Redis that keeps jobs alive."""


def _register() -> None:
    from resilience.cli import breakers, demo, dlq, errors, health, status, sweep, up

    for module in (up, demo, status, dlq, breakers, errors, sweep, health):
        main.add_command(module.command)


_register()


def run() -> None:  # pragma: no cover - console entry with friendly errors
    try:
        main(standalone_mode=True)
    except ConfigurationError as err:
        click.echo(f"configuration error: {err}", err=True)
        sys.exit(2)
    except ResilienceError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
