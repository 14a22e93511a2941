"""Dead workers: each worker's heartbeat names the messages it holds; any worker gives back to
their queue the messages that no live worker holds.

Why: kombu's Redis transport keeps a delivered message in its ``unacked`` hash until the worker
acknowledges it, and gives it back only after ``visibility_timeout`` (7,200 s by default, kept
above the task time limit so that a long task is not delivered twice). A worker whose main
process dies (SIGKILL, out of memory, machine gone) never acknowledges: its ``running`` entries
and chord members would wait that long.

:class:`Heartbeat` (a consumer bootstep of every worker, registered by
:mod:`fused_celery.celery_app`) runs a thread in the worker's main process. Every
``options.worker_heartbeat_timeout / 4`` seconds it writes the kombu delivery tags of the
messages the worker holds (received, waiting for their ETA, running) to
``fc:worker:<hostname>`` with a TTL of one timeout (:func:`beat`), then sweeps
(:func:`sweep`): a message of the unacked hash delivered more than a timeout ago that no live
worker's heartbeat names is an orphan; one still an orphan half a timeout later is given back to
its queue by kombu's own ``restore_by_tag`` (marked redelivered; the record then tells the
worker that takes it what is left to do). So a dead worker's messages are back in their queue
within two heartbeat timeouts of its death. A live worker's messages never are, unless the
worker cannot write its heartbeat for longer than a timeout (Redis unreachable from it, its
main process stalled): then it counts as dead and its work may run twice (results are still
recorded once). The half-timeout confirmation lets live workers write their heartbeat again
after a Redis restart before anything is given back.

Hand-written because neither Celery nor kombu has it: Celery's worker heartbeat events tell
Flower who is alive, but nothing maps a dead worker to its unacknowledged messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state as worker_state

from fused_celery.engines.celery.lost import KOMBU_UNACKED_INDEX
from fused_celery.options import options
from fused_celery.state.connection import redis_client
from fused_celery.state.keys import PLACEHOLDER, WORKERS_INDEX, worker_key

logger = logging.getLogger(__name__)

#: At most this many old unacknowledged messages are looked at per sweep.
SWEEP_MAX = 10_000


def heartbeat_period(timeout: float) -> float:
    """Seconds between two heartbeats (and sweeps) for a heartbeat ``timeout``."""
    return max(0.05, timeout / 4)


def held_tags(consumer: Any) -> set[str]:
    """Delivery tags of the messages a worker's consumer holds: its channel's delivered and not
    yet acknowledged messages (ETA ones included) and the requests it reserved or runs (those
    may come from a channel closed by a reconnection). Read from another thread: retried when a
    set changes while it is copied."""
    for _ in range(10):
        try:
            tags: set[str] = set()
            channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
            qos = getattr(channel, "_qos", None)  # (the ``qos`` property would make one)
            delivered = getattr(qos, "_delivered", None)
            if delivered:
                tags.update(str(t) for t in list(delivered))
            requests = [*worker_state.active_requests, *worker_state.reserved_requests]
            for request in requests:
                tag = getattr(getattr(request, "message", None), "delivery_tag", None)
                if tag:
                    tags.add(str(tag))
            return tags
        except RuntimeError:  # changed size during iteration: read again
            continue
    raise RuntimeError("the worker's held messages kept changing while read")


def beat(client: redis.Redis, hostname: str, tags: Iterable[str], timeout: float) -> None:
    """Write worker ``hostname``'s heartbeat: the tags it holds, alive for ``timeout`` s."""
    key = worker_key(hostname)
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.sadd(key, PLACEHOLDER, *tags)
    pipe.pexpire(key, max(1, int(timeout * 1000)))
    pipe.sadd(WORKERS_INDEX, hostname)
    pipe.execute()


def orphans(client: redis.Redis, *, now: float, timeout: float) -> list[str]:
    """Tags of the unacknowledged messages delivered before ``now - timeout`` that no live
    worker's heartbeat names (forgets the workers whose heartbeat expired)."""
    old = client.zrange(
        KOMBU_UNACKED_INDEX, "-inf", now - timeout, byscore=True, offset=0, num=SWEEP_MAX
    )
    if not old:
        return []
    hosts = sorted(client.smembers(WORKERS_INDEX))
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        pipe.smembers(worker_key(host))
    held: set[str] = set()
    dead = []
    for host, tags in zip(hosts, pipe.execute()):
        if tags:
            held.update(tags)
        else:
            dead.append(host)
    if dead:
        client.srem(WORKERS_INDEX, *dead)
    return [tag for tag in old if tag not in held]


def sweep(
    client: redis.Redis,
    restore: Callable[[str], None],
    suspects: dict[str, float],
    *,
    now: float,
    timeout: float,
) -> list[str]:
    """Give back the messages that were orphans (:func:`orphans`) at an earlier sweep at least
    ``timeout / 2`` s ago and still are; remember the new orphans in ``suspects`` (tag -> first
    seen). ``restore(tag)`` puts one back in its queue. Returns the tags given back."""
    found = orphans(client, now=now, timeout=timeout)
    for tag in list(suspects):
        if tag not in found:
            del suspects[tag]
    restored = []
    for tag in found:
        first = suspects.setdefault(tag, now)
        if now - first >= timeout / 2:
            restore(tag)
            del suspects[tag]
            restored.append(tag)
    return restored


class _Beater:
    """The heartbeat thread of one worker (see the module docstring)."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.hostname = str(consumer.hostname)
        self.timeout = float(options.worker_heartbeat_timeout)
        self.stopped = threading.Event()
        self.suspects: dict[str, float] = {}
        self.thread = threading.Thread(target=self.loop, name="fused-heartbeat", daemon=True)

    def restore(self, tag: str) -> None:
        """Put the unacknowledged message ``tag`` back in its queue with kombu's restore."""
        with self.consumer.app.connection_for_write() as conn:
            channel = conn.default_channel
            channel.qos.restore_by_tag(tag, client=channel.client)

    def loop(self) -> None:
        client = redis_client(options.broker_url)
        period = heartbeat_period(self.timeout)
        while not self.stopped.is_set():
            try:
                beat(client, self.hostname, held_tags(self.consumer), self.timeout)
                restored = sweep(
                    client, self.restore, self.suspects, now=time.time(), timeout=self.timeout
                )
                if restored:
                    logger.warning(
                        "fused-celery: gave back %d message(s) held by dead worker(s) (no "
                        "heartbeat for %g s): %s",
                        len(restored),
                        self.timeout,
                        ", ".join(restored[:10]),
                    )
                wait = period
            except Exception:  # noqa: BLE001 - Redis away: try again soon, keep the thread
                logger.debug("fused-celery: heartbeat failed", exc_info=True)
                wait = min(period, 1.0)
            self.stopped.wait(wait)


class Heartbeat(bootsteps.StartStopStep):
    """Consumer bootstep: the heartbeat thread, started once and never stopped: it is a daemon
    thread that ends with the worker's main process. So it goes on through the consumer's
    restarts (a reconnection) and through a warm shutdown, while the last entries finish (a
    thread stopped with the consumer would let other workers give those entries away)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.beater: _Beater | None = None

    def start(self, parent: Any) -> None:
        if self.beater is None:
            self.beater = _Beater(parent)
            self.beater.thread.start()

    def stop(self, parent: Any) -> None:
        """Keep beating (see the class docstring)."""

    def shutdown(self, parent: Any) -> None:
        """Keep beating (see the class docstring)."""


__all__ = ["Heartbeat", "beat", "heartbeat_period", "held_tags", "orphans", "sweep"]
