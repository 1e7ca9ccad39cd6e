"""The backoff policy: capped exponential delays with equal jitter (issue 3)."""

from __future__ import annotations

import random
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from resilience.backoff import ExponentialBackoff

bases = st.floats(min_value=0.001, max_value=1000, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(attempt=st.integers(min_value=0, max_value=200), base=bases, factor=st.floats(min_value=1, max_value=1e6),
       seed=st.integers(min_value=0, max_value=2**32))
def test_every_delay_is_positive_and_within_the_cap(attempt, base, factor, seed):
    cap = base * factor
    delay = ExponentialBackoff(base=base, cap=cap, rng=random.Random(seed)).compute(attempt)
    assert delay > 0
    assert delay <= cap
    assert delay >= min(cap, base) / 2  # never an immediate retry


@settings(max_examples=60, deadline=None)
@given(base=bases, doublings=st.integers(min_value=0, max_value=12), seed=st.integers(min_value=0, max_value=2**32))
def test_the_mean_delay_grows_with_the_attempt_until_the_cap(base, doublings, seed):
    cap = base * 2 ** doublings
    backoff = ExponentialBackoff(base=base, cap=cap, rng=random.Random(seed))
    means = [statistics.fmean(backoff.compute(attempt) for _ in range(400)) for attempt in range(doublings + 3)]
    for attempt in range(doublings):  # below the cap: strictly growing
        assert means[attempt + 1] > means[attempt]
    for attempt in range(doublings, doublings + 2):  # at the cap: flat (equal jitter's mean is 3/4 of the cap)
        assert abs(means[attempt + 1] - means[attempt]) <= 0.1 * cap


def test_without_jitter_the_delay_is_the_documented_ceiling():
    backoff = ExponentialBackoff(base=30, cap=200, jitter=False)
    assert [backoff.compute(n) for n in range(5)] == [30, 60, 120, 200, 200]
