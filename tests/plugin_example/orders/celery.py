# orders/celery.py
from celery import Celery

from resilience import ResilientTask, install

app = Celery("orders", task_cls=ResilientTask, include=["orders.tasks"])
app.conf.update(
    broker_url="redis://localhost:6379/0",  # the tests use a private Redis instead
    result_backend="redis://localhost:6379/0",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
)
install(app)
