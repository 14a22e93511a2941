"""The Celery task of the engine, thin: its body is :func:`.worker.run_message`.

Imported by the worker (``celery_app`` includes it) so that ``run_entries`` is registered.
"""

from __future__ import annotations

from typing import Any

from fused_celery.celery_app import RUN_ENTRIES, app

# imported for their worker signals: the start checks, heartbeats and drain
from fused_celery.engines.celery import preflight, presence  # noqa: F401
from fused_celery.engines.celery.worker import EntriesTask, run_message

__all__ = ["run_entries"]


# track_started=False, ignore_result=True: the pool record already marks each entry running
# (with its worker) and holds every outcome, so Celery's STARTED and SUCCESS result writes (a
# GET, then SETEX + PUBLISH, per task) would be round trips that nothing reads; Flower still sees
# task-started / task-succeeded events (which carry the return value).
@app.task(bind=True, base=EntriesTask, name=RUN_ENTRIES, track_started=False, ignore_result=True)
def run_entries(
    self: EntriesTask,
    pool_id: str,
    positions: list[int],
    attempts: list[int],
    lane: list[Any] | None = None,
) -> dict[str, Any]:
    """Run entries ``positions`` (attempt ``attempts[i]``) of pool ``pool_id`` (see
    :func:`.worker.run_message`). lane: ``[lane, item]`` for capped pools (default None)."""
    return run_message(self.request, pool_id, positions, attempts, lane)
