"""Single-process ingest (fused_celery.partition.runners.run_ingest) and its config model."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fused_celery import storage
from fused_celery.errors import (
    IngestInputError,
    StepConfigError,
    TableExistsError,
    UnsupportedInputError,
)
from fused_celery.partition.config import GeospatialPartitionJobStepConfig
from fused_celery.partition.runners import run_ingest
from fused_celery.table import compute_chunk_metadata, open_table, read_chunk_metadata


def _ingest(config, output=None):
    """Run ``config`` in this process (no worker processes); the table's URL."""
    return run_ingest(config, output, engine=None).url


API_DEFAULTS = {
    "output": None,
    "output_metadata": None,
    "ignore_chunk_error": False,
    "partitioning_method": "rows",
    "partitioning_maximum_per_file": None,
    "partitioning_maximum_per_chunk": None,
    "partitioning_max_width_ratio": 2,
    "partitioning_max_height_ratio": 2,
    "partitioning_split_method": "mean",
    "partitioning_force_utm": "chunk",
    "subdivide_method": "area",
    "subdivide_start": None,
    "subdivide_stop": None,
    "split_identical_centroids": True,
    "target_num_chunks": 500,
    "lonlat_cols": None,
    "drop_out_of_bounds": None,
    "explode_geometries": False,
    "load_columns": None,
    "remove_cols": [],
    "file_suffix": None,
    "overwrite": False,
}


def test_config_defaults_and_json_round_trip():
    cfg = GeospatialPartitionJobStepConfig(input="s3://bucket/in.parquet")
    dumped = cfg.model_dump()
    for key, value in API_DEFAULTS.items():
        assert dumped[key] == value, key
    assert dumped["gdal_config"] == {"open_options": {}, "layer": None, "config_options": {}}
    text = cfg.model_dump_json()
    assert GeospatialPartitionJobStepConfig.model_validate_json(text) == cfg
    frame_cfg = GeospatialPartitionJobStepConfig(input=gpd.GeoDataFrame(geometry=[]))
    assert json.loads(frame_cfg.model_dump_json())["input"] == "<GeoDataFrame: 0 rows>"


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"subdivide_start": 1.0, "subdivide_stop": 0.0}, "subdivide_stop must be > 0"),
        ({"subdivide_start": 1.0, "subdivide_stop": 2.0}, ">= subdivide_stop"),
        ({"subdivide_start": 1.0, "subdivide_method": None}, "subdivide_method"),
        ({"partitioning_maximum_per_file": 0}, "partitioning_maximum_per_file must be"),
        ({"partitioning_maximum_per_chunk": -5}, "partitioning_maximum_per_chunk must be"),
        ({"partitioning_method": "volume"}, "partitioning_method"),
        ({"partitioning_split_method": "mode"}, "partitioning_split_method"),
        ({"partitioning_force_utm": "zone"}, "partitioning_force_utm"),
        ({"partitioning_max_width_ratio": 0}, "partitioning_max_width_ratio must be"),
        ({"target_num_chunks": 0}, "target_num_chunks"),
        ({"input": 42}, "input must be"),
        ({"input": []}, "input list"),
        ({"load_columns": ["a"], "remove_cols": ["a"]}, "both load_columns and remove_cols"),
        ({"unknown_option": 1}, "unknown_option"),
    ],
)
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(StepConfigError, match=match):
        GeospatialPartitionJobStepConfig(**{"input": "in.parquet", **bad})


def test_config_validates_assignment():
    cfg = GeospatialPartitionJobStepConfig(input="in.parquet")
    with pytest.raises(StepConfigError):
        cfg.partitioning_maximum_per_chunk = 0


def chunk_frames(url: str) -> dict[tuple[str, int], gpd.GeoDataFrame]:
    out = {}
    for f in open_table(url).files:
        pf = pq.ParquetFile(storage.join(url, f"{f}.parquet"))
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i)
            geoms = shapely.from_wkb(t.column("geometry").to_numpy(zero_copy_only=False))
            out[(f, i)] = gpd.GeoDataFrame(
                t.drop_columns(["geometry", "bbox"]).to_pandas(), geometry=geoms, crs=4326
            )
    return out


def check_table(url: str, n_rows: int, ids: np.ndarray, per_file: float, per_chunk: float):
    """Every row once; chunks and files within maxima (unless one row / identical
    centroids); chunk metadata equals the chunk's data."""
    chunks = chunk_frames(url)
    metas = {(m.file_id, m.chunk_id): m for m in read_chunk_metadata(url)}
    assert set(chunks) == set(metas)
    seen = np.concatenate([c["rid"].to_numpy() for c in chunks.values()])
    assert sorted(seen.tolist()) == sorted(ids.tolist()) and len(seen) == n_rows
    by_file: dict[str, int] = {}
    for key, c in chunks.items():
        expected = compute_chunk_metadata(key[0], key[1], np.asarray(c.geometry.array))
        assert metas[key] == expected
        cent = shapely.centroid(np.asarray(c.geometry.array))
        identical = len({(round(p.x, 12), round(p.y, 12)) for p in cent}) == 1
        assert len(c) <= per_chunk or len(c) == 1 or identical
        by_file[key[0]] = by_file.get(key[0], 0) + len(c)
    assert all(v <= per_file for v in by_file.values())


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 1000),
    per_file=st.integers(5, 100),
    method=st.sampled_from(["mean", "median"]),
)
def test_ingest_properties(tmp_path_factory, n, seed, per_file, method):
    rng = np.random.default_rng(seed)
    x = np.round(rng.uniform(-20, 20, n), 1)  # rounding makes duplicates likely
    y = np.round(rng.uniform(-10, 10, n), 1)
    g = gpd.GeoDataFrame({"rid": np.arange(n)}, geometry=gpd.points_from_xy(x, y), crs=4326)
    url = str(tmp_path_factory.mktemp("t") / "table")
    per_chunk = max(1, per_file // 4)
    cfg = GeospatialPartitionJobStepConfig(
        input=g,
        partitioning_maximum_per_file=per_file,
        partitioning_maximum_per_chunk=per_chunk,
        partitioning_split_method=method,
    )
    assert _ingest(cfg, url) == storage.normalize(url)
    check_table(url, n, np.arange(n), per_file, per_chunk)


def test_uniform_points_chunk_bboxes_barely_overlap(tmp_path):
    rng = np.random.default_rng(7)
    n = 4000
    g = gpd.GeoDataFrame(
        {"rid": np.arange(n)},
        geometry=gpd.points_from_xy(rng.uniform(0, 4, n), rng.uniform(0, 4, n)),
        crs=4326,
    )
    url = _ingest(GeospatialPartitionJobStepConfig(input=g, output=str(tmp_path / "t")))
    metas = read_chunk_metadata(url)
    assert len(metas) >= 100 and len({m.file_id for m in metas}) >= 10  # 1/10, 1/100 defaults
    area = sum((m.bbox_maxx - m.bbox_minx) * (m.bbox_maxy - m.bbox_miny) for m in metas)
    minx, miny = min(m.bbox_minx for m in metas), min(m.bbox_miny for m in metas)
    maxx, maxy = max(m.bbox_maxx for m in metas), max(m.bbox_maxy for m in metas)
    assert area <= 1.5 * (maxx - minx) * (maxy - miny)
    check_table(url, n, np.arange(n), n / 10, n / 100)


def polygons(n: int, seed: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-5, 5, n), rng.uniform(40, 50, n)
    s = rng.uniform(0.01, 0.5, n)
    return gpd.GeoDataFrame(
        {"rid": np.arange(n), "name": [f"p{i}" for i in range(n)]},
        geometry=shapely.box(x, y, x + s, y + s),
        crs=4326,
    )


@pytest.mark.parametrize("suffix", [".parquet", ".geojson", ".gpkg", ".fgb"])
def test_file_inputs(tmp_path, suffix):
    g = polygons(300)
    path = tmp_path / f"in{suffix}"
    if suffix == ".parquet":
        g.to_parquet(path)
    else:
        g.to_file(path, engine="pyogrio")
    cfg = GeospatialPartitionJobStepConfig(
        input=str(path), output=str(tmp_path / "out"), partitioning_method="area"
    )
    url = _ingest(cfg)
    t = open_table(url)
    assert t.num_rows == 300
    check_table(url, 300, np.arange(300), float("inf"), float("inf"))
    total = float(shapely.area(np.asarray(g.geometry.array)).sum())
    assert sum(m.sum_area for m in read_chunk_metadata(url)) == pytest.approx(total)


def test_csv_lonlat_and_reprojection_and_subdivision(tmp_path):
    df = pd.DataFrame({"lon": [1.0, 2.0, 3.0], "lat": [4.0, 5.0, 6.0], "rid": [0, 1, 2]})
    df.to_csv(tmp_path / "pts.csv", index=False)
    cfg = GeospatialPartitionJobStepConfig(
        input=str(tmp_path / "pts.csv"), output=str(tmp_path / "a"), lonlat_cols=("lon", "lat")
    )
    assert open_table(_ingest(cfg)).num_rows == 3

    big = gpd.GeoDataFrame({"rid": [0]}, geometry=[shapely.box(0, 0, 4, 4)], crs=4326)
    projected = big.to_crs(3857)
    cfg = GeospatialPartitionJobStepConfig(
        input=projected, output=str(tmp_path / "b"), subdivide_start=1.0, subdivide_stop=1.0
    )
    url = _ingest(cfg)
    metas = read_chunk_metadata(url)
    assert sum(m.num_rows for m in metas) >= 16  # 16 square degrees cut into <= 1 deg² pieces
    assert sum(m.sum_area for m in metas) == pytest.approx(16.0, rel=1e-6)


def test_bad_inputs_leave_no_table(tmp_path):
    out = tmp_path / "out"
    cases = [
        (str(tmp_path / "missing.parquet"), FileNotFoundError),
        (str(tmp_path / "in.xyz"), UnsupportedInputError),
        (str(tmp_path / "corrupt.parquet"), IngestInputError),
        (gpd.GeoDataFrame({"a": []}, geometry=[], crs=4326), IngestInputError),
    ]
    (tmp_path / "in.xyz").write_text("hello")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really")
    for source, error in cases:
        with pytest.raises(error):
            _ingest(GeospatialPartitionJobStepConfig(input=source, output=str(out)))
        assert not out.exists() or not any(Path(out).rglob("*.parquet"))
        assert not (out / "_sample").exists()


def test_existing_output_without_overwrite(tmp_path):
    g = polygons(20)
    url = str(tmp_path / "t")
    _ingest(GeospatialPartitionJobStepConfig(input=g, output=url))
    with pytest.raises(TableExistsError):
        _ingest(GeospatialPartitionJobStepConfig(input=g, output=url))
    g2 = polygons(30, seed=1)
    _ingest(GeospatialPartitionJobStepConfig(input=g2, output=url, overwrite=True))
    assert open_table(url).num_rows == 30


def _stage_run(config: GeospatialPartitionJobStepConfig, output: str) -> tuple:
    from fused_celery.partition.run import IngestRun
    from fused_celery.partition.stage_prepare import list_input_slices
    from fused_celery.table import TableWriter

    writer = TableWriter(output, overwrite=False, run_id="r1")
    slices = list_input_slices(config)
    run = IngestRun.create(
        config.model_copy(update={"output": writer.url}),
        writer,
        job_id="r1",
        slice_rows=10_000,
        sample_rows=10_000,
    )
    return run.model_copy(update={"n_slices": len(slices)}), slices


def test_geoparquet_points_are_read_again_instead_of_staged(tmp_path):
    from fused_celery.partition.stage_commit import commit
    from fused_celery.partition.stage_plan import plan_from_samples
    from fused_celery.partition.stage_prepare import prepare_slice
    from fused_celery.partition.stage_scatter import scatter_slice
    from fused_celery.partition.stage_write import write_files, write_groups, write_task_rows

    rng = np.random.default_rng(3)
    n = 600
    pts = gpd.GeoDataFrame(
        {"rid": np.arange(n), "v": rng.random(n)},
        geometry=gpd.points_from_xy(rng.uniform(-20, 20, n), rng.uniform(-10, 10, n)),
        crs=4326,
    )
    src = tmp_path / "pts.parquet"
    pts.to_parquet(src, row_group_size=250)
    config = GeospatialPartitionJobStepConfig(
        input=str(src), partitioning_maximum_per_file=200, partitioning_maximum_per_chunk=50
    )
    run, slices = _stage_run(config, str(tmp_path / "out"))
    prepared = [prepare_slice(run, s.model_dump(mode="json")) for s in slices]
    staged = sorted(p.name for p in (Path(run.work) / "prepared").iterdir())
    assert staged == [f"{s.slice_id}.reread.json" for s in slices]  # no copy of the rows
    run = plan_from_samples(run, prepared, [])
    scattered = [scatter_slice(run, s.slice_id) for s in slices]
    groups = write_groups(scattered, write_task_rows(scattered))
    commit(run, [write_files(run, g) for g in groups])
    got = pd.concat(chunk_frames(str(tmp_path / "out")).values(), ignore_index=True)
    assert sorted(got["rid"]) == list(range(n))
    mine = got.set_index("rid").sort_index()
    assert np.allclose(mine["v"], pts["v"])
    assert shapely.equals(np.asarray(mine.geometry.array), np.asarray(pts.geometry.array)).all()


def test_points_input_changed_between_prepare_and_scatter(tmp_path):
    from fused_celery.partition.stage_plan import plan_from_samples
    from fused_celery.partition.stage_prepare import prepare_slice
    from fused_celery.partition.stage_scatter import scatter_slice

    src = tmp_path / "pts.parquet"
    gpd.GeoDataFrame(geometry=gpd.points_from_xy([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), crs=4326
                     ).to_parquet(src)  # fmt: skip
    run, slices = _stage_run(GeospatialPartitionJobStepConfig(input=str(src)), str(tmp_path / "o"))
    run = plan_from_samples(run, [prepare_slice(run, slices[0].model_dump(mode="json"))], [])
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)] * 3, crs=4326).to_parquet(src)
    with pytest.raises(IngestInputError, match="changed while it was ingested"):
        scatter_slice(run, slices[0].slice_id)


def test_slices_are_sampled_in_proportion_to_their_rows(tmp_path):
    from fused_celery.partition.stage_plan import sample_weights
    from fused_celery.partition.stage_prepare import prepare_items, prepare_slice
    from fused_celery.partition.workfiles import read_arrow, sample_url

    rng = np.random.default_rng(5)
    n = 2_700  # row groups of 1,000, 1,000 and 700
    pts = gpd.GeoDataFrame(
        geometry=gpd.points_from_xy(rng.uniform(-20, 20, n), rng.uniform(-10, 10, n)), crs=4326
    )
    src = tmp_path / "pts.parquet"
    pts.to_parquet(src, row_group_size=1_000)
    config = GeospatialPartitionJobStepConfig(input=str(src), partitioning_maximum_per_file=900)
    run, _ = _stage_run(config, str(tmp_path / "out"))
    run = run.model_copy(update={"sample_rows": 2_001, "slice_rows": 1_000})
    run, items = prepare_items(run)
    assert run.input_rows == n and [i["num_rows"] for i in items] == [1_000, 1_000, 700]
    for item in items:
        prepare_slice(run, item)
    samples = [read_arrow(sample_url(run.work, i["slice_id"])) for i in items]
    assert [s.num_rows for s in samples] == [742, 742, 519]  # ceil(2,001 * rows / 2,700)
    w = np.concatenate([s.column("w").to_numpy() for s in samples])
    assert [s.column("w").to_numpy().sum() for s in samples] == pytest.approx([1_000, 1_000, 700])
    assert len(set(w.tolist())) == 2  # 1,000 / 742 and 700 / 519: within 0.1 %
    equal = sample_weights(w)
    assert (equal == equal[0]).all() and equal.sum() == pytest.approx(n)
    spread = np.array([1.0, 1.0, 2.0])  # slices of different densities keep their weights
    assert sample_weights(spread) is spread
