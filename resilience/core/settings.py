"""Typed, validated settings, read from the environment in one place.

Every process of the platform (workers, beat, producers, the CLI) reads its
configuration through :func:`get_settings`. A malformed value stops start-up
with :class:`~resilience.core.errors.SettingsError` naming the variable, so a typo
fails at deploy time rather than at 3 a.m. Units are part of the names
(``_sec``, ``_days``). ``.env.example`` documents every variable here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from resilience.core.errors import HIDDEN, SettingsError
from resilience.core.runtime import bound_app

__all__ = ["FEATURES", "SECRET_SETTINGS", "Settings", "conf_keys", "get_settings", "load_settings", "masked_url",
           "reset_settings", "settings_for", "shown_value"]

#: Feature name -> environment flag. Each defaults to on; ``false`` turns the
#: feature off and the platform behaves as plain Celery in that respect.
FEATURES: dict[str, str] = {
    "enhanced_redis": "FEATURE_ENHANCED_REDIS",
    "smart_retry": "FEATURE_SMART_RETRY",
    "dead_letter": "FEATURE_DEAD_LETTER",
    "stuck_jobs": "FEATURE_STUCK_JOBS",
    "idempotency": "FEATURE_IDEMPOTENCY",
    "circuit_breakers": "FEATURE_CIRCUIT_BREAKERS",
    "error_tracking": "FEATURE_ERROR_TRACKING",
    "alerting": "FEATURE_ALERTING",
    "health": "FEATURE_HEALTH",
}

#: Settings whose values never appear in a message or a log line, whatever they hold
#: (``ALERT_WEBHOOK_URL`` may carry a token in its path or query).
SECRET_SETTINGS = frozenset({"ALERT_WEBHOOK_URL", "ALERT_WEBHOOK_SECRET", "SENTRY_DSN", "FLOWER_BASIC_AUTH"})
#: Any other setting whose name says it holds a secret is hidden too.
_SECRET_NAME_RE = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|DSN|AUTH|CREDENTIAL", re.IGNORECASE)
#: Query parameters of a URL whose values are masked.
_SECRET_PARAM_RE = re.compile(r"SECRET|PASSWORD|PASSWD|PASS|PWD|TOKEN|KEY|AUTH|SIG|CREDENTIAL", re.IGNORECASE)
MASK = "***"


def masked_url(url: str) -> str:
    """``url`` safe to show: its password and secret query parameters replaced by ``***``.

    ``redis://user:pw@host:6379/0`` is shown as ``redis://user:***@host:6379/0``;
    userinfo without a password (``redis://token@host``) is masked whole, since a
    token often sits there. Plain string work, no URL parser: a password holding
    ``/``, ``?`` or ``#`` (unencoded) is masked too, up to the last ``@``.
    """
    if ";" in url and url.lower().startswith("sentinel://"):  # kombu's list of sentinels: mask each
        return ";".join(masked_url(part) for part in url.split(";"))
    scheme, sep, rest = url.partition("://")
    if not sep:  # no URL (a missing scheme, say), but maybe user:password@host
        return MASK + "@" + url.rpartition("@")[2] if "@" in url else url
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        plain_user = colon and user and not any(c in user for c in "/?#")
        rest = (f"{user}:{MASK}" if plain_user else MASK) + "@" + rest
    base, question, query = rest.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        rest = base + "?" + "&".join(_masked_param(param) for param in query.split("&")) + hash_ + fragment
    return f"{scheme}://{rest}"


def _masked_param(param: str) -> str:
    name, eq, _value = param.partition("=")
    return f"{name}={MASK}" if eq and _SECRET_PARAM_RE.search(name) else param


def shown_value(name: str, raw: Any) -> str:
    """How the value of setting ``name`` may appear in a message or a log line.

    Secret settings are :data:`HIDDEN`: :data:`SECRET_SETTINGS` in any case and
    with any prefix (``alert_webhook_url`` from the app's configuration,
    ``RESILIENCE_ALERT_WEBHOOK_URL``), and any name saying SECRET, PASSWORD,
    TOKEN, DSN, AUTH or CREDENTIAL. Any other value that holds a URL or an
    ``@`` is shown through :func:`masked_url`.
    """
    upper = name.upper()
    if any(upper.endswith(secret) for secret in SECRET_SETTINGS) or _SECRET_NAME_RE.search(name):
        return HIDDEN
    text = str(raw)
    if "://" in text or "@" in text:
        return masked_url(text)
    return text


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:{}-]*$")


SettingsError.show = staticmethod(shown_value)  # errors cannot import this module: it is handed over


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(name, raw, "expected true or false")


def _number(kind: type, *, minimum: float | None = 0, allow_zero: bool = True):
    def parse(name: str, raw: str):
        try:
            value = kind(raw.strip())
        except ValueError:
            raise SettingsError(name, raw, f"expected {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):  # nan, inf, -inf, 1e999: float() takes them all
            raise SettingsError(name, raw, "expected a finite number")
        if minimum is not None and value < minimum:
            raise SettingsError(name, raw, f"must be at least {minimum}")
        if not allow_zero and value == 0:
            raise SettingsError(name, raw, "must be greater than zero")
        return value

    return parse


_positive_int = _number(int, minimum=0, allow_zero=False)
_non_negative_int = _number(int, minimum=0)
_positive_float = _number(float, minimum=0, allow_zero=False)
_non_negative_float = _number(float, minimum=0)


def _optional_str(name: str, raw: str) -> str | None:
    value = raw.strip()
    return value or None


def _plain_str(name: str, raw: str) -> str:
    return raw.strip()


def _redis_url(name: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if value.lower().startswith("sentinel://"):
        _sentinel_urls(name, raw, value)
        return value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsed on access: a non-numeric or out-of-range port raises here
    except ValueError:
        raise SettingsError(name, raw, "not a valid URL (check its host and port)") from None
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise SettingsError(name, raw, "expected a redis://, rediss://, unix:// or sentinel:// URL")
    if parts.scheme != "unix" and not parts.hostname:
        raise SettingsError(name, raw, "the URL has no host")
    return value


def _sentinel_urls(name: str, raw: str, value: str) -> None:
    """Check kombu's Sentinel form: ``sentinel://[:password@]host:port[/db]``, several joined by ``;``."""
    for part in value.split(";"):
        part = part.strip()
        try:
            parts = urlsplit(part)
            parts.port  # noqa: B018 - parsed on access
        except ValueError:
            raise SettingsError(name, raw, "not a valid sentinel:// URL (check each host and port)") from None
        if parts.scheme.lower() != "sentinel":
            raise SettingsError(name, raw, "every address of a Sentinel URL must be sentinel://host:port, "
                                           "joined by ';'")
        if not parts.hostname:
            raise SettingsError(name, raw, "a sentinel:// address has no host")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise SettingsError(name, raw, "the database of a sentinel:// URL must be a number")


def _master_name(name: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if any(c.isspace() for c in value):
        raise SettingsError(name, raw, "a Sentinel master name has no spaces")
    return value


def _http_url(name: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsed on access
    except ValueError:
        raise SettingsError(name, raw, "not a valid URL (check its host and port)") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise SettingsError(name, raw, "expected an http:// or https:// URL")
    return value


def _key_prefix(name: str, raw: str) -> str:
    value = raw.strip()
    if not _PREFIX_RE.match(value):
        raise SettingsError(name, raw, "use letters, digits and _ . : - { } only")
    return value


def _basic_auth(name: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    for pair in value.split(","):
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise SettingsError(name, raw, "expected user:password (comma-separated for several)")
    return value


def _port(name: str, raw: str) -> int:
    value = _non_negative_int(name, raw)
    if value > 65535:
        raise SettingsError(name, raw, "must be a TCP port (0-65535)")
    return value


def _choice(*choices: str):
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise SettingsError(name, raw, f"expected one of {', '.join(choices)}")
        return value

    return parse


def _setting(env: str, default: Any, parse: Callable[[str, str], Any], doc: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """The platform's configuration. Build it with :func:`load_settings`."""

    # -- Redis -------------------------------------------------------------
    redis_url: str | None = _setting("REDIS_URL", None, _redis_url,
        "Redis for broker, results and platform state; unset starts an embedded redis-server")
    redis_sentinel_master: str | None = _setting("REDIS_SENTINEL_MASTER", None, _master_name,
        "Name of the primary the sentinels monitor; required when REDIS_URL is sentinel://h1:26379;sentinel://h2:26379")
    redis_sentinel_password: str | None = _setting("REDIS_SENTINEL_PASSWORD", None, _optional_str,
        "Password of the sentinels themselves (the primary's password goes in REDIS_URL: sentinel://:pw@h1:26379;...)")
    redis_min_replicas_ack: int = _setting("REDIS_MIN_REPLICAS_ACK", 0, _non_negative_int,
        "Replicas that must confirm (WAIT) a publish, a job's start and its outcome before they count as done; "
        "0: off")
    redis_replica_ack_timeout_ms: int = _setting("REDIS_REPLICA_ACK_TIMEOUT_MS", 500, _positive_int,
        "Longest wait for the replicas' confirmation; a publish not confirmed in time stays in the spool")
    data_dir: str = _setting("RESILIENCE_DATA_DIR", ".resilience", _plain_str,
        "Local state: embedded Redis data (AOF), its address, the publish spool, beat schedule")
    key_prefix: str = _setting("RESILIENCE_KEY_PREFIX", "", _key_prefix,
        "Prefix for the platform's own Redis keys (not kombu's queue keys)")
    redis_binary: str | None = _setting("RESILIENCE_REDIS_BINARY", None, _optional_str,
        "Path of the redis-server binary for embedded mode; default: PATH, then the bundled one")
    redis_socket_timeout_sec: float = _setting("REDIS_SOCKET_TIMEOUT_SEC", 5.0, _positive_float,
        "Read/write timeout on every Redis connection, so a frozen Redis never blocks forever")
    redis_connect_timeout_sec: float = _setting("REDIS_CONNECT_TIMEOUT_SEC", 3.0, _positive_float,
        "Connect timeout on every Redis connection")
    redis_health_check_interval_sec: int = _setting("REDIS_HEALTH_CHECK_INTERVAL_SEC", 10, _non_negative_int,
        "Idle connections are PINGed before use after this many seconds")
    broker_visibility_timeout_sec: int = _setting("BROKER_VISIBILITY_TIMEOUT_SEC", 43200, _positive_int,
        "kombu's age-based redelivery, kept far above any job's run time (last safety net only)")
    result_expires_sec: int = _setting("RESULT_EXPIRES_SEC", 86400, _positive_int,
        "How long job results stay in the result backend")
    publish_timeout_sec: float = _setting("PUBLISH_TIMEOUT_SEC", 2.0, _positive_float,
        "Longest a .delay()/.apply_async() may block on an unreachable or frozen Redis")
    publish_outage_mode: str = _setting("PUBLISH_OUTAGE_MODE", "spool", _choice("spool", "raise"),
        "While Redis is unreachable: spool jobs to local disk (spool) or raise BrokerUnavailable (raise)")
    max_payload_bytes: int = _setting("MAX_PAYLOAD_BYTES", 1048576, _positive_int,
        "Largest encoded arguments a job may have; larger submissions raise PayloadTooLarge")
    spool_max_jobs: int = _setting("SPOOL_MAX_JOBS", 100000, _positive_int,
        "Most jobs the local publish spool holds; beyond it submission raises SpoolFull")
    spool_check_interval_sec: float = _setting("SPOOL_CHECK_INTERVAL_SEC", 2.0, _positive_float,
        "How often workers and beat look for jobs that any process left in the data dir's spool and publish them")

    platform_task_queue: str = _setting("PLATFORM_TASK_QUEUE", "", _plain_str,
        "Queue of the platform's own tasks (sweep, trims, alert rules, beat pulse); empty: the app's default "
        "queue. A worker must consume it (-Q)")

    # -- Redis outages (reconnects) ----------------------------------------------
    redis_reconnect_base_sec: float = _setting("REDIS_RECONNECT_BASE_SEC", 0.1, _positive_float,
        "First delay before reconnecting to Redis; doubles per attempt (equal jitter)")
    redis_reconnect_max_sec: float = _setting("REDIS_RECONNECT_MAX_SEC", 1.0, _positive_float,
        "Cap on the delay between reconnect attempts, so work resumes within seconds of Redis returning")

    # -- Stuck jobs ----------------------------------------------------------
    worker_heartbeat_timeout_sec: int = _setting("WORKER_HEARTBEAT_TIMEOUT_SEC", 120, _positive_int,
        "A worker whose heartbeat is older than this is dead and its jobs are requeued")
    worker_heartbeat_interval_sec: float = _setting("WORKER_HEARTBEAT_INTERVAL_SEC", 5.0, _positive_float,
        "How often each worker records its heartbeat")
    job_progress_timeout_sec: int = _setting("JOB_PROGRESS_TIMEOUT_SEC", 300, _positive_int,
        "A job with no progress for this long is stopped and retried (per-task progress_timeout overrides)")
    stuck_sweep_interval_sec: int = _setting("STUCK_SWEEP_INTERVAL_SEC", 30, _positive_int,
        "How often beat runs the stuck-job sweep")

    # -- Retries -------------------------------------------------------------
    retry_backoff_base_sec: float = _setting("RETRY_BACKOFF_BASE_SEC", 30.0, _positive_float,
        "First retry delay; doubles per attempt (30, 60, 120, 240 s ...)")
    retry_backoff_max_sec: float = _setting("RETRY_BACKOFF_MAX_SEC", 3600.0, _positive_float,
        "Cap on any retry delay")
    retry_max: int = _setting("RETRY_MAX", 5, _non_negative_int,
        "Retries after the first run before a job is dead-lettered (per-task max_retries overrides)")
    retry_jitter: bool = _setting("RETRY_JITTER", True, _parse_bool,
        "Spread retry delays (equal jitter: between half and all of the backoff)")
    poison_max_deliveries: int = _setting("POISON_MAX_DELIVERIES", 3, _positive_int,
        "Deliveries that kill their worker before a job is dead-lettered as poison")

    # -- Delayed runs and dead-letter upkeep (retry-dlq) ------------------------------
    scheduler_poll_interval_sec: float = _setting("SCHEDULER_POLL_INTERVAL_SEC", 0.5, _positive_float,
        "How often each worker moves due delayed runs (jobs:scheduled) to their queues")
    scheduler_batch_size: int = _setting("SCHEDULER_BATCH_SIZE", 200, _positive_int,
        "Most due delayed runs one promotion step moves")
    scheduler_beat_interval_sec: float = _setting("SCHEDULER_BEAT_INTERVAL_SEC", 10.0, _positive_float,
        "How often beat promotes due delayed runs too (backstop when no worker is polling)")
    dead_letter_trim_interval_sec: float = _setting("DEAD_LETTER_TRIM_INTERVAL_SEC", 3600.0, _positive_float,
        "How often beat trims jobs:dead_letter to DEAD_LETTER_TTL_DAYS and DEAD_LETTER_MAX_ENTRIES")

    # -- Dead letters ----------------------------------------------------------
    dead_letter_ttl_days: float = _setting("DEAD_LETTER_TTL_DAYS", 30.0, _positive_float,
        "Each dead-letter entry is trimmed after this many days")
    dead_letter_max_entries: int = _setting("DEAD_LETTER_MAX_ENTRIES", 100000, _positive_int,
        "The dead-letter queue keeps at most this many newest entries")

    # -- Idempotency -----------------------------------------------------------
    idempotency_ttl_sec: int = _setting("IDEMPOTENCY_TTL_SEC", 86400, _positive_int,
        "How long an idempotency key and a job's execution record are kept")
    idempotency_busy_defer_sec: float = _setting("IDEMPOTENCY_BUSY_DEFER_SEC", 30.0, _positive_float,
        "A delivery of a job that is running on a live worker is re-published this many seconds later "
        "(and then acknowledged, run, or deferred again) instead of being dropped")

    # -- Errors, breakers, alerts ------------------------------------------------
    error_retention_days: float = _setting("ERROR_RETENTION_DAYS", 7.0, _positive_float,
        "errors:timeline keeps this many days")
    error_timeline_max_entries: int = _setting("ERROR_TIMELINE_MAX_ENTRIES", 50000, _positive_int,
        "errors:timeline keeps at most this many newest records")
    breaker_fail_max: int = _setting("BREAKER_FAIL_MAX", 5, _positive_int,
        "Consecutive failures that open a circuit breaker")
    breaker_reset_timeout_sec: float = _setting("BREAKER_RESET_TIMEOUT_SEC", 60.0, _positive_float,
        "How long a breaker stays open before it admits trial calls")
    breaker_half_open_max_calls: int = _setting("BREAKER_HALF_OPEN_MAX_CALLS", 1, _positive_int,
        "Trial calls admitted cluster-wide while a breaker is half-open")
    breaker_park_jitter_sec: float = _setting("BREAKER_PARK_JITTER_SEC", 5.0, _positive_float,
        "A job parked by an open breaker runs again when it is due to half-open plus up to this jitter")
    http_connect_timeout_sec: float = _setting("HTTP_CONNECT_TIMEOUT_SEC", 5.0, _positive_float,
        "Connect timeout of the breaker-guarded HTTP client (resilience.breakers.httpclient)")
    http_read_timeout_sec: float = _setting("HTTP_READ_TIMEOUT_SEC", 30.0, _positive_float,
        "Read/write timeout of the breaker-guarded HTTP client (resilience.breakers.httpclient)")
    alert_webhook_url: str | None = _setting("ALERT_WEBHOOK_URL", None, _http_url,
        "Webhook that receives JSON alerts (unset: alerts are only logged)")
    alert_webhook_secret: str | None = _setting("ALERT_WEBHOOK_SECRET", None, _optional_str,
        "HMAC-SHA256 key for the X-Resilience-Signature header")
    alert_window_sec: int = _setting("ALERT_WINDOW_SEC", 300, _positive_int,
        "The same alert is sent at most once per window, then a summary of repeats")
    alert_redis_down_sec: int = _setting("ALERT_REDIS_DOWN_SEC", 30, _positive_int,
        "Alert when Redis has been unreachable this long")
    alert_error_rate_per_min: int = _setting("ALERT_ERROR_RATE_PER_MIN", 60, _positive_int,
        "Alert when more errors than this are recorded in a minute")
    alert_queue_backlog: int = _setting("ALERT_QUEUE_BACKLOG", 10000, _positive_int,
        "Alert when a queue holds more pending jobs than this")
    alert_min_workers: int = _setting("ALERT_MIN_WORKERS", 1, _non_negative_int,
        "Alert when fewer live workers than this are seen")
    alert_dead_letter_growth: int = _setting("ALERT_DEAD_LETTER_GROWTH", 10, _positive_int,
        "Alert when the dead-letter queue grows by this many entries within a window")
    sentry_dsn: str | None = _setting("SENTRY_DSN", None, _optional_str,
        "Also send errors to Sentry (unset: off)")
    environment: str = _setting("RESILIENCE_ENVIRONMENT", "development", _plain_str,
        "Environment name put in alerts and Sentry events")

    # -- Error tracking and webhook alerts (resilience.observability.tracking, resilience.observability.alerts) ----
    error_flush_interval_sec: float = _setting("ERROR_FLUSH_INTERVAL_SEC", 0.5, _positive_float,
        "Each process writes its buffered error records to Redis this often (one round trip)")
    error_buffer_max: int = _setting("ERROR_BUFFER_MAX", 10000, _positive_int,
        "Error records a process buffers while Redis is slow or away; beyond it the oldest are dropped")
    alert_webhook_timeout_sec: float = _setting("ALERT_WEBHOOK_TIMEOUT_SEC", 5.0, _positive_float,
        "Longest one webhook POST may take, from connecting to the reply's status (a slow trickle is cut off)")
    alert_webhook_retries: int = _setting("ALERT_WEBHOOK_RETRIES", 3, _non_negative_int,
        "Further attempts after a failed webhook POST (capped exponential backoff from 0.5 s)")
    alert_webhook_deadline_sec: float = _setting("ALERT_WEBHOOK_DEADLINE_SEC", 30.0, _positive_float,
        "Longest one alert's delivery may take, every attempt and pause included; then it is logged as lost")
    alert_queue_max: int = _setting("ALERT_QUEUE_MAX", 1000, _positive_int,
        "Alerts a process holds for its sender thread; beyond it new alerts are dropped and logged")
    alert_evaluate_interval_sec: int = _setting("ALERT_EVALUATE_INTERVAL_SEC", 30, _positive_int,
        "How often beat evaluates the periodic alert rules (error rate, backlog, workers, dead letters)")
    alert_on_job_failure: bool = _setting("ALERT_ON_JOB_FAILURE", True, _parse_bool,
        "Alert when a job fails for good (rule job_failed, one per error fingerprint per window)")

    # -- Worker events for Flower (resilience.observability.events) ------------------------------
    worker_event_flush_interval_sec: float = _setting("WORKER_EVENT_FLUSH_INTERVAL_SEC", 0.5, _non_negative_float,
        "Workers publish their buffered task events for Flower at most this often (0: on every event-loop "
        "tick, as Celery does, about 2.5 more round trips per job)")
    task_sent_event: bool = _setting("TASK_SENT_EVENT", False, _parse_bool,
        "The bundled app's task_send_sent_event: callers publish a task-sent event per submit (one more "
        "round trip per delay()), so Flower lists a job before a worker receives it")

    # -- Operators ---------------------------------------------------------------
    health_port: int = _setting("HEALTH_PORT", 8001, _port,
        "First port of the worker health server; 0 picks a free port")
    health_host: str = _setting("HEALTH_HOST", "127.0.0.1", _plain_str,
        "Address the health server binds")
    flower_port: int = _setting("FLOWER_PORT", 5555, _port,
        "Port of Flower started by `resilience up`")
    flower_basic_auth: str | None = _setting("FLOWER_BASIC_AUTH", None, _basic_auth,
        "user:password for Flower; `resilience up` generates one when unset")

    # -- Health endpoints and metrics -------------------------------------------------
    health_port_tries: int = _setting("HEALTH_PORT_TRIES", 10, _positive_int,
        "Ports tried from HEALTH_PORT upward, so workers on one host do not collide")
    health_redis_timeout_sec: float = _setting("HEALTH_REDIS_TIMEOUT_SEC", 0.5, _positive_float,
        "Bound on the health monitor's Redis PING; probes answer from its cached result")
    health_refresh_interval_sec: float = _setting("HEALTH_REFRESH_INTERVAL_SEC", 1.0, _positive_float,
        "How often the health monitor refreshes its cached checks in the background")
    health_loop_stall_sec: float = _setting("HEALTH_LOOP_STALL_SEC", 30.0, _positive_float,
        "A connected consumer whose event loop has not ticked for this long is wedged (503)")
    metrics_cache_sec: float = _setting("METRICS_CACHE_SEC", 5.0, _non_negative_float,
        "Queue depths and other gauges read from Redis are reused for this long between scrapes")
    health_beat_pulse_sec: float = _setting("HEALTH_BEAT_PULSE_SEC", 15.0, _positive_float,
        "Beat publishes a pulse this often; `resilience health beat` fails when it is 3 pulses late")

    # -- Feature flags -------------------------------------------------------------
    feature_enhanced_redis: bool = _setting("FEATURE_ENHANCED_REDIS", True, _parse_bool,
        "Fast reconnects, the workers' message hand-over, connection state tracking and the publish spool")
    feature_smart_retry: bool = _setting("FEATURE_SMART_RETRY", True, _parse_bool,
        "Backoff with jitter and durable delayed retries")
    feature_dead_letter: bool = _setting("FEATURE_DEAD_LETTER", True, _parse_bool,
        "Write permanently failed jobs to jobs:dead_letter")
    feature_stuck_jobs: bool = _setting("FEATURE_STUCK_JOBS", True, _parse_bool,
        "Worker heartbeats, the active-job registry and the stuck-job sweep")
    feature_idempotency: bool = _setting("FEATURE_IDEMPOTENCY", True, _parse_bool,
        "Submit-time deduplication and the execution guard")
    feature_circuit_breakers: bool = _setting("FEATURE_CIRCUIT_BREAKERS", True, _parse_bool,
        "Circuit breakers around external calls")
    feature_error_tracking: bool = _setting("FEATURE_ERROR_TRACKING", True, _parse_bool,
        "errors:timeline, errors:patterns and Sentry")
    feature_alerting: bool = _setting("FEATURE_ALERTING", True, _parse_bool,
        "Webhook alerts")
    feature_health: bool = _setting("FEATURE_HEALTH", True, _parse_bool,
        "Worker health server and metrics")

    def enabled(self, feature: str) -> bool:
        """Whether a feature (a key of :data:`FEATURES`) is switched on."""
        if feature not in FEATURES:
            raise KeyError(f"unknown feature {feature!r}; known: {', '.join(FEATURES)}")
        return getattr(self, f"feature_{feature}")

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed (for tests and embedding)."""
        return dataclasses.replace(self, **changes)

    def _validate(self) -> None:
        if self.redis_url and self.redis_url.lower().startswith("sentinel://") and not self.redis_sentinel_master:
            raise SettingsError("REDIS_SENTINEL_MASTER", "", "required when REDIS_URL names sentinels "
                                                             "(the name the sentinels monitor, e.g. mymaster)")
        if self.retry_backoff_max_sec < self.retry_backoff_base_sec:
            raise SettingsError("RETRY_BACKOFF_MAX_SEC", str(self.retry_backoff_max_sec),
                                "must not be below RETRY_BACKOFF_BASE_SEC")
        if self.worker_heartbeat_interval_sec >= self.worker_heartbeat_timeout_sec:
            raise SettingsError("WORKER_HEARTBEAT_INTERVAL_SEC", str(self.worker_heartbeat_interval_sec),
                                "must be below WORKER_HEARTBEAT_TIMEOUT_SEC")
        if self.redis_reconnect_max_sec < self.redis_reconnect_base_sec:
            raise SettingsError("REDIS_RECONNECT_MAX_SEC", str(self.redis_reconnect_max_sec),
                                "must not be below REDIS_RECONNECT_BASE_SEC")


def env_fields() -> list[dataclasses.Field]:
    """The settings' fields, each with its environment variable and meaning."""
    return list(dataclasses.fields(Settings))


def conf_keys(env_name: str) -> tuple[str, str]:
    """The keys a setting may have in a Celery app's configuration.

    Celery's own convention: lowercase in ``app.conf`` and config modules
    (``retry_max``), or the environment name itself (``RETRY_MAX``). Django
    settings read with ``namespace="CELERY"`` give ``CELERY_RETRY_MAX``, which
    Celery's configuration view finds under ``retry_max``.
    """
    return env_name.lower(), env_name


def _conf_raw(conf: Any, env_name: str) -> tuple[str, str] | None:
    """``(key, raw text)`` of a setting given in an app's configuration, or None."""
    if conf is None:
        return None
    for key in conf_keys(env_name):
        try:
            value = conf.get(key)
        except Exception:  # noqa: BLE001 - a configuration that cannot answer has no value for us
            value = None
        if value is None:
            continue
        if isinstance(value, bool):
            return key, "true" if value else "false"
        return key, value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    return None


def load_settings(environ: Mapping[str, str] | None = None, conf: Any = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming a bad one.

    Precedence, for each setting: the environment variable (an empty one counts
    as unset, as compose passes them), then the app's configuration ``conf``
    (see :func:`conf_keys`), then the default. The
    environment wins so that a deploy can override what the code says, e.g.
    switch a feature off to roll back without a release.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        name = f.metadata["env"]
        raw = env.get(name)
        if raw is None or raw.strip() == "":  # unset or empty: the app's configuration, else the default
            found = _conf_raw(conf, name)
            if found is None:
                continue
            key, raw = found
            try:
                values[f.name] = f.metadata["parse"](name, raw)
            except SettingsError as err:
                raise SettingsError(name, err.value, f"{err.reason} (set in the app's configuration "
                                                     f"as {key!r})") from None
            continue
        values[f.name] = f.metadata["parse"](name, raw)
    settings = Settings(**values)
    settings._validate()
    return settings


_lock = threading.RLock()
_override: Settings | None = None
_from_env: Settings | None = None
_by_app: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_computing = threading.local()


def settings_for(app: Any) -> Settings:
    """The settings of ``app``: the environment over the app's configuration.

    Computed once per configuration of the app (Celery's ``on_after_configure``
    clears it) and validated then, so a bad value stops the worker, beat or
    producer at start-up, naming the setting wherever it was set.
    """
    if _override is not None:
        return _override
    cached = _by_app.get(app)
    if cached is not None:
        return cached
    if getattr(_computing, "app", None) is app or not _conf_ready(app):
        # The app's configuration is being loaded right now (its config module reads
        # the settings): the environment is all there is yet.
        return _env_settings()
    _computing.app = app
    try:
        settings = load_settings(conf=app.conf)
    finally:
        _computing.app = None
    with _lock:
        _by_app[app] = settings
    return settings


def _conf_ready(app: Any) -> bool:
    """False while Celery is loading ``app``'s configuration (between its ``on_configure``
    and ``on_after_configure`` signals): reading ``app.conf`` then would load it again."""
    return not getattr(app, "_resilience_configuring", False)


def forget_app_settings(app: Any) -> None:
    """Drop ``app``'s cached settings (its configuration changed)."""
    with _lock:
        _by_app.pop(app, None)


def _env_settings() -> Settings:
    global _from_env
    if _from_env is None:
        with _lock:
            if _from_env is None:
                _from_env = load_settings()
    return _from_env


def get_settings() -> Settings:
    """This process's settings: those of the app given to ``install()``, else the environment's."""
    if _override is not None:
        return _override
    app = bound_app()
    if app is not None:
        return settings_for(app)
    return _env_settings()


def reset_settings(settings: Settings | None = None) -> None:
    """Forget every cached settings object (or force ``settings`` for the whole process).

    The next read re-validates from the environment and the apps' configuration.
    """
    global _override, _from_env
    with _lock:
        _override = settings
        _from_env = None
        _by_app.clear()


def current_override() -> Settings | None:
    """The settings forced with :func:`reset_settings`, if any (tests restore it)."""
    return _override


def render_env_example() -> str:
    """The text of ``.env.example``: every variable, its default and its meaning."""
    lines = [
        "# celery-resilience settings: every variable, its default and its meaning.",
        "# Copy to .env (or export them). A malformed value stops start-up naming the variable.",
        "# Flags (FEATURE_*) default to true; false turns the feature off (plain Celery behaviour).",
        "# Generated from resilience/core/settings.py: python -m resilience.core.settings > .env.example",
        "",
    ]
    for f in env_fields():
        default = f.default
        if default is None:
            default = ""
        elif isinstance(default, bool):
            default = "true" if default else "false"
        elif isinstance(default, float) and default.is_integer():
            default = int(default)
        lines += [f"# {f.metadata['doc']}", f"{f.metadata['env']}={default}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_env_example(), end="")
