"""Secrets never reach the logs: a filter that redacts every log record.

Celery's own lines carry what a job carries: "Task ... raised unexpected:
ValueError('... password=...')", "Task ... retry: ...", tracebacks with the
exception's message, Redis URLs in connection errors. :class:`RedactingFilter`
runs :func:`resilience.core.redact.redact_text` over each record before a handler
formats it: the message (its arguments interpolated first, so a secret passed
as an argument is caught too), the exception text (the traceback, formatted
here and kept to its first and last lines within :data:`MAX_EXC_TEXT_CHARS`)
and the stack info. A message longer than
:data:`resilience.core.redact.MAX_TEXT_CHARS` is cut, with a marker.

Where it is installed (always; there is no flag to turn it off):

* workers and beat: on the handlers Celery sets up for the root logger, the
  multiprocessing logger and the task logger, and on any of the ``celery``
  logger (``after_setup_logger`` and ``after_setup_task_logger``), so pool
  processes inherit it;
* any process that installs the platform (``resilience.install(app)``,
  including the CLI): on the root logger's handlers at that moment and on
  Python's last-resort handler (what prints warnings when nothing is configured);
* the CLI's own logging (:func:`resilience.core.logconfig.setup_cli_logging`).

A handler added later by your own code is not covered: pass it, or its
logger, to :func:`install_filter`.

httpx logs every request with its full URL at INFO, and a webhook URL often
carries its token: the ``httpx`` and ``httpcore`` loggers are kept at WARNING
(:func:`quiet_http_clients`; set their level again after start-up to debug them).
"""

from __future__ import annotations

import logging
from typing import Any

from resilience.core.redact import redact_text

__all__ = ["MAX_EXC_TEXT_CHARS", "QUIET_LOGGERS", "RedactingFilter", "install_filter", "on_logging_set_up",
           "quiet_http_clients", "redact_record", "redact_this_process"]

#: A record's traceback keeps its head and its tail within this many characters.
MAX_EXC_TEXT_CHARS = 16 * 1024

#: Loggers that log request URLs at INFO, kept at WARNING.
QUIET_LOGGERS = ("httpx", "httpcore")

_DONE = "_resilience_redacted"  # set on a record once redacted: it passes several handlers


def redact_record(record: logging.LogRecord) -> None:
    """Mask secrets in ``record`` in place (message and arguments, exception text, stack info)."""
    if getattr(record, _DONE, False):
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - arguments that do not fit the format: keep both, masked
        message = f"{record.msg} (arguments: {record.args!r})"
    record.msg, record.args = redact_text(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text, MAX_EXC_TEXT_CHARS, tail=MAX_EXC_TEXT_CHARS // 2)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)
    setattr(record, _DONE, True)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record (:func:`redact_record`) and never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            redact_record(record)
        except Exception:  # noqa: BLE001 - never let a secret through because redaction failed
            record.msg, record.args, record.exc_info, record.exc_text = \
                "<log message withheld: it could not be redacted>", None, None, None
        return True


def install_filter(target: logging.Logger | logging.Handler | None) -> None:
    """Add a :class:`RedactingFilter` to a handler, or to every handler of a logger (once each)."""
    handlers = target.handlers if isinstance(target, logging.Logger) else [target] if target else []
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def quiet_http_clients() -> None:
    """Keep :data:`QUIET_LOGGERS` at WARNING (they log full request URLs at INFO)."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def on_logging_set_up(logger: logging.Logger | None = None, **_: Any) -> None:
    from celery.utils.log import get_multiprocessing_logger

    for target in (logger or logging.getLogger(), logging.getLogger("celery"), get_multiprocessing_logger()):
        install_filter(target)
    quiet_http_clients()


def redact_this_process() -> None:
    """Redact this process's own logs now (the root logger's handlers and Python's last resort)."""
    install_filter(logging.getLogger())
    install_filter(logging.lastResort)
    quiet_http_clients()
