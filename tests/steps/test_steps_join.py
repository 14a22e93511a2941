"""``fused.join`` / ``fused.join_singlefile``: the models and their methods, the whole step on
this machine (the built-in join equal to geopandas' ``sjoin``, UDFs of ``(left, right)``), in a
``JobConfig`` after two ingests, and bad inputs (typed errors, no partial table)."""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import shapely
from join_tables import join_inputs, make_polygons, pairs, sjoin_pairs
from steps_tables import ingest_table, make_points

import fused_celery as fused
from fused_celery.errors import (
    RightInputTooLargeError,
    StepConfigError,
    StepInputError,
    StepOutputError,
    StepUdfError,
)
from fused_celery.jobs.config import JobConfig
from fused_celery.options import options
from fused_celery.steps import join_stages
from fused_celery.steps.join import JoinInput, JoinJobStepConfig, JoinSinglefileJobStepConfig
from fused_celery.steps.join_frames import spatial_join, wkb_points_xy
from fused_celery.steps.map_stages import read_chunk
from fused_celery.table import frame_to_arrow, open_table, read_chunk_metadata, write_table


@fused.udf
def count_right(left, right, metadata=None, k: int = 1):
    out = left.copy()
    out["n_right"] = len(right) * k
    out["right_chunks"] = len(metadata["right_chunks"])
    return out


@fused.udf
def returns_text(left, right):
    return "not a frame"


@fused.udf
def one_frame(gdf):
    return gdf


def run_step(step, engine=None):
    return JobConfig(steps=[step]).run_local(engine=engine)


def assert_no_table(url) -> None:
    assert not url.exists() or not any(url.rglob("*")), list(url.rglob("*"))


def near_meridian(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``gdf`` scaled into [2.5, 3.5] x [0.5, 1.5]: one UTM zone (31N) near its central
    meridian, so that metric distances do not depend on which chunk measures them."""
    out = gdf.copy()
    out.geometry = gdf.geometry.affine_transform([0.05, 0, 0, 0.05, 3.0, 1.0])
    return out


# --- the models -------------------------------------------------------------------------------


def test_models_json_round_trip_and_set_methods(tmp_path):
    left, right = join_inputs(tmp_path)
    step = fused.join(left, right, udf=count_right, how="left", buffer_distance=50,
                      output_table=str(tmp_path / "o"), chunks_per_task=2)  # fmt: skip
    assert isinstance(step, JoinJobStepConfig) and step.type == "join"
    again = JoinJobStepConfig.model_validate_json(step.model_dump_json())
    assert again == step and again.udf.name == "count_right" and again.buffer_distance == 50.0
    moved = step.set_input(input_right=left)
    assert moved.input_right == left and moved.input_left == left and step.input_right == right
    assert step.set_udf(count_right, parameters={"k": 3}).udf.parameters == {"k": 3}
    with pytest.raises(StepUdfError, match="two parameters"):
        step.set_udf(one_frame)
    single = fused.join_singlefile(left, str(tmp_path / "x.parquet"), right_bbox_filter=True)
    assert isinstance(single, JoinSinglefileJobStepConfig)
    assert JoinSinglefileJobStepConfig.model_validate_json(single.model_dump_json()) == single
    job = JobConfig(steps=[step, single.set_output(str(tmp_path / "p"))])
    back = JobConfig.model_validate_json(job.model_dump_json())
    assert [type(s) for s in back.steps] == [JoinJobStepConfig, JoinSinglefileJobStepConfig]


@pytest.mark.parametrize("bad", [-1, "100", float("nan"), True])
def test_bad_buffer_distance(tmp_path, bad):
    with pytest.raises(StepInputError, match="buffer_distance"):
        fused.join("a", "b", buffer_distance=bad)
    with pytest.raises(StepConfigError, match="buffer_distance"):
        JoinJobStepConfig(input_left="a", input_right="b", buffer_distance=bad)


# --- samples and local runs -------------------------------------------------------------------


def test_sample_is_a_left_chunk_and_the_right_chunks_it_needs(tmp_path):
    left, right = join_inputs(tmp_path)
    step = fused.join(left, right, udf=count_right)
    sample = step.get_sample()
    first = read_chunk_metadata(left)[0]
    assert isinstance(sample, JoinInput) and len(sample.left) == first.num_rows
    needed = sample.metadata["right_chunks"]
    right_meta = {(c.file_id, c.chunk_id): c for c in read_chunk_metadata(right)}
    assert len(sample.right) == sum(right_meta[(f, c)].num_rows for f, c in needed)
    box = shapely.box(*first.bbox)  # every right chunk read meets the left chunk's bbox
    assert all(right_meta[(f, c)].to_box().intersects(box) for f, c in needed)
    left_rows, right_rows = sample  # unpacks as (left, right)
    assert left_rows is sample.left and right_rows is sample.right
    assert len(step.get_sample(n_rows=3).left) == 3
    out = step.run_local(k=2)
    assert (out["n_right"] == 2 * len(sample.right)).all()
    assert (out["right_chunks"] == len(needed)).all()
    raw = step.run_local(sample=(sample.left.iloc[:2], sample.right), validate_output=False)
    assert len(raw) == 2
    # without a UDF, run_local is the built-in join of the sample
    joined = step.model_copy(update={"udf": None}).run_local()
    assert pairs(joined) == sjoin_pairs(sample.left, sample.right)


def test_whole_join_equals_sjoin_keeps_layout_inner_and_left(tmp_path):
    points, polygons = make_points(), make_polygons()
    left = ingest_table(points, str(tmp_path / "left"))
    right = ingest_table(polygons, str(tmp_path / "right"), 30, 10)
    step = fused.join(left, right, output_table=str(tmp_path / "inner"))
    res = run_step(step)
    out = step.open_output()
    frame = out.get_dataframe()
    assert pairs(frame) == sjoin_pairs(points, polygons)
    assert res["steps"][0]["num_rows"] == len(frame)
    assert {"uid", "v", "pid", "v_right"} <= set(frame.columns)  # a clash gets _right
    assert out.files == open_table(left).files  # the left table's files
    assert step.get_output_chunk().equals(out.get_chunk(out.files[0], 0))
    kept = fused.join(left, right, how="left", output_table=str(tmp_path / "left-join"))
    frame = run_step(kept, engine="local") and kept.open_output().get_dataframe()
    assert sorted(frame["uid"].unique()) == list(range(len(points)))
    lonely = set(points["uid"]) - {u for u, _ in sjoin_pairs(points, polygons)}
    assert set(frame.loc[frame["pid"].isna(), "uid"]) == lonely
    assert pairs(frame) == sjoin_pairs(points, polygons)


def test_buffer_distance_equals_sjoin_dwithin_in_utm(tmp_path):
    points = near_meridian(make_points(400))
    polygons = near_meridian(make_polygons(60))
    left = ingest_table(points, str(tmp_path / "left"))
    right = ingest_table(polygons, str(tmp_path / "right"), 30, 10)
    step = fused.join(left, right, buffer_distance=2_000, output_table=str(tmp_path / "o"))
    run_step(step)
    got = pairs(step.open_output().get_dataframe())
    assert got == sjoin_pairs(points, polygons, distance=2_000)
    assert len(got) > len(sjoin_pairs(points, polygons))  # the buffer adds pairs


@pytest.mark.parametrize("distance", [None, 2_000])
@pytest.mark.parametrize("projected", ["right", "left", "none, polygons left"])
def test_the_built_in_join_stages_what_the_frame_join_gives(tmp_path, distance, projected):
    """Per left chunk, the rows and facts the step stages equal frame_to_arrow of
    spatial_join's frame (a column in both sides; one side in EPSG:3857, or points right)."""
    points = near_meridian(make_points(400))
    polygons = near_meridian(make_polygons(60))
    if projected == "none, polygons left":
        left = ingest_table(polygons, str(tmp_path / "left"), 30, 10)
        right = ingest_table(points, str(tmp_path / "right"))
    elif projected == "right":
        in_3857 = polygons.to_crs(3857)
        right = write_table(str(tmp_path / "right"), [in_3857.iloc[:30], in_3857.iloc[30:]]).url
        left = ingest_table(points, str(tmp_path / "left"))
    else:
        in_3857 = points.to_crs(3857)
        left = write_table(
            str(tmp_path / "left"), [in_3857.iloc[i : i + 50] for i in range(0, 400, 50)]
        ).url
        right = ingest_table(polygons, str(tmp_path / "right"), 30, 10)
    step = fused.join(left, right, buffer_distance=distance, output_table=str(tmp_path / "o"))
    run = join_stages.JoinRun.model_construct(config=step, job_id="built-in")
    found = 0
    for c in read_chunk_metadata(left):
        meta = {"file_id": c.file_id, "chunk_id": int(c.chunk_id), "bbox": list(c.bbox),
                "num_rows": int(c.num_rows)}  # fmt: skip
        frame = join_stages.join_input(step, read_chunk(left, meta), meta, job_id=None)
        expected = frame_to_arrow(spatial_join(frame.left, frame.right, distance_m=step.distance))
        table, facts, _, _ = join_stages.builtin_join_table(run, meta)
        assert table.equals(expected[0]) and facts == expected[1]
        found += table.num_rows
    assert found > 0 and "v_right" in table.column_names


def test_wkb_points_are_read_as_coordinates_only_when_plain_2d_points():
    xy = np.array([[1.5, -2.0], [3.0, 4.25]])
    plain = pa.array(shapely.to_wkb(shapely.points(xy), flavor="iso"), pa.binary())
    assert np.array_equal(wkb_points_xy(plain), xy)
    assert np.array_equal(wkb_points_xy(pa.chunked_array([plain[1:]])), xy[1:])
    assert wkb_points_xy(pa.array([], pa.binary())).shape == (0, 2)
    others = [
        shapely.to_wkb(shapely.points(xy), flavor="iso", byte_order=0),  # big-endian
        shapely.to_wkb(shapely.points([[1.0, 2.0, 3.0]]), flavor="iso"),  # 3D
        shapely.to_wkb(shapely.from_wkt(["POINT EMPTY"]), flavor="iso"),
        shapely.to_wkb(shapely.box(0, 0, 1, 1), flavor="iso"),
        [shapely.to_wkb(shapely.Point(1, 2), flavor="iso"), None],
    ]
    for values in others:
        assert wkb_points_xy(pa.array(list(np.atleast_1d(values)), pa.binary())) is None


def test_a_right_chunk_is_read_once_per_job(tmp_path):
    left, right = join_inputs(tmp_path)
    join_stages.right_cache.clear()
    before = join_stages.right_cache.reads
    step = fused.join(left, right, output_table=str(tmp_path / "o"), chunks_per_task=1)
    run_step(step)  # every task in this process: one cache
    needed, fewest = set(), len(read_chunk_metadata(right))
    for c in read_chunk_metadata(left):
        sample = step.get_sample(c.file_id, c.chunk_id, use_cache=False)
        needed |= {tuple(k) for k in sample.metadata["right_chunks"]}
        fewest = min(fewest, len(sample.metadata["right_chunks"]))
    reads = join_stages.right_cache.reads - before
    assert reads == 2 * len(needed)  # once for the job, once for the samples (no job)
    assert fewest < len(read_chunk_metadata(right))  # a task reads only what it needs


def test_the_cache_is_bounded_in_bytes():
    cache = join_stages.ByteLRU(max_bytes=100)
    cache.put("a", 1, 60)
    cache.put("b", 2, 30)
    assert cache.get("a") == 1  # now the most recent
    cache.put("c", 3, 40)  # drops "b", the least recent
    assert cache.get("b") is None and cache.get("a") == 1 and cache.nbytes == 100
    cache.put("d", 4, 101)  # larger than the bound: not kept
    assert cache.get("d") is None and cache.nbytes == 100


# --- in a JobConfig ---------------------------------------------------------------------------


def test_ingest_ingest_join_binds_the_two_outputs(tmp_path):
    points, polygons = make_points(300), make_polygons(40)
    points.to_parquet(tmp_path / "p.parquet")
    polygons.to_parquet(tmp_path / "q.parquet")
    job = JobConfig(
        name="two-ingests-and-a-join",
        steps=[
            fused.ingest(str(tmp_path / "p.parquet"), output=str(tmp_path / "tp")),
            fused.ingest(str(tmp_path / "q.parquet"), output=str(tmp_path / "tq")),
            fused.join(None, None, udf=None, output_table=str(tmp_path / "tj")),
        ],
    )
    res = JobConfig.model_validate_json(job.model_dump_json()).run_local(engine=None)
    assert res["output"] == str(tmp_path / "tj")
    assert pairs(open_table(str(tmp_path / "tj")).get_dataframe()) == sjoin_pairs(points, polygons)
    lonely = JobConfig(steps=[fused.join(None, None, output_table=str(tmp_path / "x"))])
    with pytest.raises(StepInputError, match="two steps before it"):
        lonely.run_local(engine=None)
    single = JobConfig(  # a single-file join without left input reads the previous table
        steps=[
            fused.ingest(str(tmp_path / "p.parquet"), output=str(tmp_path / "tp2")),
            fused.join_singlefile(
                None, str(tmp_path / "q.parquet"), output_table=str(tmp_path / "ts")
            ),
        ]
    )
    single.run_local(engine=None)
    joined = open_table(str(tmp_path / "ts")).get_dataframe()
    assert pairs(joined) == sjoin_pairs(points, polygons)


# --- join_singlefile --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["parquet", "geojson"])
def test_singlefile_equals_sjoin_whole_or_bbox_filtered(tmp_path, suffix):
    points, polygons = make_points(), make_polygons()
    left = ingest_table(points, str(tmp_path / "left"))
    path = tmp_path / f"right.{suffix}"
    polygons.to_parquet(path) if suffix == "parquet" else polygons.to_file(path)
    step = fused.join_singlefile(left, str(path), output_table=str(tmp_path / "o"))
    run_step(step)
    assert pairs(step.open_output().get_dataframe()) == sjoin_pairs(points, polygons)
    whole = fused.join_singlefile(left, str(path), udf=count_right).get_sample()
    assert len(whole.right) == len(polygons)
    filtered = fused.join_singlefile(left, str(path), udf=count_right, right_bbox_filter=True)
    sample = filtered.get_sample()
    box = shapely.box(*sample.metadata["bbox"])
    assert 0 < len(sample.right) < len(polygons)
    assert sample.right.intersects(box).all()
    assert set(polygons[polygons.intersects(box)]["pid"]) <= set(sample.right["pid"])
    assert "left (joined)" in step.show(path=str(tmp_path / "m.html")).read_html()


def test_singlefile_missing_corrupt_or_too_large(tmp_path, monkeypatch):
    left = ingest_table(make_points(), str(tmp_path / "left"))
    out = tmp_path / "o"
    missing = fused.join_singlefile(left, str(tmp_path / "nope.parquet"), output_table=str(out))
    with pytest.raises(StepInputError, match="does not exist"):
        run_step(missing)
    assert_no_table(out)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(StepInputError, match="cannot read the right file"):
        run_step(fused.join_singlefile(left, str(bad), output_table=str(out)))
    assert_no_table(out)
    good = tmp_path / "r.parquet"
    make_polygons().to_parquet(good)
    monkeypatch.setattr(options, "join_cache_bytes", 1000)
    join_stages.right_cache.clear()
    with pytest.raises(RightInputTooLargeError, match=r"1,000 bytes.*JOIN_CACHE_BYTES"):
        run_step(fused.join_singlefile(left, str(good), output_table=str(out)))
    assert_no_table(out)


# --- bad inputs -------------------------------------------------------------------------------


def test_right_input_not_a_table_and_udf_errors(tmp_path):
    left, right = join_inputs(tmp_path)
    out = tmp_path / "o"
    (tmp_path / "loose.parquet").write_bytes(b"x")
    for not_table in (str(tmp_path / "loose.parquet"), str(tmp_path / "nothing")):
        with pytest.raises(StepInputError, match="right input .* is not a table"):
            run_step(fused.join(left, not_table, output_table=str(out)))
    with pytest.raises(StepInputError, match="is its left input"):
        run_step(fused.join(left, right, output_table=left))
    with pytest.raises(StepOutputError, match=r"chunk 0/0: .*builtins\.str"):
        run_step(fused.join(left, right, udf=returns_text, output_table=str(out)))
    assert_no_table(out)
    with pytest.raises(StepUdfError, match="two parameters"):
        fused.join(left, right, udf=one_frame)


def test_crs_mismatch_is_reprojected_and_logged(tmp_path, caplog):
    points, polygons = make_points(), make_polygons()
    left = ingest_table(points, str(tmp_path / "left"))
    in_3857 = polygons.to_crs(3857)  # a table in another CRS (ingest writes EPSG:4326)
    right = write_table(str(tmp_path / "right"), [in_3857.iloc[:30], in_3857.iloc[30:]]).url
    assert open_table(right).sample.crs.to_epsg() == 3857
    step = fused.join(left, right, output_table=str(tmp_path / "o"))
    with caplog.at_level(logging.WARNING, logger="fused_celery.steps.join_stages"):
        run_step(step)
    assert pairs(step.open_output().get_dataframe()) == sjoin_pairs(points, polygons)
    assert any("reprojected to the left's CRS" in r.getMessage() for r in caplog.records)


def test_no_overlapping_chunks_inner_is_empty_left_keeps_all(tmp_path):
    points = make_points(200)
    far = make_polygons(20)
    far.geometry = far.geometry.translate(100, 40)  # nowhere near the points
    left = ingest_table(points, str(tmp_path / "left"))
    right = ingest_table(far, str(tmp_path / "right"), 10, 5)
    inner = fused.join(left, right, output_table=str(tmp_path / "inner"))
    assert run_step(inner)["steps"][0]["num_rows"] == 0
    table = inner.open_output()
    assert table.num_rows == 0 and {"uid", "pid", "v_right"} <= set(table.column_names)
    kept = fused.join(left, right, how="left", output_table=str(tmp_path / "left-join"))
    run_step(kept)
    frame = kept.open_output().get_dataframe()
    assert sorted(frame["uid"]) == list(range(200)) and frame["pid"].isna().all()
    assert isinstance(frame, gpd.GeoDataFrame) and not isinstance(frame["pid"], pd.DataFrame)
    assert np.array_equal(np.sort(frame["v"]), np.sort(points["v"]))


@fused.udf
def fail_file_0(left, right, metadata=None):
    if metadata["file_id"] == "0":
        raise ValueError("left file 0 breaks")
    return left


def test_seed_signatures():
    import inspect

    def params(fn):
        return [
            (f"**{p.name}", None) if p.kind is p.VAR_KEYWORD else (p.name, p.default)
            for p in list(inspect.signature(fn).parameters.values())[1:]
        ]

    e = inspect.Parameter.empty
    for cls in (JoinJobStepConfig, JoinSinglefileJobStepConfig):
        assert params(cls.set_input) == [("input_left", None), ("input_right", None),
                                         ("inplace", False)]  # fmt: skip
        set_udf = [("udf", e), ("parameters", None), ("replace_parameters", False)]
        assert params(cls.set_udf) == [*set_udf, ("inplace", False)]
        assert params(cls.get_sample) == [("file_id", None), ("chunk_id", None),
                                          ("n_rows", None), ("use_cache", True)]  # fmt: skip
        assert [n for n, _ in params(cls.run_local)] == [
            "file_id", "chunk_id", "n_rows", "sample", "validate_output", "validate_imports",
            "use_cache", "**kwargs",
        ]  # fmt: skip
        assert params(cls.get_output_chunk) == [("file_id", None), ("chunk_id", None)]
    assert [n for n, _ in params(JoinJobStepConfig.show)] == [
        "dataset_config_left", "dataset_config_right", "app_config", "**kwargs"]  # fmt: skip
    assert [n for n, _ in params(JoinSinglefileJobStepConfig.show)] == [
        "dataset_config", "**kwargs"]  # fmt: skip
    assert fused.JoinJobStepConfig is JoinJobStepConfig
    assert {"join", "join_singlefile", "JoinJobStepConfig"} <= set(fused.__all__)


def test_ignore_chunk_error_leaves_failed_chunks_out(tmp_path):
    left, right = join_inputs(tmp_path)
    step = fused.join(left, right, udf=fail_file_0, output_table=str(tmp_path / "o"),
                      ignore_chunk_error=True, chunks_per_task=1)  # fmt: skip
    res = run_step(step)
    n_file_0 = sum(c.num_rows for c in read_chunk_metadata(left) if c.file_id == "0")
    failed = res["steps"][0]["failed"]
    assert failed and all("left file 0 breaks" in f["error"] for f in failed)
    assert res["steps"][0]["num_rows"] == 400 - n_file_0
    assert "0" not in step.open_output().files


@pytest.mark.parametrize(
    "kind", [pa.int8(), pa.int32(), pa.int64(), pa.uint64(), pa.float32(), pa.float64(), pa.bool_()]
)
def test_number_columns_skip_the_trip_through_pandas_only_when_it_keeps_their_type(kind):
    """The join's output takes left columns in Arrow without checking them through pandas only
    when pandas would give their type back: numbers and booleans without a null."""
    from fused_celery.steps.join_frames import _plain_numbers

    values = [True, False] if kind == pa.bool_() else [0, 1]
    table = pa.table({"c": pa.array(values, kind)})
    back = pa.Schema.from_pandas(table.to_pandas(), preserve_index=False).field("c").type
    assert _plain_numbers(table) and back == kind
    with_null = pa.table({"c": pa.array([*values, None], kind)})
    assert not _plain_numbers(with_null)
    assert not _plain_numbers(pa.table({"s": pa.array(["a"])}))
