"""The backlog as the autoscaler reads it (one Lua call on a real Redis): queued messages of
every priority list, unacknowledged ones by queue, and pools' remaining entries weighted by
their batch size and capped by their lanes."""

from __future__ import annotations

import json

import redis

from fused_celery.autoscale.metrics import queue_lists, read_backlog
from fused_celery.autoscale.policy import Backlog
from fused_celery.engines import PoolSpec
from fused_celery.engines.celery.client import CeleryEngine
from fused_celery.options import options


def _pool(queue: str, n: int, batch_size: int = 1, max_workers: int | None = None) -> str:
    spec = PoolSpec(
        udf={"name": "u", "entrypoint": "u", "code": "def u(x):\n    return x\n"},
        args=[{"x": i} for i in range(n)],
        encoded=[{"x": {"j": i}} for i in range(n)],
        batch_size=batch_size,
        max_workers=max_workers,
        queue=queue,
    )
    engine = CeleryEngine(spec)
    engine.submit()
    return engine.pool_id


def test_backlog_in_one_call(fused_options, redis_url, monkeypatch):
    monkeypatch.setattr(options, "autoscale_submit_check", False)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    _pool("m5.large", 10, batch_size=4)  # 3 messages, 3 slots
    _pool("m5.large", 20, max_workers=2)  # 2 messages (lanes), 2 slots
    _pool("r5.large", 5)
    client.lpush(queue_lists("m5.large")[2], "{}")  # a message on a priority list
    client.hset(
        "unacked", "tag1", json.dumps([{"headers": {}}, "", "m5.large"])
    )  # delivered, not acked
    client.hset("unacked", "tag2", json.dumps([{"headers": {}}, "", "fused"]))
    seen = read_backlog(client, ["m5.large", "r5.large", "m5.xlarge"])
    large = seen["m5.large"]
    assert (large.ready, large.in_flight, large.pool_slots, large.pending) == (6, 1, 5, 30)
    assert seen["r5.large"].ready == 5 and seen["r5.large"].pool_slots == 5
    assert seen["m5.xlarge"].backlog() == Backlog()
    assert large.backlog(busy_workers=1) == Backlog(6, 1, 5, 1)
