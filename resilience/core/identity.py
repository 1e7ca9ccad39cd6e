"""Who is running a job: the worker id used by heartbeats and execution records.

A worker id is ``<hostname>|<boot>``: the Celery node name plus a token made
when this worker process started (inherited by its forked pool processes). A
worker restarted under the same node name gets a new id, so its predecessor's
runs are recognisably dead.
"""

from __future__ import annotations

import socket
import uuid

BOOT_ID = uuid.uuid4().hex[:12]


def worker_id(hostname: str | None) -> str:
    """The id of the worker process tree named ``hostname`` in this process."""
    return f"{hostname or socket.gethostname()}|{BOOT_ID}"


def hostname_of(worker: str) -> str:
    """The Celery node name part of a worker id."""
    return worker.split("|", 1)[0]
