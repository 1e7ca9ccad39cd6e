"""The bundled app's Celery settings (see :mod:`resilience.bundled.config`).

A thin alias kept in the repository; it is not part of the distribution.
"""

from resilience.bundled.config import *  # noqa: F403
