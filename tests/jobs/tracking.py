"""Jobs for the error-tracking and alert tests (control flow, expected errors, secrets)."""

from __future__ import annotations

from celery.exceptions import Ignore, Reject

from resilience import PermanentError
from tasks.app import app


@app.task(bind=True, name="tests.tracking.charge_card")
def charge_card(self, order_id: str, api_key: str = "", password: str = "") -> None:
    """Fails for good, with secrets in its arguments and in its message."""
    raise PermanentError(f"gateway declined order {order_id} (api_key={api_key})")


@app.task(bind=True, name="tests.tracking.expected", throws=(KeyError,))
def expected(self) -> None:
    """Fails with an error the task declares expected (Celery's ``throws``)."""
    raise KeyError("no such customer")


@app.task(bind=True, name="tests.tracking.ignored")
def ignored(self) -> None:
    raise Ignore()


@app.task(bind=True, name="tests.tracking.rejected")
def rejected(self) -> None:
    raise Reject("not for us", requeue=False)
