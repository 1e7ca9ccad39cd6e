"""Every Redis key name the platform uses, built in one place.

Keys named in the public contract keep the origin design's names
(``jobs:dead_letter``, ``jobs:active``, ...) so its monitoring one-liners keep
working; ``RESILIENCE_KEY_PREFIX`` (validated in :mod:`resilience.core.settings`)
goes in front of all of them. kombu's own keys (queues, ``unacked``,
``unacked_index``) are the broker's and are not prefixed; see
``docs/redis-keys.md`` for the full list.
"""

from __future__ import annotations

from dataclasses import dataclass

from resilience.core.settings import get_settings


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix. Build with :func:`keys`."""

    prefix: str = ""

    def _k(self, name: str) -> str:
        return f"{self.prefix}{name}"

    # -- public contract (DESIGN.md) -------------------------------------------
    @property
    def dead_letter(self) -> str:
        """List, newest first: JSON dead-letter entries."""
        return self._k("jobs:dead_letter")

    @property
    def active(self) -> str:
        """Hash: job id -> JSON of the running job (task, worker, progress ...)."""
        return self._k("jobs:active")

    def idempotency(self, key: str) -> str:
        """String with TTL: the job id that owns an idempotency key."""
        return self._k(f"idempotency:{key}")

    @property
    def errors_timeline(self) -> str:
        """Sorted set scored by epoch ms: JSON error records."""
        return self._k("errors:timeline")

    @property
    def errors_patterns(self) -> str:
        """Hash: component:operation:error_type -> count."""
        return self._k("errors:patterns")

    @property
    def breakers_status(self) -> str:
        """Hash: breaker name -> JSON state."""
        return self._k("circuit_breakers:status")

    # -- the platform's own --------------------------------------------------------
    def job_state(self, job_id: str) -> str:
        """String with TTL: a job's execution record (the execution guard)."""
        return self._k(f"jobs:state:{job_id}")

    @property
    def active_deadlines(self) -> str:
        """Sorted set: job id -> epoch seconds by which it must report progress."""
        return self._k("jobs:active:deadlines")

    @property
    def scheduled(self) -> str:
        """Sorted set: job id -> epoch seconds when its delayed run is due."""
        return self._k("jobs:scheduled")

    @property
    def scheduled_payloads(self) -> str:
        """Hash: job id -> JSON {queue key, kombu envelope} of a delayed run."""
        return self._k("jobs:scheduled:payloads")

    @property
    def worker_heartbeats(self) -> str:
        """Sorted set: worker id (hostname|boot) -> epoch seconds of its last heartbeat."""
        return self._k("workers:heartbeats")

    @property
    def worker_info(self) -> str:
        """Hash: worker id -> JSON (hostname, pid, started_at, held delivery tags)."""
        return self._k("workers:info")

    @property
    def worker_health(self) -> str:
        """Hash: worker id -> JSON (host, port, url, pid) of its health server."""
        return self._k("workers:health")

    @property
    def beat_published(self) -> str:
        """Hash: beat schedule entry name -> epoch seconds beat last published it."""
        return self._k("beat:published")
    def alert_window(self, rule: str, subject: str) -> str:
        """String with TTL ``ALERT_WINDOW_SEC``: an alert of this rule and subject was sent."""
        return self._k(f"alerts:window:{rule}:{subject}")

    @property
    def alert_windows(self) -> str:
        """Sorted set: ``rule\x1fsubject`` -> epoch ms when its alert window ends."""
        return self._k("alerts:windows")

    @property
    def alert_suppressed(self) -> str:
        """Hash: ``rule\x1fsubject`` -> repeats suppressed in the current window."""
        return self._k("alerts:suppressed")

    @property
    def alert_last(self) -> str:
        """Hash: ``rule\x1fsubject`` -> JSON of the latest suppressed alert (for the summary)."""
        return self._k("alerts:last")

    @property
    def alert_dead_letter_samples(self) -> str:
        """Sorted set: ``<epoch ms>:<length>`` samples of the dead-letter queue length."""
        return self._k("alerts:dead_letter:samples")

    @property
    def quarantine(self) -> str:
        """Hash: id -> JSON of a bad record taken out of the key it was read from
        (see ``resilience.core.quarantine``)."""
        return self._k("quarantine")

    @property
    def quarantine_index(self) -> str:
        """Sorted set: quarantine id -> epoch ms it was quarantined (oldest trimmed first)."""
        return self._k("quarantine:index")

    def write_probe(self, name: str) -> str:
        """String with a short TTL: written to learn whether Redis accepts writes (not full)."""
        return self._k(f"probe:{name}")

    def lock(self, name: str) -> str:
        """String with TTL: a token-checked lock."""
        return self._k(f"locks:{name}")

    def stats(self, name: str) -> str:
        """Hash of counters kept for status views (``stats:<name>``)."""
        return self._k(f"stats:{name}")

    # -- kombu's own keys (never prefixed; the broker names them) ----------------------
    @staticmethod
    def kombu_unacked(transport_options: dict | None = None) -> str:
        """Hash: delivery tag -> JSON [message, exchange, routing key] of unacked messages."""
        return (transport_options or {}).get("unacked_key", "unacked")

    @staticmethod
    def kombu_unacked_index(transport_options: dict | None = None) -> str:
        """Sorted set: delivery tag -> epoch seconds it was delivered (visibility timeout)."""
        return (transport_options or {}).get("unacked_index_key", "unacked_index")

    def kombu_binding(self, exchange: str) -> str:
        """kombu set: ``routing key \\x06\\x16 pattern \\x06\\x16 queue`` bindings of an exchange."""
        return f"_kombu.binding.{exchange}"

    def kombu_queue(self, queue: str, priority: int = 0) -> str:
        """kombu list of a queue at a priority step (kombu's ``_q_for_pri``)."""
        return f"{queue}\x06\x16{priority}" if priority else queue

    def custom(self, name: str) -> str:
        """A prefixed key for a concern not listed above (document it in docs/)."""
        return self._k(name)


def keys() -> Keys:
    """The key names for the current settings."""
    return Keys(get_settings().key_prefix)
