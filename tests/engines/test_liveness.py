"""Dead workers found by heartbeat (fused_celery.engines.celery.liveness), against a real Redis:
which unacknowledged messages count as orphans, and when they are given back."""

from __future__ import annotations

import time

import redis

from fused_celery.engines.celery.liveness import beat, orphans, sweep
from fused_celery.engines.celery.lost import KOMBU_UNACKED_INDEX
from fused_celery.state.keys import WORKERS_INDEX, worker_key


def test_only_messages_no_live_worker_holds_are_orphans(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    now = time.time()
    client.zadd(KOMBU_UNACKED_INDEX, {"held": now - 100, "dead": now - 100, "young": now - 1})
    beat(client, "alive@h", ["held"], timeout=30)
    beat(client, "gone@h", ["dead"], timeout=0.05)
    time.sleep(0.1)  # gone@h stopped beating: its heartbeat expired
    assert orphans(client, now=now, timeout=10) == ["dead"]  # "young": delivered 1 s ago
    assert client.smembers(WORKERS_INDEX) == {"alive@h"}  # the dead one is forgotten
    assert client.pttl(worker_key("alive@h")) > 0


def test_an_orphan_is_given_back_only_when_still_one_half_a_timeout_later(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    now = time.time()
    client.zadd(KOMBU_UNACKED_INDEX, {"a": now - 100, "b": now - 100})
    restored: list[str] = []
    suspects: dict[str, float] = {}
    assert sweep(client, restored.append, suspects, now=now, timeout=10) == []
    assert set(suspects) == {"a", "b"}
    beat(client, "late@h", ["b"], timeout=30)  # a live worker that beats late (Redis restart)
    assert sweep(client, restored.append, suspects, now=now + 4, timeout=10) == []  # too soon
    assert sweep(client, restored.append, suspects, now=now + 5, timeout=10) == ["a"]
    assert restored == ["a"] and suspects == {}
