"""Pool events (``fused_celery.state.events``): the shared listener of a Redis URL."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any

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


def test_plain_events_do_not_wake_a_wait_done(redis_url: str) -> None:
    """A waiter pausing in ``wait_done`` sleeps through the plain events of a large pool (one
    per finished entry) and wakes for the done one: its condition is checked a few times, not
    once per event."""
    events = PoolEvents(redis_url)  # a listener of its own: its ``_done`` map is counted
    assert events.ready(5.0)
    checks = []

    class Counting(OrderedDict):  # type: ignore[type-arg]
        def get(self, *args: Any) -> Any:
            checks.append(1)
            return super().get(*args)

    with events._cond:
        events._done = Counting(events._done)
    token = events.token("pw")
    assert token is not None
    woke = threading.Event()
    waiter = threading.Thread(
        target=lambda: events.wait_done("pw", token, 30.0) and woke.set(), daemon=True
    )
    waiter.start()
    time.sleep(0.2)  # the waiter is asleep in wait_done
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for version in range(1, 201):
        client.publish(keys.events_channel("pw"), version)
    deadline = time.monotonic() + 10
    while events.token("pw") != (token[0], 200) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert events.token("pw") == (token[0], 200) and not woke.is_set()
    client.publish(keys.events_channel("pw"), "201:done")
    assert woke.wait(5.0)
    assert len(checks) <= 5, f"wait_done checked its condition {len(checks)} times"
    client.close()
