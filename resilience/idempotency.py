"""Idempotency keys: a duplicate submission returns the original job.

Claiming ``idempotency:<key>`` and recording the job id is one ``SET NX EX``;
if the publish fails the claim is released so the caller can try again.
"""

from __future__ import annotations

import hashlib

from resilience.keys import keys
from resilience.settings import get_settings
from resilience.store import get_redis
from resilience.submission import canonical_json


def derived_key(task_name: str, args, kwargs) -> str:
    """A key from the task name and the canonical JSON of its arguments."""
    digest = hashlib.sha256(canonical_json([task_name, list(args or ()), dict(kwargs or {})]).encode())
    return f"{task_name}:{digest.hexdigest()[:32]}"


def key_for(task, args, kwargs, explicit: str | None) -> str | None:
    if explicit is not None:
        return str(explicit)
    if getattr(task, "idempotent", False):
        return derived_key(task.name, args, kwargs)
    return None


def submit_once(task, key: str, job_id: str, send):
    client = get_redis()
    redis_key = keys().idempotency(key)
    ttl = get_settings().idempotency_ttl_sec
    if not client.set(redis_key, job_id, nx=True, ex=ttl):
        existing = client.get(redis_key)
        if existing:
            return task.AsyncResult(existing)
    try:
        return send(job_id, key)
    except BaseException:
        client.delete(redis_key)
        raise


def release(key: str, job_id: str, pipe=None) -> None:
    """Release ``key`` if ``job_id`` still owns it (so the request can be submitted again).

    Placeholder (not yet compare-and-delete).
    """
    client = pipe if pipe is not None else get_redis()
    client.delete(keys().idempotency(key))
