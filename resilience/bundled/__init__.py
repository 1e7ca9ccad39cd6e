"""The repository's bundled app and demo: ``celery -A resilience.bundled ...``.

It is what ``resilience up`` and ``resilience demo`` run when no ``-A`` names
another app, and what the repository's thin ``tasks`` package and
``celeryconfig`` module re-export (``celery -A tasks ...``). It is an example
of the three lines a project adds (see the README): nothing else in the
``resilience`` package imports it.
"""

from resilience.bundled.app import app

__all__ = ["app"]
