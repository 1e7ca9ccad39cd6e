"""The bundled Celery application.

Every task is a :class:`resilience.ResilientTask`; ``install`` wires the
platform's features and registers its own tasks (sweeps, trims, alert rules).
Extra task modules join with the worker's ``-I/--include``.
"""

from celery import Celery

from resilience import ResilientTask, install

app = Celery("tasks", task_cls=ResilientTask, include=["resilience.bundled.demo_jobs"])
app.config_from_object("resilience.bundled.config")
install(app)
