"""The platform's Celery application package (``celery -A tasks ...``)."""

from tasks.app import app

__all__ = ["app"]
