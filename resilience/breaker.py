"""Circuit breakers. Placeholder: calls pass straight through."""

from __future__ import annotations


def gate_task(task) -> None:
    return None
