"""Delayed runs (countdown, eta, retries). Placeholder: Celery's ETA messages."""

from __future__ import annotations


def wants_delay(options: dict) -> bool:
    return False


def schedule(task, args, kwargs, job_id, options, fallback):
    return fallback()
