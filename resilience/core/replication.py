"""Replica acknowledgement: writes that count as done only once replicas have them.

Redis replication is asynchronous: a primary that dies right after a write
may not have sent it to any replica, and the replica Sentinel promotes never
learns of it. With ``REDIS_MIN_REPLICAS_ACK=N`` (0, the default, is off) the
writes a job's life depends on are followed, on the same connection, by
``WAIT N REDIS_REPLICA_ACK_TIMEOUT_MS``; when fewer than ``N`` replicas
confirm in time the write counts as not done
(:class:`~resilience.core.errors.ReplicasBehind`, an outage for the platform):

* **publish** (kombu's ``LPUSH`` of the message, :class:`DurableChannelMixin`):
  the job is spooled and published again (:mod:`resilience.outages.outage`); the
  first copy, if it survives, is absorbed by the execution guard;
* **a job's start** (``lua/job_start.lua``, which also makes the message's
  pop durable, since replication is one ordered stream): the claim is
  withdrawn and the message goes back on its queue before the body runs;
* **a job's outcome** (``lua/job_finish.lua``): written again in the
  background until confirmed (:mod:`resilience.outages.pending_writes`), so a
  failover never forgets that a job ran;
* **the ack** (``lua/unacked_remove.lua``): confirmed when possible; an
  unconfirmed ack is logged, not retried: the confirmed outcome already
  makes a redelivery a no-op;
* **a delayed run** (``lua/schedule.lua``): like a publish.

``WAIT`` counts what the replicas acknowledged up to this connection's last
write; since the replication stream is ordered, that covers every earlier
write to the primary as well. The cost is one replication round trip per
write (measured in ``benchmarks/replica_ack.py``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from resilience.core.errors import ReplicasBehind
from resilience.core.settings import Settings, get_settings
from resilience.core.store import get_redis, load_script

log = logging.getLogger(__name__)

__all__ = ["DurableChannelMixin", "Transport", "SentinelTransport", "run_script", "confirm", "install"]


def confirm(acked: Any, wanted: int, timeout_ms: int, what: str) -> None:
    """Raise :class:`ReplicasBehind` unless ``acked`` (WAIT's reply) reaches ``wanted``."""
    acked = int(acked or 0)
    if acked < wanted:
        raise ReplicasBehind(what, acked, wanted, timeout_ms)


def run_script(name: str, keys: list[str | bytes], args: list[Any], *, what: str, client=None,
               settings: Settings | None = None) -> Any:
    """Run ``lua/<name>.lua``; with replica acknowledgement on, followed by WAIT on the same connection.

    ``client`` may be a caller's pipeline: the script is queued on it and the
    caller's ``execute()`` is the write (no WAIT here: the caller decides).
    """
    settings = settings or get_settings()
    wanted = settings.redis_min_replicas_ack
    script = load_script(name)
    if not wanted or client is not None:
        return script(keys=keys, args=args, client=client)
    pipe = get_redis().pipeline(transaction=False)
    script(keys=keys, args=args, client=pipe)
    pipe.wait(wanted, settings.redis_replica_ack_timeout_ms)
    result, acked = pipe.execute()
    confirm(acked, wanted, settings.redis_replica_ack_timeout_ms, what)
    return result


if TYPE_CHECKING:
    _ChannelBase = kombu_redis.Channel
else:
    _ChannelBase = object


class DurableChannelMixin(_ChannelBase):
    """kombu's Redis channel whose publish waits for ``min_replicas_ack`` replicas.

    The options come from the broker transport options (``min_replicas_ack``,
    ``replica_ack_timeout_ms``), which :func:`install` sets from the settings.
    """

    from_transport_options = kombu_redis.Channel.from_transport_options + (  # type: ignore[assignment]
        "min_replicas_ack", "replica_ack_timeout_ms")  # kombu types the tuple by its exact length
    min_replicas_ack = 0
    replica_ack_timeout_ms = 500

    def _put(self, queue, message, **kwargs):
        wanted = int(self.min_replicas_ack or 0)
        if not wanted or kwargs.get("_publish_batch") is not None:
            return super()._put(queue, message, **kwargs)
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            with client.pipeline(transaction=False) as pipe:  # one connection: WAIT covers this LPUSH
                pipe.lpush(key, dumps(message))
                if self._expires and queue in self._expires:
                    for step in self.priority_steps:
                        pipe.pexpire(self._q_for_pri(queue, step), self._expires[queue])
                pipe.wait(wanted, int(self.replica_ack_timeout_ms))
                acked = pipe.execute()[-1]
        headers = message.get("headers") or {}
        confirm(acked, wanted, int(self.replica_ack_timeout_ms), f"publish of job {headers.get('id')}")


class DurableChannel(DurableChannelMixin, kombu_redis.Channel):
    pass


class DurableSentinelChannel(DurableChannelMixin, kombu_redis.SentinelChannel):
    from_transport_options = kombu_redis.SentinelChannel.from_transport_options + (  # type: ignore[assignment]
        "min_replicas_ack", "replica_ack_timeout_ms")


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`DurableChannelMixin`."""

    Channel = DurableChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`DurableChannelMixin`."""

    Channel = DurableSentinelChannel


def install(app, settings: Settings) -> None:
    """With ``REDIS_MIN_REPLICAS_ACK`` set, publish through the durable transport.

    Uses Celery's ``broker_transport`` setting (left alone when the app sets
    its own) and puts the acknowledgement options in ``broker_transport_options``.
    """
    if not settings.redis_min_replicas_ack:
        return
    url = app.conf.broker_url
    scheme = url.split("://", 1)[0].lower() if isinstance(url, str) else ""
    if scheme not in {"redis", "rediss", "sentinel"}:
        log.warning("REDIS_MIN_REPLICAS_ACK needs a Redis broker; publishes of this app are not confirmed")
        return
    options = dict(app.conf.broker_transport_options or {})
    options.setdefault("min_replicas_ack", settings.redis_min_replicas_ack)
    options.setdefault("replica_ack_timeout_ms", settings.redis_replica_ack_timeout_ms)
    app.conf.broker_transport_options = options
    if not app.conf.broker_transport:
        transport = "SentinelTransport" if scheme == "sentinel" else "Transport"
        app.conf.broker_transport = f"{__name__}:{transport}"
