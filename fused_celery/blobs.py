"""Bulk data of remote pools in storage, by reference: large results and large arguments.

Redis holds a pool's state, never its bulk. Under ``<storage_root>`` (local, ``file://`` or
``s3://bucket/prefix``; on a cluster of several hosts it must be shared, since clients read what
workers wrote and workers read what clients wrote) this project writes only:

- ``results/<pool_id>/<position>-a<attempt>.bin``: a result whose encoded size is over
  ``options.large_result_bytes``; the outcome in Redis keeps ``{"url", "key", "meta", "size"}``.
- ``args/<pool_id>/<sha256>.bin``: an argument or constant keyword argument over
  ``options.large_argument_bytes``; the record keeps the envelope ``{"blob": {"sha256", "key",
  "meta", "size"}}`` instead, resolved by the worker against the pool's ``args`` folder. Named
  by content: an argument repeated in many entries is stored once, and the result cache keys
  (hashes of the stored arguments) do not depend on the pool.

Payloads are raw bytes (not base64). Writes go through :mod:`fused_celery.storage` (atomic), so
readers never see a partial file. Both folders of a pool go with :func:`delete_pool`
(``JobPool.delete()``) and, once the pool's record has expired, with :func:`sweep`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from fused_celery import storage

_BINARY_TAGS = ("np", "gdf", "df", "arrow", "bytes", "geom")

#: The envelope tag of an argument stored by reference.
REF_TAG = "blob"

#: Top-level folders of ``storage_root`` holding pool blobs, and the names written in them.
KINDS: dict[str, re.Pattern[str]] = {
    "results": re.compile(r"\d+-a\d+\.bin"),
    "args": re.compile(r"[0-9a-f]{64}\.bin"),
}

#: What a pool id looks like (``PoolSpec``: 16 hex digits); other folders are never swept.
POOL_ID = re.compile(r"[0-9a-f]{16}")


def result_url(root: str, pool_id: str, position: int, attempt: int) -> str:
    """Where the large result of one attempt of one entry is stored."""
    return storage.join(root, "results", pool_id, f"{position}-a{attempt}.bin")


def args_folder(root: str, pool_id: str) -> str:
    """The folder of a pool's arguments stored by reference."""
    return storage.join(root, "args", pool_id)


def _payload(envelope: dict[str, Any]) -> tuple[bytes, str | None, dict[str, Any]]:
    """``(raw bytes, tag or None for a JSON envelope, the envelope's other fields)``."""
    for tag in _BINARY_TAGS:
        if tag in envelope:
            meta = {k: v for k, v in envelope.items() if k != tag}
            return base64.b64decode(envelope[tag]), tag, meta
    return json.dumps(envelope, separators=(",", ":")).encode(), None, {}


def _envelope(data: bytes, key: str | None, meta: dict[str, Any]) -> dict[str, Any]:
    if key is None:
        return json.loads(data)
    return {**meta, key: base64.b64encode(data).decode("ascii")}


def store_envelope(envelope: dict[str, Any], url: str) -> dict[str, Any]:
    """Write a codec envelope's payload to ``url``; return the reference kept in Redis."""
    data, key, meta = _payload(envelope)
    storage.write_bytes(url, data)
    return {"url": url, "key": key, "meta": meta, "size": len(data)}


def load_envelope(ref: dict[str, Any]) -> dict[str, Any]:
    """The codec envelope that :func:`store_envelope` stored under ``ref``."""
    return _envelope(storage.read_bytes(ref["url"]), ref.get("key"), ref.get("meta", {}))


# --- arguments ----------------------------------------------------------------------------------


def store_argument(envelope: dict[str, Any], folder: str) -> dict[str, Any]:
    """Write an argument's payload to ``folder`` (named by its SHA-256); return the envelope that
    replaces it in the record (``{"blob": {...}}``)."""
    data, key, meta = _payload(envelope)
    digest = hashlib.sha256(data).hexdigest()
    storage.write_bytes(storage.join(folder, f"{digest}.bin"), data)
    return {REF_TAG: {"sha256": digest, "key": key, "meta": meta, "size": len(data)}}


def load_argument(ref: dict[str, Any], folder: str) -> dict[str, Any]:
    """The envelope :func:`store_argument` stored (``ref`` is the ``"blob"`` value); raises
    ``ValueError`` when the stored bytes are not the ones referenced."""
    data = storage.read_bytes(storage.join(folder, f"{ref['sha256']}.bin"))
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise ValueError(f"argument blob {ref['sha256']}.bin in {folder} is corrupt")
    return _envelope(data, ref.get("key"), ref.get("meta", {}))


def resolve_kwargs(encoded: dict[str, Any], folder: str | None) -> dict[str, Any]:
    """``encoded`` (codec-encoded keyword arguments) with the arguments stored by reference
    read back from ``folder``; the same dict when none is a reference."""
    if not any(REF_TAG in env for env in encoded.values() if isinstance(env, dict)):
        return encoded
    if not folder:
        raise ValueError("an argument is stored by reference but the pool names no folder")
    return {
        k: load_argument(env[REF_TAG], folder) if REF_TAG in env else env
        for k, env in encoded.items()
    }


# --- a pool's blobs: deletion and the sweep ----------------------------------------------------


def pool_folders(root: str, pool_id: str) -> list[str]:
    """Every folder holding blobs of pool ``pool_id``."""
    return [storage.join(root, kind, pool_id) for kind in KINDS]


def delete_pool(root: str, pool_id: str) -> None:
    """Delete every blob of pool ``pool_id`` (its large results and arguments)."""
    for folder in pool_folders(root, pool_id):
        storage.delete_prefix(folder)


def sweep(
    root: str,
    gone: Callable[[Iterable[str]], set[str]],
    older_than: float,
    *,
    now: float | None = None,
) -> list[str]:
    """Delete the blobs of pools whose record is gone, leaving everything else.

    root: ``storage_root``. gone: given pool ids, returns those whose record no longer exists.
    older_than: seconds; only files last written longer ago are deleted (a pool whose record is
    being written, or that just expired, keeps its blobs). Only names this project writes are
    touched (:data:`KINDS` under :data:`POOL_ID` folders). Returns the URLs deleted.
    """
    cutoff = (time.time() if now is None else now) - older_than
    candidates: dict[str, list[str]] = {}
    for kind, names in KINDS.items():
        folder = storage.join(root, kind)
        for name, mtime in storage.list_file_times(folder, recursive=True).items():
            pool_id, _, file = name.partition("/")
            if mtime < cutoff and POOL_ID.fullmatch(pool_id) and names.fullmatch(file):
                candidates.setdefault(pool_id, []).append(storage.join(folder, name))
    deleted = []
    if candidates:
        for pool_id in sorted(gone(list(candidates))):
            for url in candidates.get(pool_id, []):
                storage.delete_file(url)
                deleted.append(url)
            storage.remove_empty_folders(pool_folders(root, pool_id))
    return deleted
