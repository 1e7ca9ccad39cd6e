"""The repository's bundled app (``celery -A tasks ...``), kept in the package as
``resilience.bundled``; this thin package is not part of the distribution."""

from resilience.bundled import app

__all__ = ["app"]
