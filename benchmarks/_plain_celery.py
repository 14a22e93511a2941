"""The out-of-the-box Celery peer of ``dispatch.py``: a plain ``Celery`` app with Celery's own
defaults (JSON, prefetch multiplier 4, acks on receipt, no task events, no project settings),
on its own Redis (no AOF, as ``redis-server`` ships). Its workers are started with
``celery -A _plain_celery worker``; the broker URL comes from ``BENCH_PLAIN_URL``.
"""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("BENCH_PLAIN_URL", "redis://127.0.0.1:6379/0")

app = Celery("plain", broker=URL, backend=URL)

#: The task's name (the client sends it by name).
NOOP = "plain.noop"


@app.task(name=NOOP)
def noop(x: int = 0) -> int:
    """Return ``x``: the trivial task of the out-of-the-box rows."""
    return x
