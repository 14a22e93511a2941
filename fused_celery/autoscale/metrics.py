"""The autoscaler's observations: each queue's backlog from Redis (one round trip per cycle for
all queues) and which workers are alive and busy (one Celery broadcast).

The backlog is read by one read-only Lua script (``state/scripts/autoscale_backlog.lua``): the
length of each queue's lists as kombu's Redis transport keeps them (one list per priority step),
the delivered-but-unacknowledged messages of kombu's ``unacked`` hash routed to each queue, and
the pending / running entries of the pools routed to each queue (see
:class:`~fused_celery.autoscale.policy.Backlog`). Busy workers come from Celery's ``inspect
active`` (a worker answers from its main process, so a worker running long entries answers too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from fused_celery.autoscale.policy import Backlog
from fused_celery.options import options
from fused_celery.state import keys, scripts

#: Seconds to wait for workers' answers to ``inspect active``.
INSPECT_TIMEOUT = 1.0


def queue_lists(queue: str) -> list[str]:
    """The Redis lists of ``queue`` in kombu's transport (one per priority step)."""
    return [f"{queue}{Channel.sep}{p}" if p else queue for p in PRIORITY_STEPS]


@dataclass(frozen=True)
class QueueBacklog:
    """One queue's backlog as read: ``ready`` messages, ``in_flight`` (unacknowledged) ones, the
    pools' ``pool_slots``, ``pending`` and ``running`` entries."""

    ready: int = 0
    in_flight: int = 0
    pool_slots: int = 0
    pending: int = 0
    running: int = 0

    def backlog(self, busy_workers: int = 0) -> Backlog:
        """The policy's :class:`~fused_celery.autoscale.policy.Backlog`."""
        return Backlog(self.ready, self.in_flight, self.pool_slots, busy_workers)


def read_backlog(
    client: redis.Redis, queues: Sequence[str], *, now: float | None = None
) -> dict[str, QueueBacklog]:
    """Every queue's backlog in one round trip. client: the broker's Redis. Pools count by their
    remaining entries when their records live there too (the result backend is the broker, the
    default); otherwise, and for pools older than ``options.autoscale_pool_lookback``, by their
    messages only."""
    if not queues:
        return {}
    now = time.time() if now is None else now
    suffixes = [name[len("q") :] for name in queue_lists("q")]
    raw = scripts.autoscale_backlog(
        client,
        keys={"pools": keys.POOLS_INDEX, "unacked": Channel.unacked_key},
        args={
            "since": repr(now - options.autoscale_pool_lookback),
            "pool_prefix": f"{keys.PREFIX}:pool:",
            "suffixes": json.dumps(suffixes),
            "queues": list(queues),
        },
    )
    data = json.loads(raw) if raw else {}
    return {q: QueueBacklog(**{k: int(v) for k, v in (data.get(q) or {}).items()}) for q in queues}


@dataclass(frozen=True)
class WorkerActivity:
    """Workers that answered: ``active`` hostname -> messages running, ``queues`` hostname ->
    queues it consumes."""

    active: dict[str, int] = field(default_factory=dict)
    queues: dict[str, list[str]] = field(default_factory=dict)

    def busy_on(self, queue: str) -> list[str]:
        """Hostnames consuming ``queue`` with a message running."""
        return sorted(h for h, qs in self.queues.items() if queue in qs and self.active.get(h))


def worker_activity(broker_url: str, timeout: float = INSPECT_TIMEOUT) -> WorkerActivity:
    """Ask every worker what it runs and consumes (one broadcast with two replies each)."""
    from fused_celery.celery_app import control_app

    app = control_app(broker_url)
    try:
        inspect = app.control.inspect(timeout=timeout)
        active = inspect.active() or {}
        consumed = inspect.active_queues() or {}
    finally:
        app.close()
    return WorkerActivity(
        {h: len(tasks or []) for h, tasks in active.items()},
        {h: [q.get("name") for q in qs or []] for h, qs in consumed.items()},
    )
