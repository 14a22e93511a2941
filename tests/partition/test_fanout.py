"""How many slices an ingest's input is cut into (``fused_celery.partition.fanout``, pure), and
the prepare fan-out that uses it: one slice per worker process serving the job, local runs
(this machine's CPUs) and remote ones (the live workers of the job's queue, in Redis)."""

from __future__ import annotations

import time

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest

from fused_celery.options import options
from fused_celery.partition import stage_prepare
from fused_celery.partition.config import GeospatialPartitionJobStepConfig
from fused_celery.partition.fanout import slice_rows_for
from fused_celery.partition.run import IngestRun
from fused_celery.partition.runners import run_ingest
from fused_celery.state import workers
from fused_celery.state.connection import redis_client
from fused_celery.table import TableWriter

MIB = 1 << 20


@pytest.mark.parametrize(
    ("total", "processes", "min_rows", "expected"),
    [
        (1_000_000, 2, 1 << 17, 500_000),  # one row group of 1M on 2 processes: 2 slices
        (1_000_000, 32, 1 << 17, 1 << 17),  # many processes: never below the minimum
        (2_000_000, 2, 1 << 17, MIB),  # already 2 slices of at most 1 MiB rows
        (5_000_000, 8, 1 << 17, 625_000),  # 8 processes: slices of 5M / 8
        (5_000_000, 1, 1 << 17, MIB),  # one process: unchanged
        (None, 4, 1 << 17, MIB),  # unknown row count: unchanged
        (0, 4, 1 << 17, MIB),
        (1_000, 4, 1 << 17, 1 << 17),  # small input: one slice (the minimum is over it)
        (1_000, 4, 100, 250),
        (1_001, 4, 100, 251),  # rounded up: 4 slices, not 5
    ],
)
def test_slice_rows_for(total, processes, min_rows, expected):
    assert slice_rows_for(total, MIB, processes, min_rows) == expected


def _run(tmp_path, n: int, *, remote: bool = False) -> IngestRun:
    rng = np.random.default_rng(7)
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "pts.parquet"
    gpd.GeoDataFrame(
        {"v": np.arange(n)},
        geometry=gpd.points_from_xy(rng.uniform(-20, 20, n), rng.uniform(-10, 10, n)),
        crs=4326,
    ).to_parquet(src, row_group_size=n)  # one row group
    config = GeospatialPartitionJobStepConfig(input=str(src), partitioning_maximum_per_file=300)
    writer = TableWriter(str(tmp_path / "out"), run_id="r1")
    run = IngestRun.create(
        config.model_copy(update={"output": writer.url}), writer, job_id="r1",
        slice_rows=n, sample_rows=1_000,
    )  # fmt: skip
    return run.model_copy(update={"remote": remote})


def test_a_one_group_input_is_cut_into_one_slice_per_local_process(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_prepare, "cpu_count", lambda: 4)
    monkeypatch.setattr(options, "ingest_min_slice_rows", 100)
    run, items = stage_prepare.prepare_items(_run(tmp_path, 1_000))
    assert [i["num_rows"] for i in items] == [250, 250, 250, 250]
    assert [(i["row_start"], i["row_stop"]) for i in items] == [
        (0, 250), (250, 500), (500, 750), (750, 1_000)
    ]  # fmt: skip
    assert (run.slice_rows, run.n_slices, run.input_rows) == (250, 4, 1_000)
    monkeypatch.setattr(options, "ingest_min_slice_rows", 400)  # not below the minimum
    run, items = stage_prepare.prepare_items(_run(tmp_path / "b", 1_000))
    assert [i["num_rows"] for i in items] == [334, 334, 332] and run.slice_rows == 400
    monkeypatch.setattr(stage_prepare, "cpu_count", lambda: 1)  # one process: one slice
    run, items = stage_prepare.prepare_items(_run(tmp_path / "c", 1_000))
    assert [i["num_rows"] for i in items] == [1_000] and run.slice_rows == 1_000


def test_an_ingest_cut_for_more_processes_keeps_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_prepare, "cpu_count", lambda: 3)
    monkeypatch.setattr(options, "ingest_min_slice_rows", 100)
    run = _run(tmp_path, 1_000)
    cut, items = stage_prepare.prepare_items(run)
    assert len(items) == 3  # so the ingest below reads three row ranges of the one group
    table = run_ingest(run.config, str(tmp_path / "t"), engine=None)
    assert (table.num_rows, table.ingest_report["input_rows"]) == (1_000, 1_000)
    got = pq.read_table(str(tmp_path / "t"), columns=["v"]).column("v").to_pylist()
    assert sorted(got) == list(range(1_000))  # every row once


def test_a_remote_run_counts_the_live_workers_of_its_queue(tmp_path, fused_options, redis_url):
    client = redis_client(redis_url)
    now = time.time()
    for name, concurrency, seen in (("a@h", 3, now), ("b@h", 2, now - 1), ("old@h", 8, now - 300)):
        info = workers.WorkerInfo(name, ("fused",), concurrency, None, now - 600)
        workers.heartbeat(client, info, now=seen)
    assert workers.processes_serving(client, "fused", within=30, now=now) == 5
    assert workers.processes_serving(client, "other", within=30, now=now) == 0
    run = _run(tmp_path, 10, remote=True)
    assert stage_prepare.serving_processes(run) == 5
    assert stage_prepare.serving_processes(run.model_copy(update={"remote": False})) > 0
    client.delete(*client.keys("fc:*"))  # no worker at all (an autoscaled group at zero)
    assert stage_prepare.serving_processes(run) == 1
