"""Token-checked locks: ``SET NX PX`` to take, compare-and-delete to release.

A lock expires on its own (so a holder that dies never blocks the next run)
and only its holder can release or extend it: the release compares the token
in Lua (``lua/lock_release.lua``), so a holder whose lock already expired and
was taken by someone else cannot delete the new holder's lock (the plain-DEL
mistake). Give a lock a time to live shorter than the interval of the job it
guards, so it is always free again before the next run.
"""

from __future__ import annotations

import uuid

import redis

from resilience.core.keys import keys
from resilience.core.store import get_redis, load_script

__all__ = ["Lock"]


class Lock:
    """A named lock held for at most ``ttl_ms`` milliseconds."""

    def __init__(self, name: str, ttl_ms: int, *, client: redis.Redis | None = None) -> None:
        if ttl_ms <= 0:
            raise ValueError("a lock needs a positive time to live")
        self.name = name
        self.key = keys().lock(name)
        self.ttl_ms = int(ttl_ms)
        self.token = uuid.uuid4().hex
        self._client = client
        self.held = False

    @property
    def client(self) -> redis.Redis:
        return self._client or get_redis()

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
        self.held = bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))
        return self.held

    def release(self) -> bool:
        """Release the lock if this holder still has it."""
        released = bool(load_script("lock_release", self.client)(keys=[self.key], args=[self.token]))
        self.held = False
        return released

    def extend(self, ttl_ms: int | None = None) -> bool:
        """Restart the lock's time to live if this holder still has it."""
        ttl = self.ttl_ms if ttl_ms is None else int(ttl_ms)
        self.held = bool(load_script("lock_extend", self.client)(keys=[self.key], args=[self.token, ttl]))
        return self.held

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.release()
