"""Pool events: the pub/sub channel ``fc:pool:<id>:events`` (``keys.events_channel``).

Publishers are the pool scripts (:mod:`fused_celery.state.scripts`): every state change that a
waiter cares about (entries finished, cancelled or retried) PUBLISHes the record's new version.
A worker's finish in a *small* pool (at most :data:`SMALL_POOL_ENTRIES` entries) publishes JSON
``{v, c, s, o, l}`` instead -- the version and the ``counts``, ``state``, ``outcome`` and ``logs``
hashes -- when that fits in :data:`EVENT_PAYLOAD_MAX_BYTES`, so a waiting client needs no read.
Either is followed by :data:`DONE_SUFFIX` when the change left no entry pending or running (a
waiter sleeping between two reads, see :meth:`PoolEvents.wait_done`, wakes for it at once).

The listener is :class:`PoolEvents`: one pub/sub connection per Redis URL, shared by every pool a
process watches.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from typing import Any

import redis

from fused_celery.state import keys
from fused_celery.state.connection import mask_url

#: Pools of at most this many entries are *small*: a client reads their states, outcomes and
#: logs along with the counts, and a worker's ``finish`` puts them in the pool's event.
SMALL_POOL_ENTRIES = 8

#: The largest event payload (JSON of a small pool's state) a worker publishes; a larger
#: state is announced by its version only, and clients read it.
EVENT_PAYLOAD_MAX_BYTES = 16 * 1024

#: A client's event listener keeps the latest payload of this many pools (it hears every pool).
EVENT_PAYLOADS_KEPT = 256

#: The end of an event after which no entry of the pool is pending or running (``done_suffix``
#: in ``_pool_entry.lua``).
DONE_SUFFIX = ":done"

_instances_lock = threading.Lock()


def _keep_latest(kept: OrderedDict[str, Any], pool_id: str, value: Any) -> None:
    """Set ``kept[pool_id]`` as the newest entry; drop the oldest beyond
    :data:`EVENT_PAYLOADS_KEPT` (the listener hears every pool of its Redis)."""
    kept[pool_id] = value
    kept.move_to_end(pool_id)
    while len(kept) > EVENT_PAYLOADS_KEPT:
        kept.popitem(last=False)


class PoolEvents:
    """One pub/sub connection per Redis URL, shared by every pool this process watches.

    A daemon thread PSUBSCRIBEs to ``fc:pool:*:events`` and bumps a per-pool counter for each
    message; :meth:`wait` blocks until a pool's counter moves past a token taken earlier. The
    thread reconnects by itself; while it is disconnected, :attr:`connected` is False and
    callers fall back to polling. A token also names the subscription it was taken under, so
    a wait on a token from before a reconnect (events may have been missed) returns at once.
    """

    _instances: dict[str, PoolEvents] = {}

    def __init__(self, url: str) -> None:
        self.url = url
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        # wait_done's waiters, on the same lock: woken by events that end with DONE_SUFFIX (and
        # by (re)subscriptions and disconnects), not by the thousands of others a large pool's
        # workers send while the waiter pauses between two reads
        self._done_cond = threading.Condition(lock)
        self._versions: dict[str, int] = {}
        # pool -> (event count, JSON state, time.monotonic() when heard) of its latest event,
        # when that event carried the pool's state
        self._payloads: OrderedDict[str, tuple[int, str, float]] = OrderedDict()
        # pool -> event count of its latest event that ended with DONE_SUFFIX
        self._done: OrderedDict[str, int] = OrderedDict()
        self._epoch = 0  # subscriptions made so far
        self._connected = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"fused-celery-events {mask_url(url)}", daemon=True
        )
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> PoolEvents:
        """The shared listener of ``url`` (started on first use)."""
        with _instances_lock:
            found = cls._instances.get(url)
            if found is None:
                found = cls._instances[url] = cls(url)
        return found

    @classmethod
    def existing(cls, url: str) -> PoolEvents | None:
        """The listener of ``url`` if one was started (None: none yet; nothing is started)."""
        return cls._instances.get(url)

    @property
    def connected(self) -> bool:
        """True while the listener is subscribed."""
        return self._connected.is_set()

    def ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the subscription; True when subscribed."""
        return self._connected.wait(timeout)

    def token(self, pool_id: str) -> tuple[int, int] | None:
        """``(subscription, event count)`` of the pool now (pass it to :meth:`wait`); None
        while disconnected (events may be missed then)."""
        with self._cond:
            if not self.connected:
                return None
            return self._epoch, self._versions.get(pool_id, 0)

    def latest(self, pool_id: str) -> tuple[tuple[int, int], str, float] | None:
        """``(token, payload, when heard)`` of the pool's latest event if it carried the JSON
        state a worker put in it (small pools, see ``pool_finish.lua``); else (or while
        disconnected) None. ``when heard`` is a ``time.monotonic()`` time."""
        with self._cond:
            if not self.connected:
                return None
            count = self._versions.get(pool_id, 0)
            found = self._payloads.get(pool_id)
            if found is None or found[0] != count:
                return None
            return (self._epoch, count), found[1], found[2]

    def wait(self, pool_id: str, token: tuple[int, int] | None, timeout: float) -> bool:
        """Block until an event for ``pool_id`` arrived after ``token`` (at once for a token
        of an earlier subscription, or None, or while disconnected); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (
                    token != (self._epoch, self._versions.get(pool_id, 0)) or not self.connected
                ),
                timeout=timeout,
            )

    def wait_done(self, pool_id: str, token: tuple[int, int], timeout: float) -> bool:
        """Block up to ``timeout`` seconds until an event of ``pool_id`` that ends with
        :data:`DONE_SUFFIX` arrives after ``token`` (see :meth:`token`); True then, or at once
        for a token of an earlier subscription or while disconnected; False on timeout."""
        with self._cond:
            return self._done_cond.wait_for(
                lambda: (
                    token[0] != self._epoch
                    or self._done.get(pool_id, -1) > token[1]
                    or not self.connected
                ),
                timeout=timeout,
            )

    def _run(self) -> None:
        client = redis.Redis.from_url(
            self.url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
        )
        pattern = keys.events_channel("*")
        while True:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(pattern)
                pubsub.get_message(timeout=1.0)  # the subscription confirmation
                with self._cond:
                    self._epoch += 1
                    self._payloads.clear()
                    self._done.clear()
                    self._connected.set()
                    self._done_cond.notify_all()
                while True:
                    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None or message.get("type") != "pmessage":
                        continue
                    pool_id = str(message["channel"]).split(":")[2]
                    data = message.get("data")
                    with self._cond:
                        count = self._versions[pool_id] = self._versions.get(pool_id, 0) + 1
                        if isinstance(data, str) and data.endswith(DONE_SUFFIX):
                            data = data[: -len(DONE_SUFFIX)]
                            _keep_latest(self._done, pool_id, count)
                            self._done_cond.notify_all()
                        if isinstance(data, str) and data.startswith("{"):
                            _keep_latest(self._payloads, pool_id, (count, data, time.monotonic()))
                        else:
                            self._payloads.pop(pool_id, None)
                        self._cond.notify_all()
            except Exception:  # noqa: BLE001 - reconnect on any failure
                self._connected.clear()
                with self._cond:
                    self._cond.notify_all()
                    self._done_cond.notify_all()
                with contextlib.suppress(Exception):
                    pubsub.close()
                time.sleep(0.5)
