"""``from tasks.app import app``: the bundled app (see :mod:`resilience.bundled`)."""

from resilience.bundled import app

__all__ = ["app"]
