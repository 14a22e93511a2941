"""``fused.ingest``: the staged pipeline, on this machine (local engine) and on a real cluster
(Celery chords on real workers), local disk and S3 (moto server on loopback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import fused_celery as fused
from fused_celery import storage
from fused_celery.errors import (
    IngestInputError,
    IngestRowsWarning,
    JobFailedError,
    TableExistsError,
    TableNotFoundError,
)
from fused_celery.jobs.response import RunResponse
from fused_celery.options import options
from fused_celery.partition import stage_write
from fused_celery.table import open_table, read_chunk_metadata

pytest_plugins = ["moto_server"]


def points(n: int, seed: int = 0) -> gpd.GeoDataFrame:
    """``n`` points: half in three clusters, half uniform; columns ``uid``, ``v``, ``cat``."""
    rng = np.random.default_rng(seed)
    k = n // 2
    centers = np.array([[-73.9, 40.7], [2.35, 48.85], [139.7, 35.7]])
    c = centers[rng.integers(0, 3, k)] + rng.normal(0, 0.5, (k, 2))
    u = np.column_stack([rng.uniform(-179, 179, n - k), rng.uniform(-80, 80, n - k)])
    xy = np.vstack([c, u])
    return gpd.GeoDataFrame(
        {
            "uid": np.arange(n, dtype=np.int64),
            "v": rng.normal(size=n),
            "cat": rng.choice(["a", "b", "c"], n),
        },
        geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]),
        crs="EPSG:4326",
    )


def check_table(url: str, source: gpd.GeoDataFrame, *, max_rows_chunk: float | None = None):
    """Every source row exactly once, chunk metadata equal to the rows, maxima held."""
    table = open_table(url)
    frame = table.get_dataframe()
    assert len(frame) == len(source)
    assert sorted(frame["uid"]) == sorted(source["uid"])
    got = frame.set_index("uid").sort_index()
    want = source.set_index("uid").sort_index()
    assert np.allclose(got["v"].to_numpy(), want["v"].to_numpy())
    assert shapely.equals(got.geometry.to_numpy(), want.geometry.to_numpy()).all()
    metas = read_chunk_metadata(url)
    assert sum(m.num_rows for m in metas) == len(source)
    for m in metas:
        rows = table.get_chunk(m.file_id, m.chunk_id)
        assert len(rows) == m.num_rows
        b = rows.total_bounds
        assert np.allclose(b, [m.bbox_minx, m.bbox_miny, m.bbox_maxx, m.bbox_maxy])
        if max_rows_chunk is not None:
            assert m.num_rows <= max_rows_chunk
    return table


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of 500 rows and a plan sample of 400 rows, so that small inputs exercise several
    slices, a sampled plan and the refinement of chunks over their maximum."""
    monkeypatch.setattr(options, "ingest_slice_rows", 500)
    monkeypatch.setattr(options, "ingest_sample_rows", 400)


# --- local ------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", [None, "local"])
def test_local_ingest_sampled_plan_is_refined_to_the_maxima(tmp_path, small_slices, engine):
    from fused_celery.partition.runners import run_ingest

    src = points(3000)
    path = tmp_path / "in.parquet"
    src.to_parquet(path, row_group_size=300)
    job = fused.ingest(
        str(path),
        partitioning_maximum_per_file=400,
        partitioning_maximum_per_chunk=60,
        partitioning_force_utm=None,
    )
    table = run_ingest(job, str(tmp_path / "out"), engine=engine)
    check_table(table.url, src, max_rows_chunk=60)
    metas = read_chunk_metadata(table.url)
    per_file = pd.Series([m.num_rows for m in metas]).groupby([m.file_id for m in metas]).sum()
    assert (per_file <= 400).all()
    assert not storage.exists(str(tmp_path / "out" / "_staging"))


def test_run_local_in_memory_frame_and_lonlat_frame(tmp_path):
    src = points(700)
    table = fused.ingest(src).run_local(str(tmp_path / "a"))
    check_table(table.url, src)
    plain = pd.DataFrame({"uid": src["uid"], "v": src["v"], "cat": src["cat"]})
    plain["lon"], plain["lat"] = src.geometry.x, src.geometry.y
    table = fused.ingest(plain, lonlat_cols=("lon", "lat")).run_local(str(tmp_path / "b"))
    frame = table.get_dataframe()
    assert sorted(frame["uid"]) == list(range(700))


def test_local_error_leaves_no_table_and_keeps_type(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    out = tmp_path / "out"
    with pytest.raises(IngestInputError, match="bad.parquet"):
        fused.ingest(str(bad)).run_local(str(out))
    assert not out.exists() or not any(out.rglob("*"))
    with pytest.raises(TableNotFoundError):
        open_table(str(out))


def test_local_ignore_chunk_error_commits_the_rest(tmp_path, small_slices):
    src = points(1000)
    folder = tmp_path / "in"
    folder.mkdir()
    src.iloc[:600].to_parquet(folder / "a.parquet")
    src.iloc[600:].to_parquet(folder / "b.parquet")
    (folder / "c.parquet").write_bytes(b"PAR1 broken")
    job = fused.ingest(str(folder), ignore_chunk_error=True)
    with pytest.raises(IngestInputError):
        fused.ingest(str(folder)).run_local(str(tmp_path / "strict"))
    table = job.run_local(str(tmp_path / "out"))
    assert table.num_rows == 1000


def test_existing_output_is_refused_before_any_work(tmp_path):
    src = points(200)
    out = str(tmp_path / "out")
    fused.ingest(src).run_local(out)
    with pytest.raises(TableExistsError, match="overwrite"):
        fused.ingest(src).run_local(out)
    table = fused.ingest(src.iloc[:100], overwrite=True).run_local(out)
    assert table.num_rows == 100


# --- stages (pure parts) ------------------------------------------------------------------


def test_refine_and_group_chunks():
    rng = np.random.default_rng(3)
    n = 500
    x, y = rng.uniform(0, 10, n), rng.uniform(0, 10, n)
    chunk = np.sort(rng.integers(0, 3, n))
    out = stage_write.refine_chunks(
        x, y, np.ones(n), np.arange(n), chunk, max_per_chunk=50, options={}
    )
    counts = np.bincount(out)
    assert counts.max() <= 50 and counts.sum() == n
    for old in range(3):  # the old chunks' order is kept
        assert out[chunk == old].max() < out[chunk == old + 1].min() if old < 2 else True
    assert stage_write.group_chunks(np.array([3, 3, 3, 5, 1]), 6) == [(0, 2), (2, 3), (3, 5)]
    assert stage_write.group_chunks(np.array([9.0]), 6) == [(0, 1)]


# --- cluster ------------------------------------------------------------------------------------


def test_remote_ingest_on_cluster(on_shared_cluster, tmp_path, small_slices):
    src = points(2500, seed=1)
    path = tmp_path / "in.parquet"
    src.to_parquet(path, row_group_size=250)
    job = fused.ingest(str(path), partitioning_maximum_per_chunk=100)
    resp = job.run_remote(output_table=str(tmp_path / "out"))
    assert isinstance(resp, RunResponse)
    resp.wait_for_job(timeout=120)
    assert resp.status == "Done", "\n".join(resp.get_logs()[-6:])
    assert resp.finished_tasks == resp.total_tasks > 5
    check_table(str(tmp_path / "out"), src, max_rows_chunk=100)
    results = resp.get_results()
    assert results["num_rows"] == 2500 and results["failed"] == []
    assert any("plan:" in line for line in resp.get_logs())
    # another process sees the same job by id
    code = (
        f"import fused_celery as f; r = f.api.job_get_status({resp.job_id!r}); "
        "print(r.status, r.finished_tasks, r.total_tasks)"
    )
    env = {
        **os.environ,
        "FUSED_CELERY_BROKER_URL": on_shared_cluster,
        "FUSED_CELERY_RESULT_BACKEND": on_shared_cluster,
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    ).stdout.split()
    assert out == ["Done", str(resp.total_tasks), str(resp.total_tasks)]


@pytest.mark.parametrize(
    "kind",
    ["geojson", "gpkg", "shp", "fgb", "csv-lonlat", "csv-wkt", "parquet-lonlat", "list", "frame"],
)
def test_remote_ingest_input_kinds(on_shared_cluster, tmp_path, kind):
    src = points(300, seed=2)
    kwargs: dict = {}
    if kind == "frame":
        data: object = src
    elif kind == "csv-lonlat":
        df = pd.DataFrame({"uid": src["uid"], "v": src["v"], "cat": src["cat"]})
        df["lon"], df["lat"] = src.geometry.x, src.geometry.y
        data = str(tmp_path / "in.csv")
        df.to_csv(data, index=False)
        kwargs["lonlat_cols"] = ("lon", "lat")
    elif kind == "csv-wkt":
        df = pd.DataFrame({"uid": src["uid"], "v": src["v"], "cat": src["cat"]})
        df["wkt"] = src.geometry.to_wkt()
        data = str(tmp_path / "in.csv")
        df.to_csv(data, index=False)
        opts = {"GEOM_POSSIBLE_NAMES": "wkt", "KEEP_GEOM_COLUMNS": "NO", "AUTODETECT_TYPE": "YES"}
        kwargs["gdal_config"] = {"open_options": opts}
    elif kind == "parquet-lonlat":
        df = pd.DataFrame({"uid": src["uid"], "v": src["v"], "cat": src["cat"]})
        df["lon"], df["lat"] = src.geometry.x, src.geometry.y
        data = str(tmp_path / "in.parquet")
        df.to_parquet(data)
        kwargs["lonlat_cols"] = ("lon", "lat")
    elif kind == "list":
        src.iloc[:100].to_parquet(tmp_path / "a.parquet")
        src.iloc[100:].to_file(tmp_path / "b.gpkg", driver="GPKG", engine="pyogrio")
        data = [str(tmp_path / "a.parquet"), str(tmp_path / "b.gpkg")]
    else:
        driver = {
            "geojson": "GeoJSON",
            "gpkg": "GPKG",
            "shp": "ESRI Shapefile",
            "fgb": "FlatGeobuf",
        }
        data = str(tmp_path / f"in.{kind}")
        src.to_file(data, driver=driver[kind], engine="pyogrio")
    resp = fused.ingest(data, **kwargs).run_remote(output_table=str(tmp_path / "out"))
    resp.wait_for_job(timeout=120)
    assert resp.status == "Done", "\n".join(resp.get_logs()[-6:])
    frame = open_table(str(tmp_path / "out")).get_dataframe()
    assert sorted(frame["uid"]) == list(range(300))
    assert "wkt" not in frame.columns and "geometry" in frame.columns


def test_remote_bad_input_fails_job_with_reason_and_no_table(on_shared_cluster, tmp_path):
    out = tmp_path / "out"
    resp = fused.ingest(str(tmp_path / "missing.parquet")).run_remote(output_table=str(out))
    resp.wait_for_job(timeout=60)
    assert resp.status == "Failed"
    with pytest.raises(JobFailedError, match="missing.parquet"):
        resp.get_results()
    assert not out.exists() or not any(out.rglob("*"))


def test_remote_existing_output_refused_at_submit(on_shared_cluster, tmp_path):
    src = points(100)
    out = str(tmp_path / "out")
    fused.ingest(src).run_local(out)
    with pytest.raises(TableExistsError):
        fused.ingest(src).run_remote(output_table=out)
    with pytest.raises(ValueError, match="instance type"):
        fused.ingest(src).run_remote(output_table=out, instance_type="t2.nano")
    with pytest.raises(ValueError, match="KEY=value"):
        fused.ingest(src).run_remote(output_table=out, additional_env=["NOPE"])


def test_remote_ignore_chunk_error(on_shared_cluster, tmp_path):
    src = points(400)
    folder = tmp_path / "in"
    folder.mkdir()
    src.iloc[:250].to_parquet(folder / "a.parquet")
    src.iloc[250:].to_parquet(folder / "b.parquet")
    (folder / "c.geojson").write_text("{ not json")
    resp = fused.ingest(str(folder), ignore_chunk_error=True).run_remote(
        output_table=str(tmp_path / "out")
    )
    resp.wait_for_job(timeout=60)
    assert resp.status == "Done", "\n".join(resp.get_logs()[-6:])
    result = resp.get_results()
    assert result["num_rows"] == 400
    assert [f["stage"] for f in result["failed"]] == ["prepare"]
    assert "c.geojson" in result["failed"][0]["error"]


def test_remote_cancel_leaves_no_table(on_shared_cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(options, "ingest_slice_rows", 50)
    src = points(4000)
    path = tmp_path / "in.parquet"
    src.to_parquet(path, row_group_size=50)
    out = tmp_path / "out"
    resp = fused.ingest(str(path)).run_remote(output_table=str(out))
    deadline = time.monotonic() + 60
    while resp.get_status().finished_tasks < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    resp.cancel(wait=True, timeout=60)
    assert resp.status == "Canceled", resp.get_logs()
    assert not (out / "_sample").exists()
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_watchdog_fails_a_stalled_job(fused_options, tmp_path, monkeypatch):
    from fused_celery.jobs import celery_driver
    from fused_celery.partition.run import IngestRun
    from fused_celery.state.job_record import JobRecord
    from fused_celery.table import TableWriter

    writer = TableWriter(str(tmp_path / "out"), run_id="stalled")
    run = IngestRun.create(
        fused.ingest(str(tmp_path / "x.parquet")),
        writer,
        job_id="stalled",
        slice_rows=10,
        sample_rows=10,
    ).model_copy(update={"n_slices": 1})
    storage.write_bytes(storage.join(run.work, "samples", "0.parquet"), b"x")
    record = JobRecord.create(
        job_id="stalled", name=None, kind="test", instance_type=None, output=None, config={}
    )
    record.start_stage("prepare", 3)
    monkeypatch.setattr(options, "job_stall_timeout", 0.2)
    time.sleep(0.3)
    target = "fused_celery.partition.sequence:INGEST"
    celery_driver.watchdog(target, run.model_dump(mode="json"), "fused")  # the task's function
    snap = record.snapshot()
    assert snap.status == "Failed"
    assert "no progress" in snap.reason and "prepare" in snap.reason
    assert not (tmp_path / "out").exists() or not any(
        p.is_file() for p in (tmp_path / "out").rglob("*")
    )


def test_remote_ingest_s3_in_and_out(
    s3_bucket, s3_options, celery_workers, fused_options, tmp_path
):
    celery_workers(n=1, concurrency=2, env=s3_options)
    src = points(800, seed=4)
    local = tmp_path / "in.parquet"
    src.to_parquet(local, row_group_size=200)
    storage.write_bytes(f"{s3_bucket}/in/points.parquet", local.read_bytes())
    src.to_file(tmp_path / "in.gpkg", driver="GPKG", engine="pyogrio")
    storage.write_bytes(f"{s3_bucket}/in/points.gpkg", (tmp_path / "in.gpkg").read_bytes())
    for name in ("points.parquet", "points.gpkg"):
        out = f"{s3_bucket}/tables/{name.replace('.', '-')}"
        resp = fused.ingest(f"{s3_bucket}/in/{name}").run_remote(output_table=out)
        resp.wait_for_job(timeout=120)
        assert resp.status == "Done", "\n".join(resp.get_logs()[-6:])
        check_table(out, src)
        assert not storage.list_files(storage.join(out, "_staging"), recursive=True)
    table = fused.ingest(f"{s3_bucket}/in/points.parquet").run_local(f"{s3_bucket}/tables/local")
    assert table.num_rows == 800


@pytest.mark.slow
def test_worker_sigkill_mid_ingest_still_finishes(
    celery_workers, fused_options, tmp_path, monkeypatch
):
    monkeypatch.setattr(options, "ingest_slice_rows", 2000)
    env = {"FUSED_CELERY_VISIBILITY_TIMEOUT": "8"}
    workers = celery_workers(n=2, concurrency=1, env=env)
    src = points(60_000, seed=5)
    path = tmp_path / "in.parquet"
    src.to_parquet(path, row_group_size=2000)
    resp = fused.ingest(str(path), partitioning_maximum_per_chunk=800).run_remote(
        output_table=str(tmp_path / "out")
    )
    deadline = time.monotonic() + 60
    while resp.get_status().finished_tasks < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert resp.status == "Running"
    workers[0].kill(signal.SIGKILL)
    resp.wait_for_job(timeout=240)
    assert resp.status == "Done", "\n".join(resp.get_logs()[-6:])
    check_table(str(tmp_path / "out"), src, max_rows_chunk=800)


def _bad_input(kind: str, folder: Path) -> tuple[object, dict]:
    """An input of ``kind`` that cannot be ingested, and the ingest options."""
    src = points(50)
    if kind == "corrupt":
        (folder / "in.parquet").write_bytes(b"PAR1" + os.urandom(200))
        return str(folder / "in.parquet"), {}
    if kind == "truncated":
        src.to_parquet(folder / "full.parquet")
        data = (folder / "full.parquet").read_bytes()
        (folder / "in.parquet").write_bytes(data[: len(data) // 2])
        return str(folder / "in.parquet"), {}
    if kind == "unsupported":
        (folder / "in.xyz").write_text("1 2 3\n")
        return str(folder / "in.xyz"), {}
    if kind == "empty":
        src.iloc[:0].to_parquet(folder / "in.parquet")
        return str(folder / "in.parquet"), {}
    if kind == "empty-dir":
        (folder / "d").mkdir()
        return str(folder / "d"), {}
    csv = folder / "in.csv"
    if kind == "lonlat-missing":
        pd.DataFrame({"x": [1.0], "y": [2.0]}).to_csv(csv, index=False)
        return str(csv), {"lonlat_cols": ("lon", "lat")}
    if kind == "non-numeric":
        pd.DataFrame({"lon": ["1.0", "abc"], "lat": [2.0, 3.0]}).to_csv(csv, index=False)
        return str(csv), {"lonlat_cols": ("lon", "lat")}
    if kind == "nan":
        pd.DataFrame({"lon": [1.0, None], "lat": [2.0, 3.0]}).to_csv(csv, index=False)
        return str(csv), {"lonlat_cols": ("lon", "lat")}
    if kind == "not-degrees":
        gdf = gpd.GeoDataFrame(geometry=gpd.points_from_xy([5e5, 6e5], [4e6, 5e6]))
        gdf.to_parquet(folder / "in.parquet")
        return str(folder / "in.parquet"), {}
    raise AssertionError(kind)


BAD_INPUTS = {
    "corrupt": "in.parquet",
    "truncated": "in.parquet",
    "unsupported": "supported",
    "empty": "no rows",
    "empty-dir": "no input files",
    "lonlat-missing": "lon",
    "non-numeric": "numeric",
    "nan": "NaN",
    "not-degrees": "cannot be degrees",
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_remote_bad_inputs_fail_with_reason(on_shared_cluster, tmp_path, kind):
    data, kwargs = _bad_input(kind, tmp_path)
    out = tmp_path / "out"
    resp = fused.ingest(data, **kwargs).run_remote(output_table=str(out))
    resp.wait_for_job(timeout=60)
    assert resp.status == "Failed", "\n".join(resp.get_logs()[-4:])
    snap = fused.api.job_get_status(resp.job_id)
    assert snap.status == "Failed"
    with pytest.raises(JobFailedError) as err:
        resp.get_results()
    assert BAD_INPUTS[kind].lower() in str(err.value).lower()
    assert "Traceback" not in str(err.value)
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_bad_options_are_refused_before_any_job():
    from fused_celery.errors import StepConfigError

    for bad in (
        {"subdivide_stop": 0},
        {"partitioning_maximum_per_chunk": 0},
        {"partitioning_maximum_per_file": -1},
        {"partitioning_method": "volume"},
    ):
        with pytest.raises(StepConfigError):
            fused.ingest("x.parquet", **bad)


def test_remote_repairs_are_reported(on_shared_cluster, tmp_path):
    """Invalid polygons are made valid, out-of-bounds rows dropped, mixed types kept."""
    bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])
    geoms = [bowtie, shapely.Point(5, 5), shapely.LineString([(0, 0), (2, 2)]),
             shapely.Point(500, 5)]  # fmt: skip
    gdf = gpd.GeoDataFrame({"uid": range(4)}, geometry=geoms, crs="EPSG:4326")
    gdf.to_parquet(tmp_path / "in.parquet")
    resp = fused.ingest(str(tmp_path / "in.parquet")).run_remote(output_table=str(tmp_path / "o"))
    resp.wait_for_job(timeout=60)
    assert resp.status == "Done", "\n".join(resp.get_logs()[-4:])
    report = resp.get_results()["report"]
    assert report["made_valid"] == 1 and report["dropped_out_of_bounds"] == 1
    table = open_table(str(tmp_path / "o"))
    frame = table.get_dataframe()
    assert sorted(frame["uid"]) == [0, 1, 2]
    assert shapely.is_valid(frame.geometry.to_numpy()).all()
    assert {"Point", "LineString"} <= set(frame.geometry.geom_type)


def test_points_fast_path_matches_the_general_path(tmp_path):
    """GeoParquet points skip geometry decoding; the table equals the one made from the same
    points read through GDAL (the general path), out-of-bounds rows dropped in both."""
    from fused_celery.partition.runners import run_ingest

    src = points(1500, seed=7)
    src.loc[3, "geometry"] = shapely.Point(200, 0)  # out of bounds: dropped
    src.to_parquet(tmp_path / "in.parquet")
    src.to_file(tmp_path / "in.fgb", driver="FlatGeobuf", engine="pyogrio")
    opts = {"partitioning_maximum_per_chunk": 40}
    fast = run_ingest(fused.ingest(str(tmp_path / "in.parquet"), **opts), str(tmp_path / "a"))
    slow = run_ingest(fused.ingest(str(tmp_path / "in.fgb"), **opts), str(tmp_path / "b"))
    assert fast.num_rows == slow.num_rows == 1499
    a, b = read_chunk_metadata(fast.url), read_chunk_metadata(slow.url)
    assert [m.model_dump() for m in a] == [m.model_dump() for m in b]
    fa = fast.get_dataframe().sort_values("uid")
    fb = slow.get_dataframe().sort_values("uid")
    assert shapely.equals(fa.geometry.to_numpy(), fb.geometry.to_numpy()).all()


def test_points_slices_fast_and_general_in_one_table(tmp_path, monkeypatch):
    """Slices of one input take different paths (a null geometry sends its slice to the general
    path; the others are read again from their WKB, their centroids and measures too): the
    table equals the general path's, a point past the bounds by rounding clamped in both."""
    from fused_celery.partition.runners import run_ingest

    monkeypatch.setattr(options, "ingest_slice_rows", 500)
    src = points(1500, seed=8)
    src.loc[5, "geometry"] = shapely.Point(180 + 1e-12, 10)  # past the bounds by rounding
    src.loc[1200, "geometry"] = None  # the third slice: general path
    src.to_parquet(tmp_path / "in.parquet", row_group_size=500)
    src.to_file(tmp_path / "in.gpkg", driver="GPKG", engine="pyogrio")
    opts = {"partitioning_maximum_per_chunk": 40}
    with pytest.warns(IngestRowsWarning):
        mixed = run_ingest(fused.ingest(str(tmp_path / "in.parquet"), **opts), str(tmp_path / "a"))
    with pytest.warns(IngestRowsWarning):
        slow = run_ingest(fused.ingest(str(tmp_path / "in.gpkg"), **opts), str(tmp_path / "b"))
    assert mixed.num_rows == slow.num_rows == 1499
    a, b = read_chunk_metadata(mixed.url), read_chunk_metadata(slow.url)
    assert [m.model_dump() for m in a] == [m.model_dump() for m in b]
    assert max(m.bbox_maxx for m in a) == 180.0  # clamped


def test_unreachable_broker_at_submit_leaves_nothing(tmp_path, monkeypatch):
    from fused_celery.errors import BrokerUnavailableError

    monkeypatch.setattr(options, "broker_url", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(options, "result_backend", None)
    out = tmp_path / "out"
    with pytest.raises(BrokerUnavailableError, match="127.0.0.1:1"):
        fused.ingest(points(20)).run_remote(output_table=str(out))
    assert not out.exists()


def test_write_groups_gather_small_files():
    scattered = [
        {"slice_id": 0, "files": {"0": [0, 10], "1": [1, 10], "2": [2, 500]}},
        {"slice_id": 1, "files": {"1": [0, 5], "3": [1, 30]}},
    ]
    groups = stage_write.write_groups(scattered, min_rows=20)
    assert groups == [
        [[0, [[0, 0]]], [1, [[0, 1], [1, 0]]]],  # 10 + 15 rows
        [[2, [[0, 2]]]],  # 500 rows: alone
        [[3, [[1, 1]]]],  # the rest
    ]
    assert [f for g in stage_write.write_groups(scattered, 1) for f, _ in g] == [0, 1, 2, 3]
