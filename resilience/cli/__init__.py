"""The ``resilience`` command: run the platform and look after it.

Each command lives in its own module of this package. Every command that
takes ``--json`` prints machine-readable JSON on stdout and nothing else.
Every command acts on the app named by ``-A/--app`` (or ``RESILIENCE_APP``;
default the bundled app), as ``celery -A`` does; the same commands are
``celery -A proj resilience ...`` through Celery's ``celery.commands`` entry
point. Failures are one line on stderr and a non-zero exit: 2 for
configuration errors, 1 for everything else (Redis unreachable, no Redis
running, a key of the wrong type, a malformed record). Data is shown as
text, never as Rich markup, with control characters made visible
(:mod:`resilience.core.display`).
"""

from __future__ import annotations

from typing import Any

import click
import redis

from resilience.cli.context import AppRef
from resilience.core.errors import ConfigurationError, ResilienceError


class _CommandGroup(click.Group):
    """A group whose failures are one line on stderr and an exit status, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as err:
            _fail(ctx, f"configuration error: {err}", 2)
        except ResilienceError as err:
            _fail(ctx, f"error: {err}", 1)
        except (redis.ConnectionError, redis.TimeoutError) as err:
            _fail(ctx, f"error: Redis is unreachable: {err}", 1)
        except redis.RedisError as err:  # WRONGTYPE and other refusals of a command
            _fail(ctx, f"error: Redis refused a command: {err}", 1)


def _fail(ctx: click.Context, message: str, status: int) -> None:
    from resilience.core.display import visible

    lines = message.strip().splitlines()
    click.echo(visible(lines[0]) if lines else "error", err=True)
    ctx.exit(status)


_APP_HELP = ("The Celery app to act on, as for `celery -A`: MODULE or MODULE:ATTRIBUTE "
             "(env RESILIENCE_APP; default: the bundled app).")


@click.group(cls=_CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "app_spec", envvar="RESILIENCE_APP", default=None, metavar="MODULE[:ATTR]",
              help=_APP_HELP)
@click.version_option(package_name="celery-resilience")
@click.pass_context
def main(ctx: click.Context, app_spec: str | None) -> None:
    """celery-resilience: Celery on Redis that keeps jobs alive."""
    ctx.obj = AppRef(app_spec or None)


@click.group(cls=_CommandGroup, name="resilience", help="celery-resilience: the platform's commands for this app.")
@click.pass_context
def celery_command(ctx: click.Context) -> None:
    """``celery -A proj resilience ...``: the same commands, on the app Celery loaded."""
    celery_context: Any = ctx.find_root().obj
    ctx.obj = AppRef(app=getattr(celery_context, "app", None))


def _register() -> None:
    from resilience.cli import breakers, demo, dlq, down, errors, health, quarantine, spool, status, sweep, up

    for module in (up, down, demo, status, dlq, breakers, errors, sweep, health, spool, quarantine):
        main.add_command(module.command)
        celery_command.add_command(module.command)


_register()


def run() -> None:  # pragma: no cover - the console entry point
    main(standalone_mode=True)
