"""The raw Celery task of ``dispatch.py``: imported by the benchmark's workers (``--include``).

It is registered on the project's app, so it runs under exactly the settings the pool's
``fused_celery.run_entries`` runs under (JSON, acks_late, prefetch, result backend, events).
``track_started=False`` as for ``run_entries``: no STARTED write, the leanest raw round trip.

``bench.floor`` is the same task with ``ignore_result=True``, as ``run_entries`` has: no result
write at all, so a run of it is Celery's own cost per message under the project's settings.
"""

from __future__ import annotations

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
