"""Staged work: the finished units of a job's steps, kept under the storage root for reruns.

A step stages each unit of its work (for a map step: one chunk's output) in a folder of its own,
``<storage_root>/_staged/<key>/``, where ``key`` is a digest of everything the unit depends on
(:func:`work_key`: the input chunk's metadata and the input table's version, the UDF's code and
parameters...), and writes ``_done.json`` (the unit's small result) last. A run with
``resume=True`` asks :func:`staged_info` first and reuses what it finds, so a rerun of a failed or
cancelled job redoes only the units not yet staged; a changed UDF or input has other keys, so it
never reuses stale files. Staged work is never in a job's output location (which a failed job
leaves as it was). A committed step drops its entries (:func:`drop`); a failed or cancelled one
keeps them; :func:`sweep` removes entries older than ``options.staged_expires`` (7 days).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fused_celery import storage
from fused_celery.options import options

__all__ = ["drop", "entry_url", "mark_done", "staged_info", "staged_root", "sweep", "work_key"]

#: The folder of staged work under the storage root.
ROOT = "_staged"
#: The file written last in an entry: ``{"staged_at": epoch seconds, "info": ...}``.
DONE = "_done.json"
#: Seconds between two sweeps of one process.
SWEEP_PERIOD = 3600.0

_last_sweep: dict[str, float] = {}


def staged_root() -> str:
    """``<options.storage_root>/_staged``."""
    return storage.join(options.storage_root, ROOT)


def work_key(*parts: Any) -> str:
    """The digest (hex) naming the unit of work that depends on ``parts`` (JSON-able values;
    dict keys sorted, so equal values give equal keys in any process)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def entry_url(key: str, name: str | None = None) -> str:
    """The folder of entry ``key``, or its file ``name``."""
    folder = storage.join(staged_root(), key)
    return folder if name is None else storage.join(folder, name)


def staged_info(key: str) -> Any | None:
    """The info the unit ``key`` was staged with (:func:`mark_done`), or None when it is not
    staged, was never finished or is older than ``options.staged_expires``."""
    try:
        done = json.loads(storage.read_bytes(entry_url(key, DONE)))
    except (FileNotFoundError, ValueError):
        return None
    if time.time() - float(done.get("staged_at", 0)) > options.staged_expires:
        return None
    return done.get("info")


def mark_done(key: str, info: Any) -> None:
    """Record unit ``key`` as staged with ``info`` (JSON-able), after its files were written."""
    record = {"staged_at": time.time(), "info": info}
    storage.write_bytes(entry_url(key, DONE), json.dumps(record).encode())


def _delete(key: str) -> None:
    storage.delete_file(entry_url(key, DONE))  # not staged any more before its files go
    storage.delete_prefix(entry_url(key))


def drop(keys: Iterable[str]) -> None:
    """Remove the entries ``keys`` (their work is committed). Missing ones are skipped."""
    found = sorted(set(keys))
    if found:
        with ThreadPoolExecutor(max_workers=min(16, len(found))) as pool:
            list(pool.map(_delete, found))


def sweep(max_age: float | None = None, *, force: bool = False) -> int:
    """Remove the entries whose newest file is older than ``max_age`` seconds (default
    ``options.staged_expires``); returns how many. At most once per :data:`SWEEP_PERIOD` per
    process and storage root unless ``force``."""
    root = staged_root()
    now = time.time()
    if not force and now - _last_sweep.get(root, 0.0) < SWEEP_PERIOD:
        return 0
    _last_sweep[root] = now
    limit = options.staged_expires if max_age is None else float(max_age)
    newest: dict[str, float] = {}
    for name, mtime in storage.modified_times(root).items():
        key = name.split("/", 1)[0]
        newest[key] = max(newest.get(key, 0.0), mtime)
    old = [key for key, mtime in newest.items() if now - mtime > limit]
    drop(old)
    return len(old)
