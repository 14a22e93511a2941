"""``fused.ingest`` and the output location (issue "Nothing lost, nothing leaked", 1): a failed or
cancelled ingest leaves the output exactly as it was (an absent folder stays absent, an old table
stays byte for byte); ``overwrite=True`` never deletes a user's files. Local runs (this process)
and a real cluster (``on_shared_cluster``: real Celery workers)."""

from __future__ import annotations

import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

import fused_celery as fused
from fused_celery import storage
from fused_celery.errors import IngestInputError, UnsafeLocationError, UnsafeOverwriteError
from fused_celery.options import options


def points(n: int, seed: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    return gpd.GeoDataFrame(
        {"uid": np.arange(n, dtype=np.int64), "v": rng.normal(size=n)},
        geometry=gpd.points_from_xy(rng.uniform(-170, 170, n), rng.uniform(-80, 80, n)),
        crs="EPSG:4326",
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_failed_local_ingest_leaves_no_output_folder(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    out = tmp_path / "tables" / "out"  # neither folder exists
    with pytest.raises(IngestInputError):
        fused.ingest(str(bad)).run_local(str(out))
    assert not (tmp_path / "tables").exists()
    with pytest.raises(FileNotFoundError):
        fused.ingest(str(tmp_path / "missing.parquet")).run_local(str(out))
    assert not (tmp_path / "tables").exists()


def test_failed_local_overwrite_keeps_the_old_table(tmp_path):
    out = tmp_path / "out"
    fused.ingest(points(200)).run_local(str(out))
    before = snapshot(out)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(IngestInputError):
        fused.ingest(str(bad), overwrite=True).run_local(str(out))
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p for p in before if "/" not in p
    )  # no _staging/ left


def test_interrupted_local_ingest_leaves_no_output_folder(tmp_path, monkeypatch):
    from fused_celery.partition import stage_plan

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the run

    monkeypatch.setattr(stage_plan, "make_plan", interrupted)
    out = tmp_path / "new" / "out"
    with pytest.raises(KeyboardInterrupt):
        fused.ingest(points(300)).run_local(str(out))
    assert not (tmp_path / "new").exists()


def test_overwrite_ingest_into_a_user_folder_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    points(20).to_parquet(data / "precious.parquet")
    (data / "_staging").mkdir()
    (data / "_staging" / "keep.txt").write_text("mine")
    before = snapshot(data)
    with pytest.raises(UnsafeOverwriteError, match="precious.parquet"):
        fused.ingest(points(50), overwrite=True).run_local(str(data))
    assert snapshot(data) == before


def test_overwrite_ingest_into_home_or_a_parent_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / "a.parquet").write_bytes(b"PAR1")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "work")
    for target in ("~", ".."):
        with pytest.raises(UnsafeLocationError):
            fused.ingest(points(50), overwrite=True).run_local(target)
    assert (home / "a.parquet").read_bytes() == b"PAR1"


def test_remote_failed_ingest_leaves_no_output_folder(on_shared_cluster, tmp_path):
    out = tmp_path / "tables" / "out"
    resp = fused.ingest(str(tmp_path / "missing.parquet")).run_remote(output_table=str(out))
    resp.wait_for_job(timeout=60)
    assert resp.status == "Failed"
    assert not (tmp_path / "tables").exists()


def test_remote_cancelled_overwrite_keeps_the_old_table(on_shared_cluster, tmp_path, monkeypatch):
    out = tmp_path / "out"
    fused.ingest(points(100)).run_local(str(out))
    before = snapshot(out)
    monkeypatch.setattr(options, "ingest_slice_rows", 50)
    src = points(4000, seed=1)
    path = tmp_path / "in.parquet"
    src.to_parquet(path, row_group_size=50)
    resp = fused.ingest(str(path), overwrite=True).run_remote(output_table=str(out))
    deadline = time.monotonic() + 60
    while resp.get_status().finished_tasks < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    resp.cancel(wait=True, timeout=60)
    assert resp.status == "Canceled", resp.get_logs()
    assert snapshot(out) == before
    assert not (out / "_staging").exists()
    assert storage.list_files(str(out)) == sorted(p for p in before if "/" not in p)
