"""Log records are redacted: message and arguments, tracebacks, stack info; httpx stays quiet (issue 15).

Worker logs (Celery's "raised unexpected" and retry lines) are checked with a
real worker in tests/test_secret_leaks.py.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import uuid

import httpx
import pytest

from resilience import logredact
from resilience.testing.webhook_receiver import WebhookReceiver


@pytest.fixture
def logged():
    """A logger of its own whose handler has the filter; yields (logger, the text it wrote)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logredact.install_filter(handler)
    logger = logging.getLogger(f"tests.logredact.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream.getvalue
    logger.removeHandler(handler)


def test_a_secret_passed_as_a_log_argument_is_masked(logged):
    logger, text = logged
    logger.warning("cannot reach %s with %r", "redis://:zq-pw@redis:6379/0", {"password": "zq-kw"})

    assert "zq-" not in text()
    assert "redis://:***@redis:6379/0" in text()


def test_a_traceback_in_a_log_record_is_masked(logged):
    logger, text = logged
    try:
        raise ValueError("gateway said Authorization: Bearer zq-token")
    except ValueError:
        logger.exception("Task charge raised unexpected: token=%s", "zq-arg")

    assert "zq-" not in text()
    assert "Traceback (most recent call last)" in text() and "Authorization: ***" in text()


def test_stack_info_is_masked(logged):
    logger, text = logged
    logger.info("where am I", stack_info=True)  # api_key=zq-local: the stack shows this source line

    assert "Stack (most recent call last)" in text() and "api_key=***" in text()
    assert "zq-local" not in text()


def test_a_message_whose_arguments_do_not_fit_is_kept_masked(logged):
    logger, text = logged
    logger.error("two %s %s", "token=zq-only-one")

    assert "zq-only-one" not in text() and "token=***" in text()


def test_a_record_passing_several_handlers_is_redacted_once():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "url %s", ("https://u:zq@h",), None)
    first, second = logredact.RedactingFilter(), logredact.RedactingFilter()

    assert first.filter(record) and second.filter(record)
    assert record.getMessage() == "url https://u:***@h"


def test_httpx_does_not_log_request_urls():
    logredact.quiet_http_clients()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    previous, root.level = root.level, logging.DEBUG
    try:
        with WebhookReceiver("s") as receiver:
            httpx.post(f"{receiver.url}?token=zq-hook", content=b"{}", timeout=5)
    finally:
        root.removeHandler(handler)
        root.level = previous
    assert "zq-hook" not in stream.getvalue()
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING


def test_the_cli_logging_masks_secrets():
    code = ("import logging\n"
            "from resilience.logconfig import setup_cli_logging\n"
            "setup_cli_logging()\n"
            "logging.getLogger('resilience.up').warning('redis at %s', 'redis://:zq-cli@127.0.0.1:1/0')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert "redis://:***@127.0.0.1:1/0" in result.stderr and "zq-cli" not in result.stderr


def test_installing_the_platform_masks_what_python_prints_when_logging_is_not_configured():
    code = ("import logging\n"
            "from tasks.app import app\n"
            "logging.getLogger('resilience.dlq').warning('replay failed: password=%s', 'zq-bare')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert "password=***" in result.stderr and "zq-bare" not in result.stderr
