"""Result caching of identical UDF calls.

A call's key is a hash of the UDF's code, entrypoint, default parameters and the encoded
arguments. Only successes are stored; an error is never cached. :class:`DiskCache` serves the local
engine; the Celery engine keeps the same keys in Redis with a TTL.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def cache_key(udf: dict[str, Any], encoded_kwargs: dict[str, Any]) -> str:
    """Stable key of one call: UDF code, entrypoint, parameters and encoded arguments."""
    payload = json.dumps(
        [udf["code"], udf["entrypoint"], udf.get("parameters") or {}, encoded_kwargs],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class DiskCache:
    """Outcomes of successful calls (:class:`fused_celery.execute.Outcome` dicts) as JSON files
    under ``root`` (one file per key).

    root: directory (created on first write).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, max_age: float) -> dict[str, Any] | None:
        """The cached outcome if it is younger than ``max_age`` seconds, else None."""
        path = self._path(key)
        try:
            if time.time() - path.stat().st_mtime > max_age:
                return None
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def put(self, key: str, outcome: dict[str, Any]) -> None:
        """Store a successful outcome atomically (errors are ignored, never stored)."""
        if not outcome.get("ok"):
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(outcome, fh)
            os.replace(tmp, path)
        except OSError:
            pass  # a cache that cannot be written is only slower
