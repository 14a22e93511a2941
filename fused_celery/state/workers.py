"""Workers in Redis: who consumes which queue (heartbeats), what each worker is, and which
queues an autoscaler serves.

A worker writes its heartbeat every few seconds (:func:`heartbeat`: one pipeline, off the task
path) and leaves at shutdown (:func:`leave`); a client checks that a queue has a consumer with
one ZCOUNT (:func:`live_consumers`). The autoscaler records the groups it can start workers for
(:func:`publish_served`), so that a queue with no worker yet is still accepted at submit. Keys:
:mod:`fused_celery.state.keys`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from fused_celery.state import keys


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as it describes itself: hostname, queues, concurrency (Celery processes),
    instance_type (None for the default queue), started (epoch seconds)."""

    hostname: str
    queues: tuple[str, ...]
    concurrency: int
    instance_type: str | None
    started: float


@dataclass(frozen=True)
class ServedQueue:
    """A queue an autoscaler serves: max_size workers, disk_size_gb of its launch template
    (None: unknown), until (epoch seconds the entry is valid to)."""

    queue: str
    max_size: int
    disk_size_gb: int | None
    until: float


def heartbeat(
    client: redis.Redis, info: WorkerInfo, *, now: float | None = None, ttl: int | None = None
) -> None:
    """Record that ``info``'s worker consumes its queues now, and its description (kept
    ``ttl`` seconds, default ``result_expires``)."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    for queue in info.queues:
        pipe.zadd(keys.consumers_key(queue), {info.hostname: now})
    body = {
        "queues": list(info.queues),
        "concurrency": info.concurrency,
        "instance_type": info.instance_type,
        "started": info.started,
    }
    pipe.set(keys.worker_info_key(info.hostname), json.dumps(body), ex=ttl or keys.record_ttl())
    pipe.execute()


def leave(client: redis.Redis, hostname: str, queues: Iterable[str]) -> None:
    """Remove ``hostname`` from the consumers of ``queues`` (its description stays, for cost)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zrem(keys.consumers_key(queue), hostname)
    pipe.execute()


def live_consumers(
    client: redis.Redis, queues: Sequence[str], within: float, *, now: float | None = None
) -> dict[str, list[str]]:
    """Hostnames whose heartbeat for each of ``queues`` is at most ``within`` s old (one round
    trip); stale entries are trimmed on the way."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zremrangebyscore(keys.consumers_key(queue), "-inf", now - 10 * within)
        pipe.zrangebyscore(keys.consumers_key(queue), now - within, "+inf")
    out = pipe.execute()
    return {queue: list(out[2 * i + 1]) for i, queue in enumerate(queues)}


def processes_serving(
    client: redis.Redis, queue: str, within: float, *, now: float | None = None
) -> int:
    """Pool processes of the workers that consume ``queue`` now (heartbeat at most ``within`` s
    old): their recorded concurrency, summed; 0 when none does (two round trips)."""
    live = live_consumers(client, [queue], within, now=now)[queue]
    return sum(info.concurrency for info in describe(client, live).values())


def describe(client: redis.Redis, hostnames: Sequence[str]) -> dict[str, WorkerInfo]:
    """The recorded description of each of ``hostnames`` (missing ones are left out)."""
    names = list(dict.fromkeys(h for h in hostnames if h))
    if not names:
        return {}
    found: dict[str, WorkerInfo] = {}
    for name, raw in zip(names, client.mget([keys.worker_info_key(h) for h in names])):
        if not raw:
            continue
        data = json.loads(raw)
        found[name] = WorkerInfo(
            name,
            tuple(data.get("queues") or ()),
            int(data.get("concurrency") or 1),
            data.get("instance_type"),
            float(data.get("started") or 0),
        )
    return found


def publish_served(client: redis.Redis, served: Iterable[ServedQueue]) -> None:
    """Record the queues an autoscaler serves (replacing what it recorded before)."""
    rows: Mapping[str, Any] = {
        s.queue: json.dumps(
            {"max_size": s.max_size, "disk_size_gb": s.disk_size_gb, "until": s.until}
        )
        for s in served
    }
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.AUTOSCALE_SERVED)
    if rows:
        pipe.hset(keys.AUTOSCALE_SERVED, mapping=rows)
    pipe.execute()


def served(client: redis.Redis, queue: str, *, now: float | None = None) -> ServedQueue | None:
    """The autoscaler's record of ``queue`` if it is still valid (None otherwise)."""
    raw = client.hget(keys.AUTOSCALE_SERVED, queue)
    if not raw:
        return None
    data = json.loads(raw)
    entry = ServedQueue(
        queue, int(data.get("max_size") or 0), data.get("disk_size_gb"), float(data["until"])
    )
    now = time.time() if now is None else now
    return entry if entry.until >= now and entry.max_size > 0 else None


#: Seconds a positive answer of :func:`require_served` is reused (per URL and queue).
SERVED_CACHE_SECONDS = 5.0

_served_cache: dict[tuple[str, str], tuple[float, int | None]] = {}


def require_served(
    client: redis.Redis,
    url: str,
    queue: str,
    *,
    within: float,
    disk_size_gb: int | None = None,
) -> None:
    """Raise unless ``queue`` has a live consumer (heartbeat within ``within`` s) or a group an
    autoscaler serves; and, when that group's launch template is known, unless it gives at least
    ``disk_size_gb``. A positive answer is cached :data:`SERVED_CACHE_SECONDS` (so a burst of
    submits costs one round trip); a negative one is asked again every time.

    Raises :class:`~fused_celery.errors.QueueNotServedError` naming the queue and how to start a
    worker for it, or :class:`~fused_celery.errors.DiskSizeError`.
    """
    from fused_celery.errors import DiskSizeError, QueueNotServedError

    now = time.monotonic()
    found = _served_cache.get((url, queue))
    if found is None or now - found[0] > SERVED_CACHE_SECONDS:
        wall = time.time()
        pipe = client.pipeline(transaction=False)
        pipe.zcount(keys.consumers_key(queue), wall - within, "+inf")
        pipe.hget(keys.AUTOSCALE_SERVED, queue)
        live, raw = pipe.execute()
        group = None
        if raw:
            data = json.loads(raw)
            if float(data.get("until") or 0) >= wall and int(data.get("max_size") or 0) > 0:
                group = data
        if not live and group is None:
            raise QueueNotServedError(
                f"no live worker consumes queue {queue!r} and no autoscaled group serves it, so "
                f"the work would wait forever; start one with `fused-celery worker --queues "
                f"{queue}` (or `fused-celery up --queues {queue}`), deploy a group for it "
                "(`fused-celery deploy apply`) and run `fused-celery autoscale`, or turn this "
                "check off with FUSED_CELERY_AUTOSCALE_SUBMIT_CHECK=0"
            )
        found = (now, group.get("disk_size_gb") if group else None)
        _served_cache[(url, queue)] = found
    limit = found[1]
    if disk_size_gb is not None and limit is not None and disk_size_gb > int(limit):
        raise DiskSizeError(
            f"disk_size_gb={disk_size_gb} is more than the {limit} GB that the launch template "
            f"of queue {queue!r}'s group gives; ask for at most {limit} GB, or deploy the group "
            "with a larger disk"
        )


def check_queue(queue: str, disk_size_gb: int | None = None) -> None:
    """:func:`require_served` for ``queue`` with the configured Redis and settings, at submit.
    The default queue is not checked (a local cluster serves it; work may be queued before its
    workers start), nor anything when ``options.autoscale_submit_check`` is False."""
    from fused_celery.options import DEFAULT_QUEUE, options
    from fused_celery.state.connection import redis_client

    url = options.resolved_result_backend
    if queue == DEFAULT_QUEUE or not options.autoscale_submit_check or not url:
        return
    require_served(
        redis_client(url), url, queue, within=options.autoscale_consumer_ttl,
        disk_size_gb=disk_size_gb,
    )  # fmt: skip
