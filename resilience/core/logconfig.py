"""Logging for the CLI's own process (workers and beat use Celery's; both are redacted)."""

import logging

from resilience.core.logredact import install_filter, quiet_http_clients


def setup_cli_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_filter(logging.getLogger())
    quiet_http_clients()
