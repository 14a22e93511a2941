"""The out-of-the-box Celery peers of ``dispatch.py``: plain ``Celery`` apps, no project
settings, on their own Redis (no AOF, as ``redis-server`` ships); the broker URL comes from
``BENCH_PLAIN_URL``.

* ``app``: Celery's own defaults (JSON, prefetch multiplier 4, acks on receipt, no task events);
  workers: ``celery -A _plain_celery worker``.
* ``reliable_app``: the same plus only the project's reliability settings (``task_acks_late``,
  ``task_reject_on_worker_lost``, prefetch multiplier 1), still without task events and without
  AOF, on database 1 of the same server; workers: ``celery -A _plain_celery:reliable_app
  worker``. Against ``app`` it measures what acks late + prefetch 1 cost Celery itself; against
  the project's raw peer, what task events and AOF cost.
"""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("BENCH_PLAIN_URL", "redis://127.0.0.1:6379/0")

#: The task's name (the client sends it by name).
NOOP = "plain.noop"


def _noop(x: int = 0) -> int:
    """Return ``x``: the trivial task of the out-of-the-box rows."""
    return x


def make_app(name: str, url: str, **conf: object) -> Celery:
    """A plain app on ``url`` with ``conf`` over Celery's defaults, ``plain.noop`` registered."""
    made = Celery(name, broker=url, backend=url)
    made.conf.update(conf)
    made.task(name=NOOP)(_noop)
    return made


app = make_app("plain", URL)
noop = app.tasks[NOOP]

reliable_app = make_app(
    "plain_reliable",
    URL.rsplit("/", 1)[0] + "/1",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
)
reliable_noop = reliable_app.tasks[NOOP]
