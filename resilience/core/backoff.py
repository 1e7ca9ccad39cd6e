"""Retry delays: capped exponential backoff with equal jitter.

For attempt ``n`` (0 for the first retry), base ``b`` and cap ``c``::

    ceiling = min(c, b * 2**n)                     # 30, 60, 120, 240 s ... capped
    delay   = ceiling / 2 + uniform(0, ceiling / 2)   # "equal jitter"

Equal jitter (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015)
spreads a thundering herd over half of each step while never retrying at
once: the delay is always at least ``min(c, b) / 2`` and never above the cap.
Celery's own "full jitter" draws from ``[0, ceiling]`` and so yields retries
after 0 s. With jitter off the delay is ``ceiling`` exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class ExponentialBackoff:
    """A backoff strategy: ``compute(attempt)`` gives the delay in seconds."""

    base: float
    cap: float
    jitter: bool = True
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.base <= 0:
            raise ValueError("backoff base must be positive")
        if self.cap < self.base:
            raise ValueError("backoff cap must not be below the base")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay of ``attempt``: ``min(cap, base * 2**attempt)``."""
        attempt = max(0, int(attempt))
        if attempt >= 64:  # 2**64 * base is beyond any cap
            return self.cap
        return min(self.cap, self.base * (2 ** attempt))

    def compute(self, attempt: int) -> float:
        ceiling = self.ceiling(attempt)
        if not self.jitter:
            return ceiling
        half = ceiling / 2
        return half + self.rng.uniform(0, half)
