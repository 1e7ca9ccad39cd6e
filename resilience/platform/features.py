"""The platform's features, one object each, and the list ``install(app)`` walks.

Each :class:`Feature` declares, in one place, everything it adds to an app:

* ``flag``: the settings field that switches it (``None``: always on);
* ``task_options``: the ``@app.task(...)`` options it reads (documentation,
  and checked against :data:`resilience.jobs.task.RESILIENCE_OPTIONS` by the suite);
* ``platform_tasks``: the platform's own tasks it brings, ``name -> body(app)``,
  declared on every app whatever the flags say (a message already queued for
  one still finds its task after a flag is turned off);
* :meth:`Feature.signals`, :meth:`Feature.worker_steps`,
  :meth:`Feature.consumer_steps`, :meth:`Feature.beat_entries`: what is
  connected and added when the app is configured with the flag on;
* :meth:`Feature.configure`: anything else it changes on the app then.

Every hook is a no-op by default, so a feature states only what it uses.
:func:`resilience.platform.install.install` walks :data:`FEATURES` and nothing else:
no feature installs another. Features are independent of one another; where
one feeds another (tracking feeds alerts, the outage feature feeds health),
it does so through a documented function of the other's module, never by
installing it.

Platform tasks are named ``resilience.<verb>_<object>`` and each beat entry is
named after its task (:mod:`resilience.core.platform_tasks`).
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import bootsteps, signals
from celery.utils.dispatch import Signal

from resilience.core import connection, logredact, platform_tasks, queues, replication, sentinel
from resilience.core.settings import Settings
from resilience.jobs import deadletter, scheduler
from resilience.observability import alert_rules, alerts, events, metrics, sentry, tracking
from resilience.outages import outage
from resilience.probes import beatprobe, health
from resilience.recovery import heartbeat, sweeper
from resilience.transport import reconnect, resultbackend

__all__ = ["FEATURES", "BeatEntry", "Feature", "SignalHandler", "configure_features", "declare_features"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignalHandler:
    """One Celery signal connection: ``signal.connect(handler, dispatch_uid=uid, weak=False)``."""

    signal: Signal
    handler: Callable[..., Any]
    uid: str


@dataclass(frozen=True)
class BeatEntry:
    """A periodic run of a platform task: every ``every_sec``; dropped when ``expires_sec`` late."""

    task: str
    every_sec: float
    expires_sec: float | None = None


@dataclass(frozen=True)
class Feature:
    """One behaviour of the platform. Subclass and override the hooks it uses."""

    #: Short name, as the docs and logs use it.
    name: str
    #: The ``Settings`` field that switches the feature (``None``: always on).
    flag: str | None = None
    #: The task options the feature reads.
    task_options: frozenset[str] = frozenset()
    #: The platform tasks it brings: name -> body, called with the app that runs the task.
    platform_tasks: dict[str, Callable[[Any], Any]] = field(default_factory=dict)

    def enabled(self, settings: Settings) -> bool:
        """Whether the feature is on with ``settings`` (its flag, when it has one)."""
        return self.flag is None or bool(getattr(settings, self.flag))

    def declare(self, app: Any) -> None:
        """At ``install(app)``, before the configuration is read. Default: nothing."""

    def signals(self, settings: Settings) -> Iterable[SignalHandler]:
        """The signal handlers to connect. Default: none."""
        return ()

    def worker_steps(self, settings: Settings) -> Iterable[type[bootsteps.StartStopStep]]:
        """Bootsteps of the worker's main blueprint. Default: none."""
        return ()

    def consumer_steps(self, settings: Settings) -> Iterable[type[bootsteps.StartStopStep]]:
        """Bootsteps of the worker's consumer blueprint. Default: none."""
        return ()

    def beat_entries(self, settings: Settings) -> Iterable[BeatEntry]:
        """Periodic platform tasks for beat. Default: none."""
        return ()

    def configure(self, app: Any, settings: Settings) -> None:
        """Any other change to the app, once it is configured. Default: nothing."""


# -- the features ---------------------------------------------------------------------------


class LogRedaction(Feature):
    """Secrets never reach a log: from the first log line of any process that installs the platform."""

    def declare(self, app: Any) -> None:
        logredact.redact_this_process()

    def signals(self, settings: Settings) -> Iterable[SignalHandler]:
        return (SignalHandler(signals.after_setup_logger, logredact.on_logging_set_up, "resilience.logredact.root"),
                SignalHandler(signals.after_setup_task_logger, logredact.on_logging_set_up,
                              "resilience.logredact.task"))


class SentinelTopology(Feature):
    """Under Sentinel (``sentinel://`` URLs), the broker's and result backend's master name and
    sentinel options, filled in where the app's configuration leaves them out."""

    def configure(self, app: Any, settings: Settings) -> None:
        sentinel.install(app, settings)


class ReplicaAcknowledgement(Feature):
    """With ``REDIS_MIN_REPLICAS_ACK``, publishes go through a transport that waits for replicas."""

    def enabled(self, settings: Settings) -> bool:
        return settings.redis_min_replicas_ack > 0

    def configure(self, app: Any, settings: Settings) -> None:
        replication.install(app, settings)


class ResultBackend(Feature):
    """Celery's Redis (or Sentinel) result backend with its connection state reported, its STARTED
    and SUCCESS writes folded into the guard's scripts, and no result subscription per submit."""

    def enabled(self, settings: Settings) -> bool:
        return settings.feature_enhanced_redis or settings.feature_idempotency or settings.feature_stuck_jobs

    def configure(self, app: Any, settings: Settings) -> None:
        resultbackend.install(app, settings)


class BatchedTaskEvents(Feature):
    """Flower's task events published at most every ``WORKER_EVENT_FLUSH_INTERVAL_SEC`` (0: Celery's
    flush on every event-loop tick)."""

    def enabled(self, settings: Settings) -> bool:
        return settings.worker_event_flush_interval_sec > 0

    def consumer_steps(self, settings: Settings) -> Iterable[type[bootsteps.StartStopStep]]:
        return (events.EventBatchStep,)


class StuckJobs(Feature):
    """Worker heartbeats (a consumer step), and beat's sweep that recovers the jobs of dead workers."""

    def signals(self, settings: Settings) -> Iterable[SignalHandler]:
        return (SignalHandler(signals.worker_shutdown, heartbeat.on_worker_shutdown,
                              "resilience.heartbeat.shutdown"),)

    def consumer_steps(self, settings: Settings) -> Iterable[type[bootsteps.StartStopStep]]:
        return (heartbeat.HeartbeatStep,)

    def beat_entries(self, settings: Settings) -> Iterable[BeatEntry]:
        interval = settings.stuck_sweep_interval_sec
        return (BeatEntry(platform_tasks.SWEEP_STUCK_JOBS, interval, expires_sec=interval),)

    def configure(self, app: Any, settings: Settings) -> None:
        sweeper.register_control_command()


class Health(Feature):
    """Each worker's health server and metrics; beat's pulse and the record of what beat published."""

    def signals(self, settings: Settings) -> Iterable[SignalHandler]:
        return (*(SignalHandler(signal, handler, uid) for signal, handler, uid in metrics.SIGNAL_HANDLERS),
                SignalHandler(signals.worker_shutting_down, health.on_worker_shutting_down,
                              "resilience.health.shutting_down"),
                SignalHandler(signals.worker_shutdown, health.on_worker_shutdown, "resilience.health.shutdown"),
                SignalHandler(signals.beat_init, beatprobe.on_beat_init, "resilience.beatprobe.init"))

    def worker_steps(self, settings: Settings) -> Iterable[type[bootsteps.StartStopStep]]:
        return (health.HealthServerStep,)

    def consumer_steps(self, settings: Settings) -> Iterable[type[bootsteps.StartStopStep]]:
        return (health.ConsumerProbeStep,)

    def beat_entries(self, settings: Settings) -> Iterable[BeatEntry]:
        pulse = settings.health_beat_pulse_sec
        return (BeatEntry(platform_tasks.BEAT_PULSE, pulse, expires_sec=pulse * beatprobe.LATE_FACTOR),)

    def configure(self, app: Any, settings: Settings) -> None:
        connection.add_observer(metrics.ConnectionCounts())


class ErrorTracking(Feature):
    """Failures and retries recorded as error patterns and a timeline, flushed when a process ends."""

    def signals(self, settings: Settings) -> Iterable[SignalHandler]:
        return (SignalHandler(signals.task_failure, tracking.on_task_failure, "resilience.tracking.failure"),
                SignalHandler(signals.task_retry, tracking.on_task_retry, "resilience.tracking.retry"),
                SignalHandler(signals.worker_process_shutdown, tracking.flush_at_exit,
                              "resilience.tracking.flush_child"),
                SignalHandler(signals.worker_shutdown, tracking.flush_at_exit, "resilience.tracking.flush_worker"))

    def configure(self, app: Any, settings: Settings) -> None:
        atexit.register(tracking.flush_at_exit)


class Sentry(Feature):
    """sentry-sdk initialised in workers, beat and each pool process (``SENTRY_DSN`` set, tracking on)."""

    def enabled(self, settings: Settings) -> bool:
        return super().enabled(settings) and bool(settings.sentry_dsn)

    def signals(self, settings: Settings) -> Iterable[SignalHandler]:
        return tuple(SignalHandler(signal, sentry.init_on_signal, f"resilience.sentry.init.{uid}")
                     for signal, uid in ((signals.worker_init, "worker"), (signals.beat_init, "beat"),
                                         (signals.worker_process_init, "pool_process")))


class Alerting(Feature):
    """Webhook alerts: the start-up reachability check, beat's periodic rules, and an alert for a
    Redis connection down too long (the breaker and the sweep call their rules themselves)."""

    def signals(self, settings: Settings) -> Iterable[SignalHandler]:
        return (SignalHandler(signals.worker_ready, alerts.check_webhook_in_background,
                              "resilience.alerts.check_webhook"),)

    def beat_entries(self, settings: Settings) -> Iterable[BeatEntry]:
        interval = settings.alert_evaluate_interval_sec
        return (BeatEntry(platform_tasks.EVALUATE_ALERTS, interval, expires_sec=interval),)

    def configure(self, app: Any, settings: Settings) -> None:
        connection.add_observer(alert_rules.ConnectionAlerts())


class SmartRetry(Feature):
    """Durable delayed runs: every worker promotes the due ones, beat as a backstop."""

    def consumer_steps(self, settings: Settings) -> Iterable[type[bootsteps.StartStopStep]]:
        return (scheduler.PromoterStep,)

    def beat_entries(self, settings: Settings) -> Iterable[BeatEntry]:
        interval = settings.scheduler_beat_interval_sec
        return (BeatEntry(platform_tasks.PROMOTE_DELAYED_RUNS, interval, expires_sec=interval),)


class DeadLetterUpkeep(Feature):
    """Beat trims the dead-letter queue (retention and cap). Always on: entries written before
    ``FEATURE_DEAD_LETTER`` was turned off still expire."""

    def beat_entries(self, settings: Settings) -> Iterable[BeatEntry]:
        return (BeatEntry(platform_tasks.TRIM_DEAD_LETTERS, settings.dead_letter_trim_interval_sec),)


class EnhancedRedis(Feature):
    """Fast consumer reconnects, connection state for the result backend, and the publish spool."""

    def signals(self, settings: Settings) -> Iterable[SignalHandler]:
        return (SignalHandler(signals.beat_init, outage.watch_from_beat, "resilience.outage.beat_spool_watch"),)

    def worker_steps(self, settings: Settings) -> Iterable[type[bootsteps.StartStopStep]]:
        return (outage.SpoolWatchStep,)

    def configure(self, app: Any, settings: Settings) -> None:
        reconnect.use_resilient_consumer(app)
        # Informational: the "redis" and "broker" checks already decide health from live probes.
        health.register_check("connections", connection.health_check, critical=False)
        outage.publish_what_an_earlier_run_spooled(app)


def _sweep_stuck_jobs(app: Any) -> dict:
    return sweeper.sweep(app).as_dict()


def _trim_dead_letters(app: Any) -> dict:
    return deadletter.trim()


def _promote_delayed_runs(app: Any) -> int:
    return scheduler.promote_due()


def _evaluate_alerts(app: Any) -> list[str]:
    return alert_rules.evaluate(queues=queues.queue_names(app))


def _beat_pulse(app: Any) -> None:
    """Publishing it is the point (see :mod:`resilience.probes.beatprobe`); running it does nothing."""
    return None


#: Every feature, in the order they are wired (bootsteps order themselves by their own requirements).
FEATURES: tuple[Feature, ...] = (
    LogRedaction("log_redaction"),
    SentinelTopology("sentinel"),
    ReplicaAcknowledgement("replica_ack"),
    ResultBackend("result_backend"),
    BatchedTaskEvents("task_events"),
    StuckJobs("stuck_jobs", flag="feature_stuck_jobs", task_options=frozenset({"progress_timeout"}),
              platform_tasks={platform_tasks.SWEEP_STUCK_JOBS: _sweep_stuck_jobs}),
    Health("health", flag="feature_health", platform_tasks={platform_tasks.BEAT_PULSE: _beat_pulse}),
    ErrorTracking("error_tracking", flag="feature_error_tracking"),
    Sentry("sentry", flag="feature_error_tracking"),
    Alerting("alerting", flag="feature_alerting",
             platform_tasks={platform_tasks.EVALUATE_ALERTS: _evaluate_alerts,
                             platform_tasks.EVALUATE_ALERTS_FORMER_NAME: _evaluate_alerts}),
    SmartRetry("smart_retry", flag="feature_smart_retry", task_options=frozenset({"retry_for", "retry_jitter"}),
               platform_tasks={platform_tasks.PROMOTE_DELAYED_RUNS: _promote_delayed_runs}),
    Feature("dead_letter", flag="feature_dead_letter",
            task_options=frozenset({"dead_letter", "release_key_on_dead_letter"})),
    DeadLetterUpkeep("dead_letter_upkeep", platform_tasks={platform_tasks.TRIM_DEAD_LETTERS: _trim_dead_letters}),
    Feature("idempotency", flag="feature_idempotency", task_options=frozenset({"idempotent"})),
    Feature("circuit_breakers", flag="feature_circuit_breakers", task_options=frozenset({"breaker"})),
    EnhancedRedis("enhanced_redis", flag="feature_enhanced_redis"),
)


def declare_features(app: Any, features: Iterable[Feature] = FEATURES) -> None:
    """At ``install(app)``: each feature's platform tasks and :meth:`Feature.declare` (whatever the flags)."""
    for feature in features:
        for name, body in feature.platform_tasks.items():
            platform_tasks.declare(app, name, body)
        feature.declare(app)


def configure_features(app: Any, settings: Settings, features: Iterable[Feature] = FEATURES) -> None:
    """Once the app is configured: wire each enabled feature into it (signals, steps, beat entries)."""
    for feature in features:
        if not feature.enabled(settings):
            continue
        for connection_ in feature.signals(settings):
            connection_.signal.connect(connection_.handler, dispatch_uid=connection_.uid, weak=False)
        for step in feature.worker_steps(settings):
            app.steps["worker"].add(step)
        for step in feature.consumer_steps(settings):
            app.steps["consumer"].add(step)
        for entry in feature.beat_entries(settings):
            platform_tasks.add_beat_entry(app, settings, entry.task, entry.every_sec, expires=entry.expires_sec)
        feature.configure(app, settings)
