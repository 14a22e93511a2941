"""Pool events (``fused_celery.state.events``): the shared listener of a Redis URL."""

from __future__ import annotations

import json

import redis

from fused_celery.state import keys
from fused_celery.state.events import PoolEvents


def test_listener_counts_events_and_keeps_state_payloads(redis_url: str) -> None:
    events = PoolEvents.for_url(redis_url)
    assert PoolEvents.for_url(redis_url) is events and PoolEvents.existing(redis_url) is events
    assert events.ready(5.0) and events.connected
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    token = events.token("p1")
    assert token is not None
    assert not events.wait("p1", token, 0.05), "nothing published yet"
    client.publish(keys.events_channel("p1"), 7)
    assert events.wait("p1", token, 5.0)
    assert events.latest("p1") is None, "a bare version carries no state"
    payload = json.dumps({"v": 8, "c": {"success": "1"}, "s": {}, "o": {}, "l": {}})
    token = events.token("p1")
    client.publish(keys.events_channel("p1"), payload)
    assert events.wait("p1", token, 5.0)
    latest = events.latest("p1")
    assert latest is not None and latest[1] == payload and latest[0] == events.token("p1")
    assert events.token("p2") != events.token("p1")  # per pool


def test_a_done_event_ends_wait_done_for_tokens_taken_before_it(redis_url: str) -> None:
    events = PoolEvents.for_url(redis_url)
    assert events.ready(5.0)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    before = events.token("pd")
    assert before is not None
    client.publish(keys.events_channel("pd"), 3)
    assert events.wait("pd", before, 5.0)
    assert not events.wait_done("pd", before, 0.05), "a plain version is not the end"
    client.publish(keys.events_channel("pd"), "4:done")
    assert events.wait_done("pd", before, 5.0)
    after = events.token("pd")
    assert after is not None
    assert not events.wait_done("pd", after, 0.05), "a done event before the token does not count"
    assert not events.wait_done("other", before, 0.05), "per pool"
    payload = json.dumps({"v": 5, "c": {"success": "1"}, "s": {}, "o": {}, "l": {}})
    client.publish(keys.events_channel("pd"), payload + ":done")  # a small pool's last event
    assert events.wait_done("pd", after, 5.0)
    latest = events.latest("pd")
    assert latest is not None and latest[1] == payload, "the state, without the suffix"
