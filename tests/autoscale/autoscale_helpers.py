"""Shared pieces of the autoscaler tests: a UDF that records every execution, the local
autoscaler on a test Redis, and cleanup of the worker processes it started."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
from collections import Counter
from pathlib import Path

import redis

import fused_celery as fused
from fused_celery.autoscale.actuators import LocalActuator, local_workers
from fused_celery.autoscale.loop import Autoscaler
from fused_celery.cluster.processes import pid_alive

#: Environment of the workers the tests start: no heavy preload, no metadata polling.
WORKER_ENV = {"FUSED_CELERY_WORKER_PRELOAD": "[]", "FUSED_CELERY_DRAIN_WATCH": "0"}


@fused.udf
def tally(x: int, path: str, seconds: float = 0.0):
    """Append one line per execution to ``path`` (the side effect the tests count), sleep."""
    import os
    import time

    with open(path, "a") as fh:
        fh.write(f"{x} {os.getpid()}\n")
    time.sleep(seconds)
    return 2 * x


def executions(path: Path) -> Counter[int]:
    """How many times each entry ran, from ``tally``'s file."""
    if not path.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line)


def local_scaler(
    redis_url: str, queues: list[str], log_dir: Path, *, max_size: int = 2
) -> tuple[Autoscaler, LocalActuator, io.StringIO]:
    """An :class:`Autoscaler` over a :class:`LocalActuator` of ``queues`` (decision lines go to
    the returned buffer)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    actuator = LocalActuator(
        queues, client, max_size=max_size, log_dir=str(log_dir), env=WORKER_ENV
    )
    out = io.StringIO()
    return Autoscaler(actuator, broker_url=redis_url, out=out), actuator, out


def kill_recorded_workers(redis_url: str, queues: list[str], timeout: float = 15.0) -> None:
    """Stop (SIGTERM, then SIGKILL of the group) every worker the local actuator recorded."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pids = [pid for q in queues for pid in local_workers(client, q).values()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
