"""The local cluster: an embedded Redis (:mod:`.redis_server`), worker and Flower processes
(:mod:`.processes`, :mod:`.local_cluster`). ``fused_celery.cluster.LocalCluster(workers=2)`` is a
context manager doing what ``fused-celery up`` does."""

from __future__ import annotations

from fused_celery.cluster.local_cluster import LocalCluster
from fused_celery.cluster.redis_server import RedisServer

__all__ = ["LocalCluster", "RedisServer"]
