"""SIGKILL at a random point: of a pool process (the worker's main process replaces it and the
message is delivered again), of a worker's main process alone, and of a whole worker (its
process group: a host that is gone), during a 1,000-entry pool, an ingest and a map step.

Real redis-server, real workers. Each test asserts that no result is lost or recorded twice and
that no partial table is left, and prints its figures (seed, kill point, re-runs, time). The
heartbeat timeout is 2 s, so a dead worker's messages are back in their queue within 4 s (the
visibility timeout stays at its default, 2 hours: without the heartbeat these tests would hang).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_helpers import (
    assert_exactly_once,
    assert_no_partial_table,
    assert_rows_once,
    counted,
    ingest_table,
    kill_pool_child,
    make_points,
    run_counts,
    seeded,
    wait_until,
)

import fused_celery as fused
from fused_celery.options import options
from fused_celery.table import open_table

pytestmark = pytest.mark.slow

#: Worker settings of every test here (seconds): dead workers found within 4 s, a job's
#: watchdog every 2 s (it sends again a chord member or callback that was lost).
WORKER_ENV = {
    "FUSED_CELERY_WORKER_HEARTBEAT_TIMEOUT": "2",
    "FUSED_CELERY_JOB_WATCHDOG_INTERVAL": "2",
}

#: Kinds of kill: a pool process, the main process alone, the whole worker (a host gone).
KILLS = ("child", "main", "host")


def kill(worker: Any, how: str, rng: Any) -> str:
    """Kill ``worker`` as ``how`` says; returns what was killed."""
    if how == "child":
        return f"pool process {kill_pool_child(worker, rng)}"
    if how == "main":
        os.kill(worker.pid, signal.SIGKILL)
        return f"main process {worker.pid}"
    worker.kill(signal.SIGKILL)  # the process group
    return f"worker {worker.pid} and its pool processes"


@pytest.mark.parametrize("how", KILLS)
def test_kill_during_pool(how, celery_workers, fused_options, tmp_path, monkeypatch):
    rng = seeded(f"pool-{how}")
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    workers = celery_workers(n=2, concurrency=2, env=WORKER_ENV)
    folder = tmp_path / "runs"
    folder.mkdir()
    n = 1000
    at = rng.randint(50, 800)
    t0 = time.monotonic()
    pool = counted.map([{"x": i, "folder": str(folder)} for i in range(n)], engine="remote")
    wait_until(lambda: int(pool.status().get("success", 0)) >= at, 120, f"{at} entries done")
    what = kill(workers[0], how, rng)
    killed_at = time.monotonic() - t0
    pool.wait(timeout=180)
    elapsed = time.monotonic() - t0
    values = dict(enumerate(pool.results()))
    assert_exactly_once(values, {i: 2 * i for i in range(n)}, f"pool {how}")
    runs = run_counts(folder)
    assert set(runs) == set(range(n))
    reruns = sum(c - 1 for c in runs.values())
    print(f"[pool {how}] killed {what} after {at} entries ({killed_at:.1f} s); finished in "
          f"{elapsed:.1f} s; {reruns} entries ran again (at-least-once)")  # fmt: skip
    assert reruns <= 16  # only what the killed process held


def _input(tmp_path: Path, n: int, seed: int) -> tuple[Any, str]:
    src = make_points(n, seed=seed)
    path = tmp_path / "in.parquet"
    src.to_parquet(path, row_group_size=2000)
    return src, str(path)


@pytest.fixture(autouse=True)
def _quick_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "job_watchdog_interval", 2.0)  # its first check, from here


def _kill_when(resp: Any, finished: int, worker: Any, how: str, rng: Any) -> str:
    wait_until(lambda: resp.get_status().finished_tasks >= finished, 120, f"{finished} tasks")
    return kill(worker, how, rng)


@pytest.mark.parametrize("how", ("child", "host"))
def test_kill_during_ingest(how, celery_workers, fused_options, tmp_path, monkeypatch):
    rng = seeded(f"ingest-{how}")
    monkeypatch.setattr(options, "ingest_slice_rows", 2000)
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    workers = celery_workers(n=2, concurrency=1, env=WORKER_ENV)
    src, path = _input(tmp_path, 60_000, rng.randint(0, 1000))
    out = tmp_path / "out"
    t0 = time.monotonic()
    resp = fused.ingest(path, partitioning_maximum_per_chunk=800).run_remote(output_table=str(out))
    at = rng.randint(1, 25)
    what = _kill_when(resp, at, workers[0], how, rng)
    resp.wait_for_job(timeout=240)
    assert resp.status == "Done", "\n".join(resp.get_logs()[-8:])
    assert_rows_once(open_table(str(out)).get_dataframe()["uid"], src["uid"], f"ingest {how}")
    assert_no_partial_table(out)
    print(f"[ingest {how}] killed {what} after {at} tasks; done in "
          f"{time.monotonic() - t0:.1f} s")  # fmt: skip


@fused.udf
def slow_double(gdf, metadata=None):
    import time

    time.sleep(0.05)
    return gdf.assign(v=gdf["v"] * 2)


def map_step(table: str, out: str) -> Any:
    return fused.map(table, udf=slow_double, output_table=out, chunks_per_task=1)


@fused.udf
def slow_join(left, right, metadata=None):
    import time

    time.sleep(0.05)
    return left.assign(v=left["v"] * 2)


def join_step(table: str, out: str) -> Any:
    return fused.join(table, table, udf=slow_join, output_table=out, chunks_per_task=1)


#: Job steps over a table that the table-step fault test runs: name -> step(table, output), each
#: writing every input row once with ``v`` doubled. A new step type is one more line here.
TABLE_STEPS = {"map": map_step, "join": join_step}


@pytest.mark.parametrize("step", sorted(TABLE_STEPS))
@pytest.mark.parametrize("how", ("child", "host"))
def test_kill_during_table_step(step, how, celery_workers, fused_options, tmp_path, monkeypatch):
    rng = seeded(f"{step}-{how}")
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    src = make_points(12_000, seed=rng.randint(0, 1000))
    table = ingest_table(src, str(tmp_path / "in"), per_file=2000, per_chunk=200)
    workers = celery_workers(n=2, concurrency=1, env=WORKER_ENV)
    out = tmp_path / "out"
    t0 = time.monotonic()
    resp = TABLE_STEPS[step](table, str(out)).run_remote()
    at = rng.randint(1, 40)
    what = _kill_when(resp, at, workers[0], how, rng)
    resp.wait_for_job(timeout=240)
    assert resp.status == "Done", "\n".join(resp.get_logs()[-8:])
    frame = open_table(str(out)).get_dataframe()
    assert_rows_once(frame["uid"], src["uid"], f"{step} {how}")
    got = frame.set_index("uid").sort_index()["v"].to_numpy()
    assert np.allclose(got, src.set_index("uid").sort_index()["v"].to_numpy() * 2)
    assert_no_partial_table(out)
    print(f"[{step} {how}] killed {what} after {at} tasks; done in "
          f"{time.monotonic() - t0:.1f} s")  # fmt: skip


@fused.udf
def long_counted(x: int, folder: str, seconds: float = 6.0):
    import os
    import time

    with open(os.path.join(folder, str(x)), "a") as fh:
        fh.write("r")
    time.sleep(seconds)
    return x


def test_live_workers_entries_are_never_given_away(celery_workers, fused_options, tmp_path,
                                                   monkeypatch):  # fmt: skip
    """Entries running for three heartbeat timeouts on live workers run once: only a dead
    worker's messages are given back."""
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    celery_workers(n=2, concurrency=2, env=WORKER_ENV)
    folder = tmp_path / "runs"
    folder.mkdir()
    pool = long_counted.map([{"x": i, "folder": str(folder)} for i in range(4)], engine="remote")
    pool.wait(timeout=120)
    assert pool.results() == [0, 1, 2, 3]
    runs = run_counts(folder)
    print(f"[live workers] runs per entry: {dict(runs)}")
    assert runs == {0: 1, 1: 1, 2: 1, 3: 1}
