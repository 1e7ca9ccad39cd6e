"""The Celery application: ``celery -A tasks worker|beat|flower``.

Every task is a :class:`resilience.ResilientTask`; ``install`` wires the
platform's features. Extra task modules join with the worker's ``-I/--include``.
"""

from celery import Celery

from resilience import ResilientTask, install

app = Celery("tasks", task_cls=ResilientTask, include=["tasks.platform", "tasks.demo"])
app.config_from_object("celeryconfig")
install(app)
