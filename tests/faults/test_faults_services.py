"""Faults of the services around the workers, at a random point: Redis SIGKILLed and restarted
from its append-only file (mid-pool, mid-ingest), storage cut off for a few seconds mid-write (a
loopback TCP proxy in front of the moto S3 server), a cancelled pool whose workers restart, and
20 pools submitted at once from 4 client processes.

Real redis-server, real workers. Each test asserts that no result is lost or recorded twice and
that no partial table is left, and prints its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aof_redis import AofRedis
from fault_helpers import (
    TcpProxy,
    assert_exactly_once,
    assert_no_partial_table,
    assert_rows_once,
    counted,
    make_points,
    run_counts,
    seeded,
    wait_until,
)
from moto_server import s3_env

import fused_celery as fused
from fused_celery.cluster.local_cluster import child_env, wait_for_workers, worker_command
from fused_celery.cluster.processes import ManagedProcess, stop_all
from fused_celery.options import options
from fused_celery.table import open_table

pytest_plugins = ["moto_server"]
pytestmark = pytest.mark.slow

HEARTBEAT = {
    "FUSED_CELERY_WORKER_HEARTBEAT_TIMEOUT": "2",
    "FUSED_CELERY_JOB_WATCHDOG_INTERVAL": "2",
}


@pytest.fixture
def aof_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AofRedis]:
    """A redis-server with an append-only file and two workers (concurrency 2) on it."""
    server = AofRedis(tmp_path / "aof").start()
    monkeypatch.setattr(options, "broker_url", server.url)
    monkeypatch.setattr(options, "result_backend", server.url)
    monkeypatch.setattr(options, "job_watchdog_interval", 2.0)
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    env = child_env(server.url, server.url, **HEARTBEAT)
    names = [f"aof{i}@faults" for i in range(2)]
    procs = [
        ManagedProcess(n, worker_command(n, concurrency=2), env=env, log_path=tmp_path / f"{n}.log")
        for n in names
    ]
    try:
        for proc in procs:
            proc.start()
        wait_for_workers(server.url, names, timeout=90, processes=dict(zip(names, procs)))
        yield server
    finally:
        stop_all(procs, timeout=10)
        server.stop()


def _restart(server: AofRedis, down: float) -> None:
    server.kill()  # SIGKILL: up to the last second of writes is lost (appendfsync everysec)
    time.sleep(down)
    server.start()


def test_redis_sigkill_restart_mid_pool(aof_cluster, tmp_path):
    rng = seeded("redis-pool")
    folder = tmp_path / "runs"
    folder.mkdir()
    n = 1000
    at = rng.randint(50, 800)
    down = rng.uniform(0.5, 3.0)
    t0 = time.monotonic()
    pool = counted.map([{"x": i, "folder": str(folder)} for i in range(n)], engine="remote")
    wait_until(lambda: int(pool.status().get("success", 0)) >= at, 120, f"{at} entries done")
    _restart(aof_cluster, down)
    pool.wait(timeout=180)
    values = dict(enumerate(pool.results()))
    assert_exactly_once(values, {i: 2 * i for i in range(n)}, "redis restart, pool")
    runs = run_counts(folder)
    print(f"[redis restart, pool] SIGKILL after {at} entries, down {down:.1f} s; finished in "
          f"{time.monotonic() - t0:.1f} s; {sum(c - 1 for c in runs.values())} entries ran "
          "again")  # fmt: skip


def test_redis_sigkill_restart_mid_ingest(aof_cluster, tmp_path, monkeypatch):
    rng = seeded("redis-ingest")
    monkeypatch.setattr(options, "ingest_slice_rows", 2000)
    src = make_points(60_000, seed=rng.randint(0, 1000))
    path = tmp_path / "in.parquet"
    src.to_parquet(path, row_group_size=2000)
    out = tmp_path / "out"
    at = rng.randint(1, 25)
    down = rng.uniform(0.5, 3.0)
    t0 = time.monotonic()
    resp = fused.ingest(str(path), partitioning_maximum_per_chunk=800).run_remote(
        output_table=str(out)
    )
    wait_until(lambda: resp.get_status().finished_tasks >= at, 120, f"{at} tasks")
    _restart(aof_cluster, down)
    resp.wait_for_job(timeout=240)
    assert resp.status == "Done", "\n".join(resp.get_logs()[-8:])
    assert_rows_once(open_table(str(out)).get_dataframe()["uid"], src["uid"], "redis, ingest")
    assert_no_partial_table(out)
    print(f"[redis restart, ingest] SIGKILL after {at} tasks, down {down:.1f} s; done in "
          f"{time.monotonic() - t0:.1f} s")  # fmt: skip


def test_storage_cut_off_mid_write(moto_server, s3_bucket, celery_workers, fused_options,
                                   tmp_path, monkeypatch):  # fmt: skip
    rng = seeded("storage-outage")
    proxy = TcpProxy(moto_server.port)
    try:
        env = s3_env(proxy.url)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(options, "s3_endpoint_url", proxy.url)
        monkeypatch.setattr(options, "ingest_slice_rows", 2000)
        monkeypatch.setattr(options.show, "enable_tqdm", False)
        celery_workers(n=2, concurrency=1, env={**env, **HEARTBEAT})
        src = make_points(40_000, seed=rng.randint(0, 1000))
        path = tmp_path / "in.parquet"
        src.to_parquet(path, row_group_size=2000)
        out = f"{s3_bucket}/tables/out"
        at = rng.randint(1, 15)
        down = rng.uniform(1.0, 4.0)
        t0 = time.monotonic()
        resp = fused.ingest(str(path), partitioning_maximum_per_chunk=800).run_remote(
            output_table=out
        )
        wait_until(lambda: resp.get_status().finished_tasks >= at, 120, f"{at} tasks")
        proxy.cut()
        time.sleep(down)
        proxy.restore()
        resp.wait_for_job(timeout=240)
        assert resp.status == "Done", "\n".join(resp.get_logs()[-8:])
        frame = open_table(out).get_dataframe()
        assert_rows_once(frame["uid"], src["uid"], "storage outage, ingest")
        from fused_celery import storage

        assert not storage.list_files(storage.join(out, "_staging"), recursive=True)
        print(f"[storage outage] cut after {at} tasks for {down:.1f} s; done in "
              f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    finally:
        proxy.close()


def test_cancelled_pool_then_workers_restarted(celery_workers, fused_options, tmp_path,
                                               monkeypatch):  # fmt: skip
    rng = seeded("cancel-restart")
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    workers = celery_workers(n=2, concurrency=1, env=HEARTBEAT)
    folder = tmp_path / "runs"
    folder.mkdir()
    n = 1000
    at = rng.randint(20, 300)
    pool = counted.map([{"x": i, "folder": str(folder)} for i in range(n)], engine="remote")
    wait_until(lambda: int(pool.status().get("success", 0)) >= at, 120, f"{at} entries done")
    pool.cancel()
    cancelled = set(pool.cancelled())
    for worker in workers:
        worker.restart()  # revoked ids lived in worker memory: gone now
    client = redis.Redis.from_url(options.broker_url)
    wait_until(lambda: client.llen("fused") == 0, 60, "the revoked messages consumed")
    pool.wait(timeout=60)
    counts = pool.status().to_dict()
    ran = set(run_counts(folder))
    print(f"[cancel + restart] cancelled after {at} entries: {counts}; "
          f"{len(ran & cancelled)} cancelled entries ran")  # fmt: skip
    assert cancelled and not ran & cancelled, "a cancelled entry ran"
    success = pool.success()
    assert set(success) | cancelled == set(range(n)) and not set(success) & cancelled
    assert_exactly_once(success, {i: 2 * i for i in success}, "cancel + restart")


CLIENT = """
import json, sys
import fused_celery as fused
fused.options.show.enable_tqdm = False

@fused.udf
def f(x: int, tag: int):
    return x * 1000 + tag

out = {}
pools = [f.map([{"x": i, "tag": t} for i in range(200)], engine="remote")
         for t in json.loads(sys.argv[1])]
for pool in pools:
    pool.wait(timeout=240)
    out[pool.id] = pool.results()
print(json.dumps(out))
"""


def test_twenty_pools_from_four_clients(celery_workers, fused_options, tmp_path):
    seeded("twenty-pools")
    celery_workers(n=2, concurrency=2, env=HEARTBEAT)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    tags = [list(range(c * 5, c * 5 + 5)) for c in range(4)]
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), json.dumps(t)], stdout=subprocess.PIPE, text=True
        )
        for t in tags
    ]
    outs: dict[str, Any] = {}
    for proc in procs:
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        outs.update(json.loads(stdout.strip().splitlines()[-1]))
    assert len(outs) == 20
    got = {(v % 1000, v // 1000) for results in outs.values() for v in results}
    assert_exactly_once(
        {k: 1 for k in got}, {(t, i): 1 for t in range(20) for i in range(200)}, "20 pools"
    )
    assert sum(len(r) for r in outs.values()) == 4000
    print(f"[20 pools] 4 clients x 5 pools x 200 entries in {time.monotonic() - t0:.1f} s")
