"""Celery settings of the bundled app, read from the environment.

Every value comes from :mod:`resilience.core.settings` (validated once; a bad value
stops start-up naming the variable). Each safe default says why it is there;
they are the settings we recommend to any project adopting the platform.
"""

from pathlib import Path

from resilience.core.settings import load_settings
from resilience.core.store import configured_or_embedded_url

_settings = load_settings()  # the environment: this module *is* the app's configuration
_redis = configured_or_embedded_url(_settings)  # REDIS_URL, else the data dir's embedded Redis

broker_url = _redis
result_backend = _redis

# JSON only: pickle lets whoever can write to Redis run code in the workers.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Ack after the job ran, and requeue it if its pool process dies: a crash never loses a job.
task_acks_late = True
task_reject_on_worker_lost = True
# Take one message per process at a time: a crashed worker strands at most one job per process.
worker_prefetch_multiplier = 1

# Timeouts and health checks on every Redis connection: a frozen Redis raises, never blocks forever.
broker_transport_options = {
    "visibility_timeout": _settings.broker_visibility_timeout_sec,  # last safety net only; the sweep recovers first
    "socket_timeout": _settings.redis_socket_timeout_sec,
    "socket_connect_timeout": _settings.redis_connect_timeout_sec,
    "health_check_interval": _settings.redis_health_check_interval_sec,
    "socket_keepalive": True,
    "retry_on_timeout": False,
}
result_backend_transport_options = {
    "retry_policy": {"timeout": _settings.publish_timeout_sec},
}
redis_socket_timeout = _settings.redis_socket_timeout_sec
redis_socket_connect_timeout = _settings.redis_connect_timeout_sec
redis_backend_health_check_interval = _settings.redis_health_check_interval_sec
redis_socket_keepalive = True
redis_retry_on_timeout = False

# Publishing retries a little, then gives up: a caller is never held for long.
task_publish_retry = True
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

# Workers keep trying to reach the broker at start-up and after a loss, forever.
broker_connection_retry_on_startup = True
broker_connection_retry = True
broker_connection_max_retries = None
# A running job keeps going across a broker reconnect; the execution guard absorbs a redelivery.
worker_cancel_long_running_tasks_on_connection_loss = False

# Results are kept for a while (idempotent duplicates and the guard return them), then expire.
result_expires = _settings.result_expires_sec
task_track_started = True

# Events on, so Flower shows workers and tasks (published in batches: resilience.observability.events).
# task-sent events cost every delay() a round trip: off unless TASK_SENT_EVENT=true.
worker_send_task_events = True
task_send_sent_event = _settings.task_sent_event

broker_connection_timeout = _settings.redis_connect_timeout_sec
beat_schedule_filename = str(Path(_settings.data_dir).expanduser() / "celerybeat-schedule")
timezone = "UTC"
enable_utc = True
worker_hijack_root_logger = False
