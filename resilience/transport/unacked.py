"""Put kombu messages back on their queues, exactly once, as kombu itself would.

Two parts of the platform hand messages back to the broker outside kombu's
own ``restore_by_tag``: the stuck-job sweep (messages in ``unacked`` that no
live worker holds) and the worker's hand-over (:mod:`resilience.transport.handover`:
messages a worker received but could not keep across a broker connection
loss). Both go through :func:`restore`, one Lua step per message
(``lua/unacked_restore.lua``) that compares the ``unacked`` entry with what
the caller read first, so two restorers, or a restorer racing a late ack,
never push a message twice. With replica acknowledgement on
(``REDIS_MIN_REPLICAS_ACK``), the pushes are followed by ``WAIT`` and
:class:`~resilience.errors.ReplicasBehind` is raised when too few replicas
confirm them: the caller keeps the messages and puts them back again.

Queue and priority are resolved like kombu's ``_do_restore_message``: the
exchange's bindings name the queue, the message's priority picks the
priority step, and the message is marked redelivered.

An ``unacked`` entry that is not a kombu envelope (:data:`ENVELOPE`) is moved
to the quarantine with its ``unacked_index`` entry, and the other messages go
back as usual; a queue or binding key of the wrong type holds back only the
messages bound for it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from resilience.core.keys import keys
from resilience.core.quarantine import NULL, OBJECT, TEXT, Batch, Reply, Row, Shape, one_of
from resilience.core.store import load_script

log = logging.getLogger(__name__)

__all__ = ["Candidate", "Restored", "restore", "queues_for", "priority_step", "MESSAGE", "ENVELOPE"]

#: kombu's priority steps and its binding separator (kombu.transport.redis).
_PRIORITY_STEPS = (0, 3, 6, 9)
_BINDING_SEP = "\x06\x16"

#: A kombu message as the Redis transport stores it: what a consumer needs of it to take it
#: (kombu's ``Message`` reads ``properties["delivery_tag"]``), and what the platform reads.
MESSAGE = Shape({"body": TEXT, "headers": OBJECT, "content-type": TEXT, "content-encoding": TEXT,
                 "properties": Shape({"delivery_tag": TEXT, "delivery_info": OBJECT, "body_encoding": TEXT},
                                     required=("delivery_tag",))},
                required=("body", "headers", "properties"))
#: An ``unacked`` entry: ``[message, exchange, routing key]``.
ENVELOPE = Row((MESSAGE, one_of(TEXT, NULL), one_of(TEXT, NULL)))


@dataclass(frozen=True)
class Candidate:
    """A message to put back.

    ``fallback`` is the ``[payload, exchange, routing key]`` envelope the caller
    holds for a message that may never have reached ``unacked`` (a worker
    popped it, then lost Redis before recording it); it is pushed only while
    ``unacked`` has no entry for the tag. Without it the message goes back only
    if its ``unacked`` entry is still there.
    """

    tag: str
    fallback: list | None = None
    job_id: str = ""
    owner: str = ""


@dataclass(frozen=True)
class Restored:
    candidate: Candidate
    queue: str
    payload: dict


def restore(r, candidates: list[Candidate], transport_options: dict | None = None,
            batch: Batch | None = None) -> list[Restored]:
    """Push each candidate back on its queue (three round trips for all); return those pushed.

    Bad ``unacked`` entries go to ``batch`` (flushed by its owner), or, without
    one, to the quarantine before this returns.
    """
    if not candidates:
        return []
    own = batch is None
    batch = batch if batch is not None else Batch("hand-over")
    k = keys()
    unacked, index = k.kombu_unacked(transport_options), k.kombu_unacked_index(transport_options)
    pipe = r.pipeline(transaction=False)
    pipe.hmget(unacked, [c.tag for c in candidates])
    (stored,) = batch.execute(pipe, [Reply(unacked, "hash", lambda: [None] * len(candidates))])
    planned = []
    for candidate, raw in zip(candidates, stored, strict=True):
        expected = raw if raw is not None else ""
        if raw is None:
            envelope = candidate.fallback  # None: acked, or put back by someone else, meanwhile
        else:
            envelope = batch.hash_value(unacked, candidate.tag, raw, ENVELOPE, companion=index)
        if envelope is None:
            continue
        payload, exchange, routing_key = envelope
        planned.append((candidate, expected, payload, exchange or "", routing_key or ""))
    bindings = _bindings(r, {exchange for _, _, _, exchange, _ in planned if exchange}, batch)

    script = load_script("unacked_restore")
    pipe = r.pipeline(transaction=False)
    queued = []
    for candidate, expected, payload, exchange, routing_key in planned:
        _mark_redelivered(payload)
        queue = queues_for(bindings, exchange, routing_key)[0]  # a task message has one queue
        queue_key = k.kombu_queue(queue, priority_step(payload))
        script(keys=[unacked, index, queue_key, k.active, k.active_deadlines],
               args=[candidate.tag, expected, json.dumps(payload), candidate.job_id, candidate.owner],
               client=pipe)
        queued.append((Restored(candidate, queue, payload), Reply(queue_key, "list", 0)))
    reads = [read for _, read in queued]
    wanted, timeout_ms = _replicas_wanted()
    if queued and wanted:  # on the same connection: the replicas have these pushes, or they may be lost
        pipe.wait(wanted, timeout_ms)
        reads.append(Reply("", "wait", 0))
    pushed = batch.execute(pipe, reads) if queued else []
    if own:
        batch.flush(r)
    if queued and wanted:
        from resilience.core.replication import confirm

        confirm(pushed.pop(), wanted, timeout_ms, f"putting back {len(queued)} message(s)")
    return [done for (done, _), ok in zip(queued, pushed, strict=True) if ok]


def _replicas_wanted() -> tuple[int, int]:
    """``REDIS_MIN_REPLICAS_ACK`` and its timeout (see :mod:`resilience.replication`)."""
    from resilience.core.settings import get_settings

    settings = get_settings()
    return settings.redis_min_replicas_ack, settings.redis_replica_ack_timeout_ms


def _bindings(r, exchanges: set[str], batch: Batch) -> dict[str, list[str]]:
    if not exchanges:
        return {}
    k = keys()
    pipe = r.pipeline(transaction=False)
    ordered = sorted(exchanges)
    for exchange in ordered:
        pipe.smembers(k.kombu_binding(exchange))
    members = batch.execute(pipe, [Reply(k.kombu_binding(exchange), "set", set) for exchange in ordered])
    return dict(zip(ordered, members, strict=True))


def queues_for(bindings: dict, exchange: str, routing_key: str) -> list[str]:
    """kombu's ``_lookup`` for direct exchanges; the routing key names the queue otherwise."""
    matches = []
    for member in bindings.get(exchange) or ():
        rk, _, queue = member.split(_BINDING_SEP, 2) if member.count(_BINDING_SEP) == 2 else ("", "", "")
        if queue and rk == routing_key:
            matches.append(queue)
    return matches or [routing_key or exchange or "celery"]


def priority_step(payload: dict) -> int:
    """kombu's priority step of a message (its ``_get_message_priority`` and ``priority``)."""
    try:
        value = int((payload.get("properties") or {}).get("priority") or 0)
    except (TypeError, ValueError):
        value = 0
    value = max(0, min(9, value))
    return max(step for step in _PRIORITY_STEPS if step <= value)


def _mark_redelivered(payload: dict) -> None:
    """As kombu's ``_do_restore_message``: the message says it was delivered before."""
    try:
        payload["headers"]["redelivered"] = True
        payload["properties"]["delivery_info"]["redelivered"] = True
    except (KeyError, TypeError):
        pass
