"""Celery's own integration tests, run on a plain app and on an app with the platform.

``make celery-compat`` (``python -m compat``) downloads Celery's source
distribution at run time, runs ``t/integration/test_tasks.py`` and
``t/integration/test_canvas.py`` twice against a private redis-server, and
prints both outcomes side by side. :mod:`compat.celery_platform` is the
pytest plugin that puts the platform into Celery's test apps.
"""
