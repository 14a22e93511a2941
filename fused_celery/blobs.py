"""Large results in storage: an envelope's payload under ``options.storage_root``, and back.

A result whose encoded size is over ``options.large_result_bytes`` does not go into Redis. The
worker writes its payload (raw bytes, not base64) to
``<storage_root>/results/<pool_id>/<position>-a<attempt>.bin`` and Redis keeps only a reference
``{"url": ..., "key": <envelope tag>, "meta": <other envelope fields>}``. Names are
deterministic, so a rerun of the same attempt overwrites the same object; writes go through
:mod:`fused_celery.storage` (atomic: rename locally, one PUT on S3), so readers never see a
partial file. ``storage_root`` may be local (``/path``, ``file://``) or ``s3://bucket/prefix``;
on a cluster of several hosts it must be shared (S3 or a shared mount), since clients read what
workers wrote.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from fused_celery import storage

_BINARY_TAGS = ("np", "gdf", "df", "arrow", "bytes", "geom")


def result_url(root: str, pool_id: str, position: int, attempt: int) -> str:
    """Where the large result of one attempt of one entry is stored."""
    return storage.join(root, "results", pool_id, f"{position}-a{attempt}.bin")


def store_envelope(envelope: dict[str, Any], url: str) -> dict[str, Any]:
    """Write a codec envelope's payload to ``url``; return the reference kept in Redis."""
    for tag in _BINARY_TAGS:
        if tag in envelope:
            payload = base64.b64decode(envelope[tag])
            meta = {k: v for k, v in envelope.items() if k != tag}
            storage.write_bytes(url, payload)
            return {"url": url, "key": tag, "meta": meta, "size": len(payload)}
    data = json.dumps(envelope, separators=(",", ":")).encode()
    storage.write_bytes(url, data)
    return {"url": url, "key": None, "meta": {}, "size": len(data)}


def load_envelope(ref: dict[str, Any]) -> dict[str, Any]:
    """The codec envelope that :func:`store_envelope` stored under ``ref``."""
    data = storage.read_bytes(ref["url"])
    if ref.get("key") is None:
        return json.loads(data)
    return {**ref.get("meta", {}), ref["key"]: base64.b64encode(data).decode("ascii")}
