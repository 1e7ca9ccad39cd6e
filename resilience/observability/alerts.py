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
suppressed repeats), logs what it sends and POSTs ``ALERT_WEBHOOK_URL`` (:func:`post`):
each attempt is cut off ``ALERT_WEBHOOK_TIMEOUT_SEC`` after it starts, however
slowly the receiver trickles its reply; failed attempts are retried
(``ALERT_WEBHOOK_RETRIES``, capped exponential backoff) while the whole
delivery stays within ``ALERT_WEBHOOK_DEADLINE_SEC``. Only a 2xx reply counts as
delivered; redirects are not followed, and a 3xx or 4xx reply is not retried
(408 and 429 are, like 5xx). When a window ends, whichever process
claims it first (``lua/alert_due.lua``: the sender threads that saw it, and the
beat task ``resilience.evaluate_alerts``) sends one summary carrying the count
of suppressed repeats. If Redis itself is unreachable the window is kept per
process, so a Redis outage alert still goes out.

Payload (DESIGN.md)::

    {"level": "critical|warning|info", "title": ..., "message": ..., "component": ...,
     "context": {..., "rule": ..., "subject": ...}, "timestamp": <ISO 8601 UTC>,
     "environment": RESILIENCE_ENVIRONMENT}

with, when ``ALERT_WEBHOOK_SECRET`` is set, three headers (:func:`signature_headers`)::

    X-Resilience-Signature: sha256=<hex HMAC-SHA256 of the exact body>             (DESIGN.md)
    X-Resilience-Timestamp: <unix seconds when the attempt was signed>
    X-Resilience-Signature-Timestamped: sha256=<hex HMAC-SHA256 of b"<timestamp>." + body>

The first is the contract's and stays for existing receivers (:func:`sign`,
:func:`verify`); it cannot tell a replayed alert from a fresh one. The
timestamped one can: :func:`verify_request` accepts it only while the
timestamp is within ``tolerance_sec`` (:data:`DEFAULT_TOLERANCE_SEC`, 300 s)
of the receiver's clock, either way. Each attempt is signed afresh. A summary has
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
import re
import socket
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from resilience.core.backoff import ExponentialBackoff
from resilience.core.keys import keys
from resilience.core.observe import call_guarded
from resilience.core.quarantine import OBJECT, TEXT, Batch, Shape
from resilience.core.redact import redact_bounded, redact_text
from resilience.core.settings import Settings, get_settings
from resilience.core.store import load_script
from resilience.observability import metrics

__all__ = [
    "DEFAULT_TOLERANCE_SEC", "LEVELS", "SIGNATURE_HEADER", "TIMESTAMPED_SIGNATURE_HEADER", "TIMESTAMP_HEADER", "alert",
    "build_payload", "check_webhook", "flush", "post", "send_due_summaries", "sign", "sign_timestamped",
    "signature_headers", "verify", "verify_request",
]

log = logging.getLogger(__name__)

LEVELS = ("critical", "warning", "info")
#: HMAC-SHA256 of the body alone (DESIGN.md); kept for existing receivers.
SIGNATURE_HEADER = "X-Resilience-Signature"
#: Unix seconds (an integer) when the attempt was signed.
TIMESTAMP_HEADER = "X-Resilience-Timestamp"
#: HMAC-SHA256 of ``b"<timestamp>." + body``: what :func:`verify_request` checks.
TIMESTAMPED_SIGNATURE_HEADER = "X-Resilience-Signature-Timestamped"
#: How far a timestamp may be from the receiver's clock (either way) by default.
DEFAULT_TOLERANCE_SEC = 300
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")
_SEP = "\x1f"
#: An ``alerts:last`` record (the latest suppressed alert of a window), as a summary reads it.
_LAST = Shape({"level": TEXT, "title": TEXT, "message": TEXT, "component": TEXT, "context": OBJECT})
_SUMMARY_POLL_SEC = 0.5

#: What an alert body keeps at most, in bytes of JSON per field (a longer value is
#: cut with a marker), so a body, and its copy in ``alerts:last``, stays under 13 KiB.
MAX_TITLE_BYTES = 512
MAX_MESSAGE_BYTES = 4 * 1024
MAX_CONTEXT_BYTES = 8 * 1024


def sign(body: bytes, secret: str) -> str:
    """The ``X-Resilience-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sign_timestamped(body: bytes, secret: str, timestamp: int) -> str:
    """The ``X-Resilience-Signature-Timestamped`` value: HMAC-SHA256 of ``b"<timestamp>." + body``."""
    return "sha256=" + hmac.new(secret.encode(), f"{int(timestamp)}.".encode() + body, hashlib.sha256).hexdigest()


def signature_headers(body: bytes, secret: str, *, now: float | None = None) -> dict[str, str]:
    """The three signature headers of one attempt to send ``body``, signed at ``now`` (default: the clock)."""
    timestamp = int(time.time() if now is None else now)
    return {SIGNATURE_HEADER: sign(body, secret), TIMESTAMP_HEADER: str(timestamp),
            TIMESTAMPED_SIGNATURE_HEADER: sign_timestamped(body, secret, timestamp)}


def _same(expected: str, given: str) -> bool:
    """Constant-time equality; ``given`` may hold any text (it came from the network)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def verify(body: bytes, header: str | None, secret: str) -> bool:
    """Whether ``header`` is the ``X-Resilience-Signature`` of ``body`` (constant-time comparison).

    It proves who sent the body, not when: prefer :func:`verify_request`, which
    also refuses a replayed alert.
    """
    return bool(header) and _same(sign(body, secret), header or "")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)  # case-insensitive already in http.server, httpx, requests, Werkzeug, Starlette
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if str(k).lower() == wanted), None)
    return value


def verify_request(body: bytes, headers: Mapping[str, str], secret: str, *,
                   tolerance_sec: float = DEFAULT_TOLERANCE_SEC, now: float | None = None) -> bool:
    """Whether a received alert is authentic and fresh: the receiver's check.

    ``body`` is the raw request body (before any JSON parsing), ``headers`` the
    request's headers (any mapping; names are matched without regard to case).
    True when ``X-Resilience-Timestamp`` is an integer within ``tolerance_sec``
    of ``now`` (default: the clock), either way, and
    ``X-Resilience-Signature-Timestamped`` is the HMAC-SHA256 of
    ``b"<timestamp>." + body`` with ``secret`` (constant-time comparison).
    A stale or future timestamp (a replay, or a clock far off) is refused. Within
    the tolerance a captured request still verifies: a receiver that must act
    once per alert also remembers the signatures it saw for ``tolerance_sec``.
    """
    if not tolerance_sec >= 0:
        raise ValueError(f"tolerance_sec must be a number of seconds >= 0, not {tolerance_sec!r}")
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, TIMESTAMPED_SIGNATURE_HEADER)
    if not timestamp or not signature or not _TIMESTAMP_RE.fullmatch(timestamp.strip()):
        return False
    signed_at = int(timestamp.strip())
    now = time.time() if now is None else now
    if abs(now - signed_at) > tolerance_sec:
        return False
    return _same(sign_timestamped(body, secret, signed_at), signature.strip())


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
                call_guarded("alerts: send_due_summaries", send_due_summaries)
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
            call_guarded("alerts: send_due_summaries", send_due_summaries)


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
        if post(payload, settings=settings):
            metrics.alerts_sent.labels(rule=rule, level=payload["level"]).inc()
    else:
        log.debug("alert %s/%s suppressed: already sent in this window", rule, subject)
        metrics.alerts_suppressed.labels(rule=rule).inc()


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
    unreadable = Batch("alert summaries")
    for i in range(0, len(raw), 3):
        member, count, last_json = raw[i], int(raw[i + 1]), raw[i + 2]
        rule, _, subject = member.partition(_SEP)
        # alert_due.lua took the record out already: a bad one is only recorded in the quarantine
        last = unreadable.value(last_json, _LAST, source=k.alert_last, field=member) or {
            "level": "warning", "title": rule, "message": "", "component": "alerts", "context": {}}
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
        if post(payload, settings=settings):
            metrics.alerts_sent.labels(rule=rule, level=payload["level"]).inc()
        sent += 1
    unreadable.flush()
    return sent


#: Replies worth another attempt; any other non-2xx reply (a redirect, a 4xx) will not change by retrying.
_RETRY_STATUSES = frozenset({408, 429})


def post(payload: dict[str, Any], *, settings: Settings | None = None) -> bool:
    """POST one alert to ``ALERT_WEBHOOK_URL``, retrying; True when the receiver took it (a 2xx reply).

    Bounded: each attempt ends ``ALERT_WEBHOOK_TIMEOUT_SEC`` after it started
    (:func:`_post_once`) and the whole delivery, pauses included, within
    ``ALERT_WEBHOOK_DEADLINE_SEC``. Redirects are not followed: a 3xx reply is a
    failure, as is a 4xx; neither is retried (but 408 and 429 are, like 5xx
    replies and transport errors). Never raises. Without a URL the alert is
    only logged.
    """
    settings = settings or get_settings()
    url = settings.alert_webhook_url
    if not url:
        return False
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    deadline = time.monotonic() + settings.alert_webhook_deadline_sec
    backoff = ExponentialBackoff(base=0.5, cap=8.0, jitter=True)
    attempts = settings.alert_webhook_retries + 1
    made, problem = 0, "no attempt fitted in ALERT_WEBHOOK_DEADLINE_SEC"
    for attempt in range(attempts):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        headers = {"Content-Type": "application/json", "User-Agent": "celery-resilience-alerts"}
        if settings.alert_webhook_secret:  # signed per attempt: a retry carries a fresh timestamp
            headers.update(signature_headers(body, settings.alert_webhook_secret))
        made += 1
        try:
            status = _post_once(url, body, headers, min(settings.alert_webhook_timeout_sec, remaining))
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status < 300:
                return True
            problem = f"HTTP {status}"
            if status < 500 and status not in _RETRY_STATUSES:
                log.warning("alert webhook refused the alert: HTTP %d%s", status,
                            " (a redirect: not followed, point ALERT_WEBHOOK_URL at the final address)"
                            if 300 <= status < 400 else "")
                return False
        if attempt + 1 < attempts:
            pause = min(backoff.compute(attempt), deadline - time.monotonic())
            if pause > 0:
                time.sleep(pause)  # the sender thread's own pace, never a job's
    log.warning("alert webhook unreachable after %d attempts in %.0fs (%s): alert %r not delivered",
                made, settings.alert_webhook_deadline_sec - max(0.0, deadline - time.monotonic()), problem,
                payload.get("title"))
    return False


class _Cutoff:
    """Ends one HTTP exchange at a deadline, whatever phase it is in.

    httpx's timeouts bound each read, so a receiver sending a byte a second
    keeps a request alive for ever. This timer shuts the connection's socket
    down when the time is up (learned through httpcore's ``trace`` extension as
    the connection is made); the blocked read then fails at once.
    """

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.name = "resilience-alert-cutoff"

    def start(self) -> _Cutoff:
        self._timer.start()
        return self

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if not event.endswith(("connect_tcp.complete", "connect_unix_socket.complete", "start_tls.complete")):
            return
        sock = info["return_value"].get_extra_info("socket")
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:  # connected just as the time ran out
            _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown: SSLSocket.shutdown would drop its SSL object under the reading thread
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _post_once(url: str, body: bytes, headers: dict[str, str], seconds: float) -> int:
    """One POST; the reply's status code, its body unread. Ends within ``seconds`` or raises ``TimeoutError``."""
    import httpx

    cutoff = _Cutoff(seconds).start()
    try:
        with httpx.Client(timeout=seconds, follow_redirects=False) as client, client.stream(
                "POST", url, content=body, headers=headers, extensions={"trace": cutoff.trace}) as response:
            return response.status_code
    except Exception:
        if cutoff.fired:
            raise TimeoutError(f"no complete reply within {seconds:.1f}s") from None
        raise
    finally:
        cutoff.cancel()


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


def check_webhook_in_background(**_: Any) -> None:
    threading.Thread(target=call_guarded, args=("alerts: check_webhook", check_webhook),
                     name="resilience-webhook-check", daemon=True).start()
