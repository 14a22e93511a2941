"""Lost messages: pending entries of a pool whose Celery message is nowhere in the broker.

This is Celery/kombu knowledge (kombu's Redis transport keeps a queue as priority lists and
delivered-but-unacknowledged messages in the ``unacked`` hash), so it lives with the Celery
engine, not in :mod:`fused_celery.state`; it reads the pool's record through
:class:`~fused_celery.state.pool_record.PoolRecord`.
"""

from __future__ import annotations

import json

import redis

from fused_celery.state.pool_record import PoolRecord, parse_state
from fused_celery.state.statuses import PENDING

_PENDING_PREFIX = f"{PENDING}|"

#: kombu's Redis transport: the hash of delivered-but-unacknowledged messages, and the suffixes
#: of a queue's priority lists (``queue``, ``queue\x06\x163``, ...; PRIORITY_STEPS 0, 3, 6, 9).
KOMBU_UNACKED = "unacked"
#: kombu's Redis transport: delivery tag -> time delivered, of the messages in ``unacked``.
KOMBU_UNACKED_INDEX = "unacked_index"
KOMBU_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

#: A queue longer than this is not scanned for lost messages (too costly to do in passing).
LOST_SCAN_MAX_QUEUE = 200_000


def _message_id(raw: str) -> str | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
        message = message[0] if message else {}
    headers = message.get("headers") if isinstance(message, dict) else None
    return headers.get("id") if isinstance(headers, dict) else None


def missing_messages(broker: redis.Redis, queue: str, task_ids: set[str]) -> set[str] | None:
    """The ids of ``task_ids`` whose message is in neither ``queue``'s lists nor kombu's
    unacknowledged hash (None when the queue is longer than :data:`LOST_SCAN_MAX_QUEUE`).

    Reads the queue before the unacknowledged hash, the order in which messages move. A worker
    holds a message it has just popped for a moment before kombu records it as unacknowledged:
    an id missing from one scan may be in transit; missing from two scans a few seconds apart,
    it is lost (the worker died in that moment, or Redis lost it)."""
    missing = set(task_ids)
    if not missing:
        return missing
    names = [queue + suffix for suffix in KOMBU_PRIORITY_SUFFIXES]
    lengths = [broker.llen(name) for name in names]
    if sum(lengths) > LOST_SCAN_MAX_QUEUE:
        return None
    for name, length in zip(names, lengths):
        for start in range(0, length, 1000):
            for raw in broker.lrange(name, start, start + 999):
                missing.discard(_message_id(raw) or "")
            if not missing:
                return missing
    for raw in broker.hvals(KOMBU_UNACKED):
        missing.discard(_message_id(raw) or "")
    return missing


def find_lost(
    record: PoolRecord, broker: redis.Redis, queue: str
) -> dict[str, list[tuple[int, int]]] | None:
    """Pending entries whose message is nowhere: ``{task id: [(position, attempt)]}``.

    A message can be lost when Redis goes away at the wrong moment (kombu pops a message with
    BRPOP and records it as unacknowledged in a second command; if the connection drops in
    between, neither Redis nor the worker keeps it). An entry is lost when it is ``pending``
    with a recorded task id that is neither in ``queue``'s lists nor in kombu's unacknowledged
    hash, and still pending afterwards. Reads the queue before the unacknowledged hash, the
    order in which messages move, so a message in transit is not taken for lost. Returns None
    when the queue is too long to scan (:data:`LOST_SCAN_MAX_QUEUE`).
    """
    k = record.keys
    pipe = record.client.pipeline(transaction=False)
    pipe.hgetall(k["state"])
    pipe.hgetall(k["tasks"])
    states, tasks = pipe.execute()
    candidates: dict[str, list[int]] = {}
    for field, value in states.items():
        if value.startswith(_PENDING_PREFIX) and tasks.get(field):
            candidates.setdefault(tasks[field], []).append(int(field))
    if not candidates:
        return {}
    missing = missing_messages(broker, queue, set(candidates))
    if missing is None:
        return None
    if not missing:
        return {}
    positions = [p for t in missing for p in candidates[t]]
    pipe = record.client.pipeline(transaction=False)
    pipe.hmget(k["state"], [str(p) for p in positions])
    pipe.hmget(k["tasks"], [str(p) for p in positions])
    now_states, now_tasks = pipe.execute()
    lost: dict[str, list[tuple[int, int]]] = {}
    for pos, state, task_id in zip(positions, now_states, now_tasks):
        if state and state.startswith(_PENDING_PREFIX) and task_id in missing:
            lost.setdefault(task_id, []).append((pos, parse_state(state)[1]))
    return lost
