"""Webhook alerts: signed JSON posted off the job's path, each alert once per window.

Interface used by other features::

    alert(rule, subject, level=..., title=..., message=..., component=..., context={...})

``rule`` names the alert rule (e.g. "breaker_state", "stuck_jobs_recovered");
``subject`` what it is about (a breaker name, a queue): the same rule and
subject are sent at most once per ``ALERT_WINDOW_SEC`` across the whole cluster.

Delivery. :func:`alert` never blocks and never raises: it puts the alert on
a bounded in-process queue (``ALERT_QUEUE_MAX``; when full the alert
is dropped with a warning). A daemon sender thread (one per process, started
lazily and again after fork) builds and redacts the payload, decides with one
Lua call (``lua/alert_gate.lua``:
``SET NX PX`` on ``alerts:window:<rule>:<subject>``, else a counter of
suppressed repeats), logs what it sends and POSTs ``ALERT_WEBHOOK_URL`` with a timeout
(``ALERT_WEBHOOK_TIMEOUT_SEC``) and bounded retries with capped exponential
backoff (``ALERT_WEBHOOK_RETRIES``). When a window ends, whichever process
claims it first (``lua/alert_due.lua``: the sender threads that saw it, and the
beat task ``resilience.alerts.evaluate``) sends one summary carrying the count
of suppressed repeats. If Redis itself is unreachable the window is kept per
process, so a Redis outage alert still goes out.

Payload (DESIGN.md)::

    {"level": "critical|warning|info", "title": ..., "message": ..., "component": ...,
     "context": {..., "rule": ..., "subject": ...}, "timestamp": <ISO 8601 UTC>,
     "environment": RESILIENCE_ENVIRONMENT}

with header ``X-Resilience-Signature: sha256=<hex HMAC-SHA256 of the exact body
with ALERT_WEBHOOK_SECRET>`` (:func:`sign`, :func:`verify`). A summary has
``context.summary = true`` and ``context.suppressed = <repeats>``. The context
is redacted before it is queued.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from resilience.backoff import ExponentialBackoff
from resilience.keys import keys
from resilience.redact import redact_bounded, redact_text
from resilience.settings import Settings, get_settings
from resilience.store import load_script

__all__ = [
    "LEVELS", "SIGNATURE_HEADER", "alert", "build_payload", "check_webhook", "flush", "post", "send_due_summaries",
    "sign", "verify",
]

log = logging.getLogger(__name__)

LEVELS = ("critical", "warning", "info")
SIGNATURE_HEADER = "X-Resilience-Signature"
_SEP = "\x1f"
_SUMMARY_POLL_SEC = 0.5

#: What an alert body keeps at most, in bytes of JSON per field (a longer value is
#: cut with a marker), so a body, and its copy in ``alerts:last``, stays under 13 KiB.
MAX_TITLE_BYTES = 512
MAX_MESSAGE_BYTES = 4 * 1024
MAX_CONTEXT_BYTES = 8 * 1024


def sign(body: bytes, secret: str) -> str:
    """The signature header value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secret: str) -> bool:
    """Whether ``header`` is the signature of ``body`` (constant-time comparison)."""
    return bool(header) and hmac.compare_digest(sign(body, secret), header)


def build_payload(*, level: str, title: str, message: str, component: str, context: dict[str, Any] | None,
                  now: float | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """The alert's JSON body (DESIGN.md), with its context and text redacted and bounded."""
    settings = settings or get_settings()
    now = time.time() if now is None else now
    return {
        "level": level if level in LEVELS else "warning",
        "title": redact_bounded(str(title), MAX_TITLE_BYTES)[0],
        "message": redact_bounded(str(message), MAX_MESSAGE_BYTES)[0],
        "component": component,
        "context": redact_bounded(dict(context or {}), MAX_CONTEXT_BYTES)[0],
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "environment": settings.environment,
    }


# -- the sender ---------------------------------------------------------------------------

class _Sender:
    """This process's queue of alerts and the thread that delivers them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: queue.Queue | None = None
        self.thread: threading.Thread | None = None
        self.watch_until = 0.0  # poll for ended windows until then
        self.next_due_check = 0.0
        self.local_windows: dict[str, float] = {}  # fallback while Redis is away


_sender = _Sender()


def _reset_after_fork() -> None:
    global _sender
    _sender = _Sender()


os.register_at_fork(after_in_child=_reset_after_fork)


def _ensure_sender() -> queue.Queue:
    sender = _sender
    if sender.queue is not None and sender.thread is not None and sender.thread.is_alive():
        return sender.queue
    with sender.lock:
        if sender.queue is None:
            sender.queue = queue.Queue(maxsize=get_settings().alert_queue_max)
        if sender.thread is None or not sender.thread.is_alive():
            sender.thread = threading.Thread(target=_send_loop, args=(sender,), name="resilience-alert-sender",
                                             daemon=True)
            sender.thread.start()
    return sender.queue


def alert(rule: str, subject: str, *, level: str, title: str, message: str, component: str,
          context: dict[str, Any] | None = None) -> None:
    """Raise an alert: queued for the sender thread, which logs, deduplicates and posts it.

    Cheap and non-blocking (the payload is built and redacted on the sender
    thread); never raises.
    """
    try:
        settings = get_settings()
        if not settings.feature_alerting:
            _log_alert(rule, subject, level, title, message)
            return
        item = (rule, str(subject), dict(level=level, title=title, message=message, component=component,
                                         context={**(context or {}), "rule": rule, "subject": subject},
                                         now=time.time()))
        try:
            _ensure_sender().put_nowait(item)
        except queue.Full:
            log.warning("alert queue full (%d): dropped alert %s/%s", settings.alert_queue_max, rule, subject)
    except Exception as exc:  # observers never break what they observe
        log.warning("alert %s/%s not queued: %s", rule, subject, exc)


def _log_alert(rule: str, subject: str, level: str, title: str, message: str) -> None:
    log.log(logging.CRITICAL if level == "critical" else logging.WARNING, "alert [%s] %s: %s (%s/%s)",
            level, redact_text(str(title)), redact_text(str(message)), rule, subject)


def _send_loop(sender: _Sender) -> None:
    q = sender.queue
    assert q is not None
    while True:
        timeout = _SUMMARY_POLL_SEC if time.monotonic() < sender.watch_until else 5.0
        try:
            rule, subject, fields = q.get(timeout=timeout)
        except queue.Empty:
            if sender.watch_until:  # a window this process saw may have ended
                _safely(send_due_summaries)
                if time.monotonic() >= sender.watch_until:
                    sender.watch_until = 0.0
            continue
        try:
            _deliver(sender, rule, subject, build_payload(**fields))
        except Exception as exc:
            log.warning("alert %s/%s not delivered: %s", rule, subject, exc)
        finally:
            q.task_done()
        if time.monotonic() >= sender.next_due_check:  # busy: still look for ended windows now and then
            sender.next_due_check = time.monotonic() + _SUMMARY_POLL_SEC
            _safely(send_due_summaries)


#: Names of background steps whose last run failed: reported once per streak, not every poll.
_failing: set[str] = set()


def _safely(fn, *args: Any) -> Any:
    name = getattr(fn, "__name__", str(fn))
    try:
        result = fn(*args)
    except Exception as exc:
        level = logging.DEBUG if name in _failing else logging.WARNING
        _failing.add(name)
        log.log(level, "alerts: %s failed: %s", name, exc)
        return None
    if name in _failing:
        _failing.discard(name)
        log.warning("alerts: %s works again", name)
    return result


def _deliver(sender: _Sender, rule: str, subject: str, payload: dict[str, Any]) -> None:
    settings = get_settings()
    window_ms = settings.alert_window_sec * 1000
    member = f"{rule}{_SEP}{subject}"
    now = time.time()
    try:
        k = keys()
        opened = load_script("alert_gate")(
            keys=[k.alert_window(rule, subject), k.alert_windows, k.alert_suppressed, k.alert_last],
            args=[member, int(now * 1000), window_ms, json.dumps(payload)],
        )
        sender.watch_until = time.monotonic() + settings.alert_window_sec + 2 * _SUMMARY_POLL_SEC
    except Exception as exc:  # Redis away: keep the window in this process
        log.info("alert window kept locally (Redis unavailable: %s)", exc)
        until = sender.local_windows.get(member, 0.0)
        opened = now >= until
        if opened:
            sender.local_windows[member] = now + settings.alert_window_sec
    if opened:
        _log_alert(rule, subject, payload["level"], payload["title"], payload["message"])
        post(payload, settings=settings)
    else:
        log.debug("alert %s/%s suppressed: already sent in this window", rule, subject)


def send_due_summaries(now: float | None = None, *, limit: int = 100) -> int:
    """Send one summary per ended window that had suppressed repeats; return how many."""
    settings = get_settings()
    if not settings.feature_alerting:
        return 0
    now = time.time() if now is None else now
    k = keys()
    raw = load_script("alert_due")(keys=[k.alert_windows, k.alert_suppressed, k.alert_last],
                                   args=[int(now * 1000), limit])
    sent = 0
    for i in range(0, len(raw), 3):
        member, count, last_json = raw[i], int(raw[i + 1]), raw[i + 2]
        rule, _, subject = member.partition(_SEP)
        try:
            last = json.loads(last_json)
        except ValueError:
            last = {"level": "warning", "title": rule, "message": "", "component": "alerts", "context": {}}
        context = dict(last.get("context") or {})
        context.update({"rule": rule, "subject": subject, "summary": True, "suppressed": count,
                        "window_sec": settings.alert_window_sec})
        payload = build_payload(
            level=last.get("level", "warning"),
            title=f"{last.get('title', rule)} (repeated {count} more times)",
            message=f"{count} repeats of this alert were suppressed in the last {settings.alert_window_sec}s. "
                    f"Latest: {last.get('message', '')}",
            component=last.get("component", "alerts"), context=context, now=now, settings=settings)
        _log_alert(rule, subject, payload["level"], payload["title"], payload["message"])
        post(payload, settings=settings)
        sent += 1
    return sent


def post(payload: dict[str, Any], *, settings: Settings | None = None) -> bool:
    """POST one alert to ``ALERT_WEBHOOK_URL`` with retries; True when the receiver took it.

    Never raises. Without a URL the alert is only logged.
    """
    settings = settings or get_settings()
    url = settings.alert_webhook_url
    if not url:
        return False
    import httpx

    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "celery-resilience-alerts"}
    if settings.alert_webhook_secret:
        headers[SIGNATURE_HEADER] = sign(body, settings.alert_webhook_secret)
    backoff = ExponentialBackoff(base=0.5, cap=8.0, jitter=True)
    attempts = settings.alert_webhook_retries + 1
    for attempt in range(attempts):
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=settings.alert_webhook_timeout_sec)
            if response.status_code < 500 and response.status_code != 429:
                if response.status_code >= 400:
                    log.warning("alert webhook refused the alert: HTTP %d", response.status_code)
                    return False
                return True
            problem = f"HTTP {response.status_code}"
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if attempt + 1 < attempts:
            time.sleep(backoff.compute(attempt))  # the sender thread's own pace, never a job's
    log.warning("alert webhook unreachable after %d attempts (%s): alert %r not delivered",
                attempts, problem, payload.get("title"))
    return False


def flush(timeout: float = 10.0) -> bool:
    """Wait until this process's queued alerts were handled; False on timeout."""
    q = _sender.queue
    if q is None:
        return True
    deadline = time.monotonic() + timeout
    while q.unfinished_tasks:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def check_webhook(settings: Settings | None = None) -> bool:
    """Start-up check: is ``ALERT_WEBHOOK_URL``'s host reachable? Logs a warning if not; never raises."""
    settings = settings or get_settings()
    url = settings.alert_webhook_url
    if not url or not settings.feature_alerting:
        return True
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname, port), timeout=settings.alert_webhook_timeout_sec):
            pass
    except Exception as exc:
        log.warning("ALERT_WEBHOOK_URL is unreachable (%s): alerts will be retried and logged, workers keep "
                    "running", exc)
        return False
    if not settings.alert_webhook_secret:
        log.warning("ALERT_WEBHOOK_SECRET is unset: alerts are sent unsigned")
    return True


def _check_webhook_in_background(**_: Any) -> None:
    threading.Thread(target=_safely, args=(check_webhook,), name="resilience-webhook-check", daemon=True).start()


def install(app: Any, settings: Settings) -> None:
    """Report an unreachable webhook when a worker starts; schedule the periodic rules."""
    if not settings.feature_alerting:
        return
    from celery import signals

    signals.worker_ready.connect(_check_webhook_in_background, dispatch_uid="resilience.alerts.check_webhook",
                                 weak=False)
    app.conf.beat_schedule["resilience-alerts-evaluate"] = {
        "task": "resilience.alerts.evaluate",
        "schedule": float(settings.alert_evaluate_interval_sec),
        # behind a backlog, a stale evaluation is dropped rather than run late, many times over
        "options": {"expires": float(settings.alert_evaluate_interval_sec)},
    }
