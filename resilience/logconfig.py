"""Logging for the CLI's own process (workers use Celery's logging)."""

import logging


def setup_cli_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
