"""Module-level functions of the Fused API (``fused.api.*``)."""

from __future__ import annotations

from .pool import JobPool


def get_pool(pool_id: str) -> JobPool:
    """Reattach to a remote pool by id (same as ``JobPool.attach(pool_id)``)."""
    return JobPool.attach(pool_id)
