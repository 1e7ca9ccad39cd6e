"""The demonstration jobs of the bundled app (see :mod:`resilience.bundled.demo_jobs`)."""

from resilience.bundled.demo_jobs import *  # noqa: F403 - a thin alias for the repository
from resilience.bundled.demo_jobs import DEMO_API, DEMO_COUNTS, call_api, charge, flaky, ok, permanent, stuck

__all__ = ["DEMO_API", "DEMO_COUNTS", "call_api", "charge", "flaky", "ok", "permanent", "stuck"]
