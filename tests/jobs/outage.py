"""Trivial jobs for the outage tests: each run appends its job id to a local file.

The record is kept outside Redis on purpose: a test that kills Redis must
count runs somewhere the outage cannot lose them. Subprocess workers load this
module with ``-I tests.jobs.outage``.
"""

from __future__ import annotations

import os

from tasks.app import app


def append_line(path: str, line: str) -> None:
    """One ``write`` on an O_APPEND file: lines from concurrent processes never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@app.task(bind=True, name="tests.outage.mark")
def mark(self, path: str, n: int = 0) -> int:
    append_line(path, self.request.id)
    return n


def marks(path: str) -> dict[str, int]:
    """Job id -> how many times its body ran."""
    counts: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    counts[line] = counts.get(line, 0) + 1
    except FileNotFoundError:
        pass
    return counts


@app.task(bind=True, name="tests.outage.gated_mark")
def gated_mark(self, path: str, started_path: str, gate_path: str) -> None:
    """Say it started, hold until ``gate_path`` exists (a test opens the gate), then mark."""
    from resilience.testing import wait_for

    append_line(started_path, self.request.id)
    wait_for(lambda: os.path.exists(gate_path), timeout=120, message=f"the gate {gate_path}")
    append_line(path, self.request.id)
