"""Put kombu messages back on their queues, exactly once, as kombu itself would.

Two parts of the platform hand messages back to the broker outside kombu's
own ``restore_by_tag``: the stuck-job sweep (messages in ``unacked`` that no
live worker holds) and the worker's hand-over (:mod:`resilience.handover`:
messages a worker received but could not keep across a broker connection
loss). Both go through :func:`restore`, one Lua step per message
(``lua/unacked_restore.lua``) that compares the ``unacked`` entry with what
the caller read first, so two restorers, or a restorer racing a late ack,
never push a message twice.

Queue and priority are resolved like kombu's ``_do_restore_message``: the
exchange's bindings name the queue, the message's priority picks the
priority step, and the message is marked redelivered.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from resilience.keys import keys
from resilience.store import load_script

log = logging.getLogger(__name__)

__all__ = ["Candidate", "Restored", "restore", "queues_for", "priority_step"]

#: kombu's priority steps and its binding separator (kombu.transport.redis).
_PRIORITY_STEPS = (0, 3, 6, 9)
_BINDING_SEP = "\x06\x16"


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
            errors: list[str] | None = None) -> list[Restored]:
    """Push each candidate back on its queue (two round trips for all); return those pushed."""
    if not candidates:
        return []
    k = keys()
    unacked = k.kombu_unacked(transport_options)
    stored = r.hmget(unacked, [c.tag for c in candidates])
    planned = []
    for candidate, raw in zip(candidates, stored):
        expected = raw if raw is not None else ""
        envelope = _envelope(raw) if raw is not None else candidate.fallback
        if raw is not None and envelope is None:
            if errors is not None:
                errors.append(f"unreadable unacked entry {candidate.tag}")
            continue
        if envelope is None:
            continue  # acked, or put back by someone else, meanwhile
        payload, exchange, routing_key = envelope
        planned.append((candidate, expected, payload, exchange or "", routing_key or ""))
    bindings = _bindings(r, {exchange for _, _, _, exchange, _ in planned if exchange})

    script = load_script("unacked_restore")
    pipe = r.pipeline(transaction=False)
    queued = []
    for candidate, expected, payload, exchange, routing_key in planned:
        _mark_redelivered(payload)
        queue = queues_for(bindings, exchange, routing_key)[0]  # a task message has one queue
        script(keys=[unacked, k.kombu_unacked_index(transport_options),
                     k.kombu_queue(queue, priority_step(payload)), k.active, k.active_deadlines],
               args=[candidate.tag, expected, json.dumps(payload), candidate.job_id, candidate.owner],
               client=pipe)
        queued.append(Restored(candidate, queue, payload))
    return [done for done, pushed in zip(queued, pipe.execute()) if pushed]


def _envelope(raw: str) -> list | None:
    try:
        payload, exchange, routing_key = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return [payload, exchange, routing_key] if isinstance(payload, dict) else None


def _bindings(r, exchanges: set[str]) -> dict[str, list[str]]:
    if not exchanges:
        return {}
    k = keys()
    pipe = r.pipeline(transaction=False)
    ordered = sorted(exchanges)
    for exchange in ordered:
        pipe.smembers(k.kombu_binding(exchange))
    return dict(zip(ordered, pipe.execute()))


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
