"""The raw Celery task of ``dispatch.py``: imported by the benchmark's workers (``--include``).

It is registered on the project's app, so it runs under exactly the settings the pool's
``fused_celery.run_entries`` runs under (JSON, acks_late, prefetch, result backend, events).
``track_started=False`` as for ``run_entries``: no STARTED write, the leanest raw round trip.

``bench.floor`` is the same task with ``ignore_result=True``, as ``run_entries`` has: no result
write at all, so a run of it is Celery's own cost per message under the project's settings.
"""

from __future__ import annotations

from typing import Any

from fused_celery.celery_app import app

#: The task's name; the client sends it by name (``celery.signature(NOOP, ...)``).
NOOP = "bench.noop"


@app.task(name=NOOP, track_started=False)
def noop(x: int = 0) -> int:
    """Return ``x``: the trivial task of the raw-Celery rows."""
    return x


#: The result-less task's name (:func:`floor`).
FLOOR = "bench.floor"


@app.task(name=FLOOR, track_started=False, ignore_result=True)
def floor(x: int = 0) -> int:
    """Return ``x`` to nobody: the task of the Celery-floor row (no result written)."""
    return x


#: The "checked" floor's task (:func:`floor_checked`) and its latency twin (:func:`noop_checked`).
FLOOR_CHECKED = "bench.floor_checked"
NOOP_CHECKED = "bench.noop_checked"


def _record_client() -> Any:
    """The shared Redis client of the pool records (the worker's own, ``redis_client``)."""
    from fused_celery.options import options
    from fused_celery.state.connection import redis_client

    return redis_client(options.resolved_result_backend)


@app.task(name=FLOOR_CHECKED, track_started=False, ignore_result=True)
def floor_checked(prefix: str, x: int = 0) -> None:
    """What the architecture's reliability rules cost at the least per entry, on top of Celery's
    floor: one waited Redis round trip to a durable cancelled set before the entry runs
    (``SISMEMBER <prefix>:cancelled x``; ARCHITECTURE.md: "check it before running an entry")
    and one that records its outcome (``HSET <prefix>:outcome x x``), the least a pool that
    keeps its results in Redis writes. Nothing else: no dedupe, no delivery count, no counts,
    no event to the waiting client, no TTL."""
    client = _record_client()
    if client.sismember(f"{prefix}:cancelled", x):
        return
    client.hset(f"{prefix}:outcome", str(x), str(x))


@app.task(name=NOOP_CHECKED, track_started=False)
def noop_checked(prefix: str, x: int = 0) -> int:
    """:func:`noop` after the durable cancel check of :func:`floor_checked` (one waited Redis
    round trip): a raw call that honours "check a durable cancelled set before running"."""
    if _record_client().sismember(f"{prefix}:cancelled", x):
        return -1
    return x
