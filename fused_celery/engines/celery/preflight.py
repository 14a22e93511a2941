"""A worker's checks before it takes any task: shared storage, and a Redis that never evicts.

- With ``options.deploy_require_shared_storage`` (set on the instances ``deploy`` starts), a
  local-disk ``storage_root`` is refused: results and tables written there would be invisible to
  the other hosts.
- The broker's (and result backend's) ``maxmemory-policy`` must be ``noeviction``: every record
  has a TTL, so an evicting Redis could silently drop live pools. Where ``CONFIG GET`` is not
  available (some managed Redis), a loud warning names the fix instead.

:func:`check_worker` runs in ``fused-celery worker`` (one ``error:`` line) and, through Celery's
``worker_init`` signal, in every worker process started any other way (``celery -A
fused_celery.celery_app worker``): there a failed check stops the worker with the message.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals

from fused_celery.errors import FusedError, SharedStorageRequiredError
from fused_celery.options import options

__all__ = ["check_worker"]

logger = logging.getLogger("fused_celery.worker")


def check_worker() -> list[str]:
    """Run the checks (see the module docstring); returns the warnings it printed.

    Raises :class:`SharedStorageRequiredError` or
    :class:`~fused_celery.errors.EvictionPolicyError`. A Redis that does not answer yet is not
    an error here (Celery waits for it).
    """
    import redis

    from fused_celery.state.connection import check_eviction_policy
    from fused_celery.storage import parse

    if options.deploy_require_shared_storage and parse(options.storage_root).scheme != "s3":
        raise SharedStorageRequiredError(
            f"storage_root {options.storage_root!r} is on this host's disk, but this worker runs "
            "on many hosts (deploy_require_shared_storage): results and tables written there "
            "would be invisible to the others. Set FUSED_CELERY_STORAGE_ROOT to an "
            "s3://bucket/prefix all hosts reach (fused-celery deploy sets one)"
        )
    warnings = []
    urls = {"broker": options.broker_url, "result backend": options.resolved_result_backend}
    for what, url in urls.items():
        if not url or (what == "result backend" and url == options.broker_url):
            continue
        try:
            warning = check_eviction_policy(url, what=what)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            continue
        if warning:
            text = f"WARNING: {warning}"
            print(text, file=sys.stderr, flush=True)
            logger.warning(text)
            warnings.append(warning)
    return warnings


@signals.worker_init.connect
def _check_at_start(**_: Any) -> None:
    """Stop the worker (exit status 1, the reason on stderr) when a check fails."""
    try:
        check_worker()
    except FusedError as exc:
        raise SystemExit(f"fused-celery worker: {exc}") from None
