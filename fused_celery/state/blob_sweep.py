"""Deleting the blobs of pools whose Redis record has expired, at most once a minute.

Large results and arguments of remote pools live in storage (:mod:`fused_celery.blobs`); a
record expires after ``options.result_expires`` without deleting them. Workers call
:func:`maybe_sweep` after each message: a worker process tries at most once every
:data:`SWEEP_SECONDS`, and of all the processes of a cluster only the one that takes the Redis
key :data:`~fused_celery.state.keys.BLOB_SWEEP_GUARD` (``SET NX`` with that TTL) sweeps, on a
background thread (a message never waits for it). The sweep deletes only the files this project
writes, of pools whose ``meta`` key is gone, last written more than ``result_expires`` ago.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from fused_celery import blobs
from fused_celery.options import options
from fused_celery.state import keys
from fused_celery.state.connection import redis_client

logger = logging.getLogger(__name__)

#: Seconds between two sweeps of a cluster (the guard key's TTL), and between two tries of one
#: worker process.
SWEEP_SECONDS = 60

_next_try = [0.0]  # time.monotonic() of this process's next try


def sweep_once(url: str, root: str, *, older_than: float | None = None) -> list[str] | None:
    """Sweep ``root`` if no process of the cluster whose record Redis is at ``url`` did within
    :data:`SWEEP_SECONDS`; returns the URLs deleted, or None when another sweep holds the guard.

    older_than: seconds (default ``options.result_expires``)."""
    client = redis_client(url)
    if not client.set(keys.BLOB_SWEEP_GUARD, repr(time.time()), nx=True, ex=SWEEP_SECONDS):
        return None

    def gone(pool_ids: Iterable[str]) -> set[str]:
        ids = list(pool_ids)
        pipe = client.pipeline(transaction=False)
        for pool_id in ids:
            pipe.exists(keys.pool_key(pool_id, "meta"))
        return {pool_id for pool_id, alive in zip(ids, pipe.execute()) if not alive}

    age = float(options.result_expires if older_than is None else older_than)
    deleted = blobs.sweep(root, gone, age)
    if deleted:
        logger.info(
            "fused-celery: deleted %d blob(s) of expired pools under %s", len(deleted), root
        )
    return deleted


def _sweep_quietly(url: str, root: str) -> None:
    try:
        sweep_once(url, root)
    except Exception:  # noqa: BLE001 - a failed sweep is retried a minute later
        logger.warning("fused-celery: sweeping the blobs of expired pools failed", exc_info=True)


def maybe_sweep() -> bool:
    """Start a sweep on a background thread if this process has not tried within
    :data:`SWEEP_SECONDS` (no Redis round trip otherwise). Returns True when one was started."""
    now = time.monotonic()
    url = options.resolved_result_backend
    if now < _next_try[0] or not url:
        return False
    _next_try[0] = now + SWEEP_SECONDS
    threading.Thread(
        target=_sweep_quietly,
        args=(url, options.storage_root),
        name="fused-blob-sweep",
        daemon=True,
    ).start()
    return True
