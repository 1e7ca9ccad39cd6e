# orders/tasks.py
import time

from resilience import PermanentError

from orders.celery import app


@app.task
def charge(order_id: str, amount_cents: int) -> str:
    if amount_cents <= 0:
        raise PermanentError("nothing to charge")
    return f"charged {order_id}"


@app.task(retry_for=(ConnectionError,), max_retries=2, retry_backoff=0.2, retry_jitter=False)
def notify(order_id: str) -> None:
    raise ConnectionError("mail server unreachable")


@app.task
def export(order_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return f"exported {order_id}"
