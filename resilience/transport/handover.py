"""A worker keeps the messages it received across a broker connection loss.

kombu's Redis transport hands a message to a worker in two commands: ``BRPOP``
takes it off the queue, then a second pipeline records it in the ``unacked``
hash (``QoS.append``). When Redis dies between the two, the message exists
only in the worker's memory; kombu lets the connection error escape from
``append`` and the message is dropped: a job lost. On the same connection loss,
kombu's channel close tries to put the worker's prefetched messages back
(``restore_unacked``) over the dead connection and fails, leaving them in
``unacked`` until the visibility timeout (12 h here) or a sweep.

The worker's consumer connection therefore uses :class:`HandoverQoS`:

* ``append`` that fails for a connection reason keeps the message (its exact
  kombu envelope) in this process's hand-over list before the error goes on;
* ``restore_unacked`` while the broker is down keeps the prefetched messages
  that are not running, instead of trying a dead connection;
* ``reject(requeue=True)`` (a job that could not start,
  :class:`~resilience.core.errors.JobNotStarted`) puts the message back from its
  ``unacked`` entry, or from the message itself when the entry is gone (a
  Sentinel failover can keep a message's pop and lose its entry); when Redis
  cannot be reached it keeps the message too;
* once the consumer is connected again, :func:`restore_pending` puts them back
  on their queues through :func:`resilience.transport.unacked.restore`: a message still
  in ``unacked`` only if its entry is unchanged, a message never recorded only
  while it still has no entry, so the sweep and the hand-over never both push
  it. Running jobs are left alone: they finish and ack.

kombu defect worked around here as well: after a connection is closed, its
channel's ``_connparams()`` reads ``self.connection.client``, which closing
set to None, so a late ack or a restore on that channel raises AttributeError
instead of using Redis (the Sentinel channel reads its sentinels from there
too). :class:`HandoverChannelMixin` remembers the last connection parameters
and sentinel addresses so those calls reach Redis (or fail as the connection
errors they are). It also reuses one redis-py client per connection pool
where kombu builds one per operation (see the class).

The hand-over list is in memory: a worker killed during the same outage in
which it popped a message it could not record loses that one message (the
README's persistence notes say so). Installed with ``FEATURE_ENHANCED_REDIS``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import OutOfMemoryError, ReadOnlyError

from resilience.core import connection
from resilience.core.errors import ReplicasBehind
from resilience.core.replication import confirm
from resilience.core.runtime import app_or_bound, transport_options
from resilience.core.store import get_redis, load_script
from resilience.transport import unacked

log = logging.getLogger(__name__)

__all__ = ["HandoverQoS", "HandoverChannelMixin", "use_on", "keep", "pending", "restore_pending"]


_lock = threading.Lock()
#: delivery tag -> the ``[payload, exchange, routing key]`` envelope of the message, pushed
#: only if ``unacked`` has no entry for it (None: put back from its entry or not at all).
_held: dict[str, list | None] = {}


def keep(tag: str, envelope: list | None = None) -> None:
    """Hold a message this worker could not keep in Redis until it can be put back.

    It goes back from its ``unacked`` entry when there is one; ``envelope`` (the
    message as this worker received it) is pushed only while there is none: a
    message kombu never recorded, or whose record a Sentinel failover lost
    together with its pop.
    """
    with _lock:
        _held[str(tag)] = envelope


def pending() -> int:
    """How many messages wait in this process's hand-over list."""
    with _lock:
        return len(_held)


def restore_pending(r=None, app=None) -> int:
    """Put the held messages back on their queues; returns how many went back.

    ``app`` names kombu's keys (default: the app given to ``install()``).
    Messages stay held when Redis cannot be reached, for the next call.
    """
    with _lock:
        held = dict(_held)
    if not held:
        return 0
    candidates = [unacked.Candidate(tag, fallback=envelope) for tag, envelope in held.items()]
    restored = unacked.restore(r or get_redis(), candidates, transport_options(app_or_bound(app)))
    with _lock:
        for tag, envelope in held.items():
            if tag in _held and _held[tag] is envelope:  # not kept again meanwhile
                del _held[tag]
    for done in restored:
        headers = done.payload.get("headers") or {}
        log.warning("put message %s of job %s (%s) back on queue %s after the broker connection loss",
                    done.candidate.tag, headers.get("id"), headers.get("task"), done.queue)
    return len(restored)


def _envelope(message) -> list:
    delivery = message.delivery_info
    return [message._raw, delivery["exchange"], delivery["routing_key"]]


def _running_tags() -> set[str]:
    """Delivery tags of the jobs this worker is running (they finish and ack themselves)."""
    from celery.worker import state

    tags = set()
    for request in list(state.active_requests):
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag:
            tags.add(str(tag))
    return tags


def _unreachable(channel) -> tuple[type[BaseException], ...]:
    """What counts as "Redis cannot take this now": connection errors, a full Redis, and a
    primary demoted by a failover (``READONLY``)."""
    return (*channel.connection_errors, OutOfMemoryError, ReadOnlyError)


class HandoverQoS(kombu_redis.QoS):
    """kombu's Redis QoS that keeps, rather than drops, messages on a connection loss.

    A full Redis (``maxmemory`` under ``noeviction``) is handled as a
    connection loss: the pop that emptied a queue slot worked, the write that
    records the message in ``unacked`` was refused, so the message is kept and
    the consumer reconnects, waiting until Redis accepts writes again
    (:class:`resilience.transport.reconnect.ResilientConsumer`) instead of exiting on an
    "unrecoverable" error.
    """

    def append(self, message, delivery_tag):
        try:
            super().append(message, delivery_tag)
        except _unreachable(self.channel) as err:
            keep(delivery_tag, _envelope(message))
            log.warning("broker connection lost while recording message %s as delivered; "
                        "it is kept and put back when the broker is reachable", delivery_tag)
            if isinstance(err, OutOfMemoryError):
                raise redis.ConnectionError(f"Redis is full and refuses writes: {err}") from err
            if isinstance(err, ReadOnlyError):
                raise redis.ConnectionError(f"Redis answered READONLY (a demoted primary): {err}") from err
            raise

    def ack(self, delivery_tag):
        self._remembered().pop(str(delivery_tag), None)
        if int(getattr(self.channel, "min_replicas_ack", 0) or 0):
            return self._confirmed_ack(delivery_tag)
        try:
            return super().ack(delivery_tag)
        except OutOfMemoryError:
            # A full Redis refuses every command queued in MULTI, even kombu's deletes; the
            # deletes alone are accepted. Without the transaction a crash in between can only
            # leave a stale index entry, which kombu's restore skips.
            with self.channel.conn_or_acquire() as client:
                client.hdel(self.unacked_key, delivery_tag)
                client.zrem(self.unacked_index_key, delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
            return None

    def _envelope_of(self, delivery_tag) -> list | None:
        """The envelope of a message this channel delivered (kept with its tag in the hand-over list).

        It is pushed only if ``unacked`` has no entry for the tag when the message goes back:
        after a Sentinel failover the promoted replica may have the message's pop but not its
        ``unacked`` entry, and without the envelope the message would be gone.
        """
        message = self._delivered.get(delivery_tag)
        if message is None:
            return self._remembered().get(str(delivery_tag))
        try:
            return _envelope(message)
        except (AttributeError, KeyError, TypeError):
            return None

    def _remembered(self) -> dict[str, list]:
        """Envelopes of the messages that were running when the connection was lost (their
        reject may come after kombu forgot them)."""
        return self.__dict__.setdefault("_resilience_envelopes", {})

    def _requeue(self, delivery_tag, envelope: list) -> None:
        """Put a message back that did not start: from its ``unacked`` entry, else from its envelope.

        kombu's own requeue restores only from the entry; after a Sentinel failover the
        promoted replica may have the message's pop without its entry, and the message
        would be dropped. Redis unreachable: the message is handed over instead.
        """
        self._remembered().pop(str(delivery_tag), None)
        try:
            unacked.restore(get_redis(), [unacked.Candidate(str(delivery_tag), fallback=envelope)],
                            transport_options(app_or_bound(None)))
        except Exception as err:
            if not connection.is_outage(err):
                raise
            keep(delivery_tag, envelope)
            log.warning("broker unreachable: message %s will go back on its queue on reconnect", delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def _confirmed_ack(self, delivery_tag):
        """The ack followed by WAIT (replica acknowledgement, :mod:`resilience.core.replication`).

        An ack the replicas did not confirm is logged, not retried: the job's
        outcome was confirmed before it, so a redelivery after a failover is a
        no-op for the execution guard.
        """
        wanted, timeout_ms = int(self.channel.min_replicas_ack), int(self.channel.replica_ack_timeout_ms)
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            load_script("unacked_remove")(keys=[self.unacked_key, self.unacked_index_key],
                                          args=[delivery_tag], client=pipe)
            pipe.wait(wanted, timeout_ms)
            _, acked = pipe.execute()
        virtual.QoS.ack(self, delivery_tag)
        try:
            confirm(acked, wanted, timeout_ms, f"ack of message {delivery_tag}")
        except ReplicasBehind as err:
            log.warning("%s", err)

    def reject(self, delivery_tag, requeue=False):
        envelope = self._envelope_of(delivery_tag) if requeue else None
        if envelope is not None:
            return self._requeue(delivery_tag, envelope)
        try:
            return super().reject(delivery_tag, requeue=requeue)
        except _unreachable(self.channel):
            if not requeue:
                raise
        # The message stays in ``unacked``: hand it over instead of failing the requeue.
        keep(delivery_tag, self._envelope_of(delivery_tag))
        virtual.QoS.ack(self, delivery_tag)
        log.warning("broker unreachable: message %s will go back on its queue on reconnect", delivery_tag)
        return None

    def restore_unacked(self, client=None):
        if not connection.is_down("broker"):
            try:
                return super().restore_unacked(client)
            except _unreachable(self.channel) as err:
                connection.mark_down("broker", err)
        running = _running_tags()
        kept = 0
        for tag in list(self._delivered):
            if str(tag) not in running:
                keep(tag, self._envelope_of(tag))
                kept += 1
            else:
                envelope = self._envelope_of(tag)
                if envelope is not None:
                    self._remembered()[str(tag)] = envelope
        self._delivered.clear()
        if kept:
            log.warning("broker unreachable: keeping %d prefetched message(s) to put back on reconnect", kept)
        return None


class _ClosedConnection:
    """What kombu's Sentinel channel reads off its connection, for a channel whose connection is closed."""

    def __init__(self, alt: list, default_port: int) -> None:
        self.client = self
        self.alt = alt
        self.default_port = default_port


if TYPE_CHECKING:
    _ChannelBase = kombu_redis.SentinelChannel
else:
    _ChannelBase = object


class HandoverChannelMixin(_ChannelBase):
    """A Redis channel with :class:`HandoverQoS`, remembered connection parameters,
    and one redis-py client per connection pool.

    kombu's ``conn_or_acquire()`` builds a new ``redis.Redis`` object for every
    operation (each ack, each delivery record, each restore): about 0.1 ms of
    CPU apiece in the worker's main process, twice per job. A client on a
    shared pool is stateless and thread-safe, so the channel keeps one and
    builds a new one only when its pool is replaced (after a reconnect).
    """

    QoS = HandoverQoS
    connection: Any  # the transport, set by kombu's Channel

    def conn_or_acquire(self, client=None):
        if client:
            return contextlib.nullcontext(client)
        pool = self.pool
        cached = self.__dict__.get("_resilience_client")
        if cached is None or cached.connection_pool is not pool:
            cached = self.__dict__["_resilience_client"] = self._create_client()
        return contextlib.nullcontext(cached)

    def _connparams(self, asynchronous=False):
        transport = self.connection
        if transport is not None and transport.client is not None and not isinstance(transport, _ClosedConnection):
            params = super()._connparams(asynchronous=asynchronous)
            self.__dict__.setdefault("_resilience_connparams", {})[asynchronous] = dict(params)
            return params
        remembered = self.__dict__.get("_resilience_connparams", {}).get(asynchronous)
        if remembered is None:
            return super()._connparams(asynchronous=asynchronous)
        return dict(remembered)

    def _sentinel_managed_pool(self, asynchronous=False):
        """kombu's Sentinel pool, also on a closed channel (it reads the sentinels off the connection)."""
        transport = self.connection
        if transport is not None and transport.client is not None:
            self.__dict__["_resilience_sentinels"] = (list(transport.client.alt), transport.default_port)
            return super()._sentinel_managed_pool(asynchronous)
        remembered = self.__dict__.get("_resilience_sentinels")
        if remembered is None:
            return super()._sentinel_managed_pool(asynchronous)
        alt, default_port = remembered
        self.connection = _ClosedConnection(alt, default_port)
        try:
            return super()._sentinel_managed_pool(asynchronous)
        finally:
            self.connection = transport


_channel_classes: dict[type, type] = {}


def use_on(conn) -> bool:
    """Give a kombu connection's Redis transport the hand-over channel (before it connects).

    Only the worker's consumer connection needs it; other transports are left as they are.
    """
    transport = conn.transport
    base = getattr(transport, "Channel", None)
    if not isinstance(transport, kombu_redis.Transport) or not isinstance(base, type) \
            or not issubclass(base, kombu_redis.Channel):
        return False
    if issubclass(base, HandoverChannelMixin):
        return True
    with _lock:
        cls = _channel_classes.get(base)
        if cls is None:
            cls = _channel_classes[base] = type(f"Handover{base.__name__}", (HandoverChannelMixin, base), {})
    transport.Channel = cls  # type: ignore[assignment]  # a subclass of the transport's Channel
    return True
