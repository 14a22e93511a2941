"""``fused.map`` / ``MapJobStepConfig``: the model, its sample methods, the whole step on this
machine (``JobConfig(steps=[step]).run_local()``) and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import shapely
from steps_tables import ingest_table, make_points

import fused_celery as fused
from fused_celery.errors import (
    StepInputError,
    StepOutputError,
    StepSchemaError,
    StepUdfError,
    TableExistsError,
    UdfRuntimeError,
)
from fused_celery.steps.map import MapJobStepConfig
from fused_celery.steps.map_runners import run_map
from fused_celery.steps.map_stages import map_items, output_frame
from fused_celery.table import open_table, read_chunk_metadata


@fused.udf
def double(gdf, metadata=None, k: int = 2):
    out = gdf.copy()
    out["v2"] = out["v"] * k
    out["fid"] = metadata["file_id"]
    out["cid"] = metadata["chunk_id"]
    out["n"] = metadata["num_rows"]
    return out


@fused.udf
def plain_frame(gdf):
    import pandas as pd

    return pd.DataFrame({"uid": gdf["uid"].to_numpy(), "n": len(gdf)})


@fused.udf
def arrow_table(gdf):
    import pyarrow as pa

    return pa.table({"uid": gdf["uid"].to_numpy()})


@fused.udf
def to_3857(gdf):
    return gdf.to_crs(3857)


@fused.udf
def no_rows(gdf):
    return None


def assert_no_table(url: Path) -> None:
    """Nothing is left at ``url`` (no data file, no ``_sample``, no staging)."""
    assert not url.exists() or not any(url.rglob("*")), list(url.rglob("*"))


def run_step(step: MapJobStepConfig, engine=None):
    return fused.JobConfig(steps=[step]).run_local(engine=engine)


# --- the model --------------------------------------------------------------------------------


def test_model_defaults_json_and_set_methods(table):
    step = fused.map(table, udf=double, output_table="/tmp/out-x")
    assert isinstance(step, MapJobStepConfig) and step.type == "map"
    dumped = step.model_dump()
    assert dumped["input"] == table and dumped["output"] == "/tmp/out-x"
    assert dumped["overwrite"] is False and dumped["ignore_chunk_error"] is False
    assert dumped["chunks_per_task"] is None
    again = MapJobStepConfig.model_validate_json(step.model_dump_json())
    assert again == step and again.udf.code == double.code
    # set_input / set_udf / set_output: copies unless inplace
    other = step.set_input("/tmp/elsewhere")
    assert other.input == "/tmp/elsewhere" and step.input == table
    assert step.set_input(open_table(table)).input == open_table(table).url
    with_params = step.set_udf(double, parameters={"k": 5})
    assert with_params.udf.parameters == {"k": 5} and step.udf.parameters == {}
    replaced = with_params.set_udf(with_params.udf, {"z": 1}, replace_parameters=True)
    assert replaced.udf.parameters == {"z": 1}
    merged = with_params.set_udf(with_params.udf, {"z": 1})
    assert merged.udf.parameters == {"k": 5, "z": 1}
    same = step.set_udf(double.model_dump(), inplace=True)
    assert same is step
    assert step.set_output("/tmp/o2", overwrite=True).output == "/tmp/o2"
    assert json.loads(step.model_dump_json())["udf"]["name"] == "double"


def test_udf_without_a_frame_parameter_is_refused(table):
    @fused.udf
    def nothing():
        return None

    @fused.udf
    def only_metadata(metadata=None):
        return None

    for bad in (nothing, only_metadata):
        with pytest.raises(StepUdfError, match="no parameter for the chunk"):
            fused.map(table, udf=bad, output_table="/tmp/o")
        with pytest.raises(StepUdfError):
            fused.map(table, output_table="/tmp/o").set_udf(bad)


def test_input_metadata_get_sample_and_run_local(table):
    step = fused.map(table, udf=double, output_table="/tmp/unused")
    meta = step.input_metadata
    assert list(meta["num_rows"]) == [c.num_rows for c in read_chunk_metadata(table)]
    first = step.get_sample()
    c0 = read_chunk_metadata(table)[0]
    assert isinstance(first, gpd.GeoDataFrame) and len(first) == c0.num_rows
    assert first.crs.to_epsg() == 4326
    assert step.get_sample(use_cache=True) is first  # cached
    assert len(step.get_sample(n_rows=3)) == 3
    last = read_chunk_metadata(table)[-1]
    chunk = step.get_sample(last.file_id, last.chunk_id, use_cache=False)
    assert len(chunk) == last.num_rows
    out = step.run_local(last.file_id, last.chunk_id)
    assert isinstance(out, gpd.GeoDataFrame)
    assert (out["fid"] == last.file_id).all() and (out["cid"] == last.chunk_id).all()
    assert np.allclose(out["v2"], chunk["v"] * 2)
    assert len(step.run_local(n_rows=4, k=3)) == 4
    assert np.allclose(step.run_local(n_rows=4, k=3)["v2"], first["v"].iloc[:4] * 3)
    given = step.run_local(sample=first.iloc[:2])
    assert len(given) == 2 and given["fid"].isna().all()
    raw = fused.map(table, udf=arrow_table, output_table="/tmp/u").run_local(validate_output=False)
    assert isinstance(raw, pa.Table)


def test_whole_step_keeps_layout_metadata_and_crs(tmp_path, table, points):
    step = fused.map(table, udf=double, output_table=str(tmp_path / "out"), chunks_per_task=3)
    result = run_step(step)
    assert result["output"] == str(tmp_path / "out")
    assert result["steps"][0]["num_rows"] == len(points) and result["failed"] == []
    inp, out = read_chunk_metadata(table), read_chunk_metadata(str(tmp_path / "out"))
    assert [(c.file_id, c.chunk_id, c.num_rows) for c in out] == [
        (c.file_id, c.chunk_id, c.num_rows) for c in inp
    ]
    for a, b in zip(inp, out):
        assert np.allclose(a.bbox, b.bbox)
    t = step.open_output()
    frame = t.get_dataframe().sort_values("uid")
    assert np.allclose(frame["v2"], points["v"] * 2)
    assert (frame["n"] > 0).all()
    got = step.get_output_chunk()
    assert len(got) == out[0].num_rows and (got["cid"] == 0).all()
    assert len(step.get_output_chunk(out[-1].file_id, out[-1].chunk_id)) == out[-1].num_rows
    assert not (tmp_path / "out" / "_staging").exists()
    shown = step.show(path=str(tmp_path / "map.html"))
    assert Path(shown.path).exists()
    direct = run_map(step, str(tmp_path / "direct"), engine=None)  # the registered runner
    assert direct.num_rows == len(points) and direct.num_chunks == len(inp)


def test_show_delegates_to_the_table_map(tmp_path, table):
    step = fused.map(table, udf=double, output_table=str(tmp_path / "out"), name="doubled")
    with pytest.raises(StepInputError, match="not committed yet"):
        step.show(path=str(tmp_path / "early.html"))
    run_step(step)
    shown = step.show({"path": str(tmp_path / "a.html"), "title": "from config"}, sample_rows=5)
    assert "from config" in Path(shown.path).read_text()
    named = step.show(path=str(tmp_path / "b.html"))
    assert "doubled" in Path(named.path).read_text()  # the step's name is the default title
    with pytest.raises(TypeError, match=r"unknown map option\(s\) \['colour'\]; known: path"):
        step.show(colour="red")
    with pytest.raises(TypeError, match="dataset_config must be a dict"):
        step.show("red")


def test_crs_is_kept_and_outputs_of_other_kinds(tmp_path):
    src = make_points(200).to_crs(3857)
    url = ingest_table(src, str(tmp_path / "in"), per_file=100, per_chunk=40)
    frame = fused.map(url, udf=double, output_table=str(tmp_path / "a")).get_sample()
    assert frame.crs.to_epsg() == 4326  # the table stores EPSG:4326 after ingest
    moved = run_step(fused.map(url, udf=to_3857, output_table=str(tmp_path / "b")))
    t = open_table(moved["output"])
    assert t.get_dataframe().crs.to_epsg() == 3857
    assert t.num_rows == 200
    # a DataFrame and an Arrow table without geometry: rows kept, null geometries
    for name, udf in (("df", plain_frame), ("arrow", arrow_table)):
        res = run_step(fused.map(url, udf=udf, output_table=str(tmp_path / name)))
        got = open_table(res["output"]).get_dataframe()
        assert sorted(got["uid"]) == list(range(200))
        assert got.geometry.isna().all()
    # None: no rows
    res = run_step(fused.map(url, udf=no_rows, output_table=str(tmp_path / "none")))
    assert res["steps"][0]["num_rows"] == 0


def test_output_frame_conversions():
    gdf = make_points(3)
    assert output_frame(gdf, None, where="c") is gdf
    df = output_frame(pd.DataFrame({"a": [1, 2]}), gdf.crs, where="c")
    assert isinstance(df, gpd.GeoDataFrame) and df.crs == gdf.crs and df.geometry.isna().all()
    with_geom = pd.DataFrame({"g": gpd.GeoSeries([shapely.Point(0, 0)])})
    assert output_frame(with_geom, gdf.crs, where="c").geometry.name == "g"
    assert output_frame(None, None, where="c") is None
    with pytest.raises(StepOutputError, match=r"chunk 1/2.*builtins.int"):
        output_frame(3, None, where="chunk 1/2")


# --- bad inputs on this machine ----------------------------------------------------------------


@fused.udf
def returns_int(gdf):
    return 42


@fused.udf
def raises_on_file_1(gdf, metadata=None):
    if metadata["file_id"] == "1":
        raise ValueError("bad chunk here")
    return gdf


@fused.udf
def crs_by_file(gdf, metadata=None):
    return gdf.to_crs(3857) if metadata["file_id"] == "1" else gdf


@fused.udf
def type_by_file(gdf, metadata=None):
    out = gdf.copy()
    out["x"] = "text" if metadata["file_id"] == "1" else 1.5
    return out


@fused.udf
def int_or_float(gdf, metadata=None):
    out = gdf.copy()
    out["x"] = 1 if metadata["file_id"] == "1" else 1.5
    return out


@pytest.mark.parametrize("engine", [None, "local"])
def test_non_frame_output_fails_with_chunk_and_type_and_no_table(tmp_path, table, engine):
    out = tmp_path / "out"
    with pytest.raises(StepOutputError, match=r"chunk 0/0.*builtins\.int"):
        run_step(fused.map(table, udf=returns_int, output_table=str(out)), engine=engine)
    assert_no_table(out)


def test_udf_raising_on_some_chunks(tmp_path, table):
    out = tmp_path / "out"
    with pytest.raises(UdfRuntimeError, match="bad chunk here") as info:
        run_step(fused.map(table, udf=raises_on_file_1, output_table=str(out)))
    assert "chunk 1/" in str(info.value)
    assert_no_table(out)
    step = fused.map(table, udf=raises_on_file_1, output_table=str(out), ignore_chunk_error=True)
    result = run_step(step)
    files = {c.file_id for c in read_chunk_metadata(str(out))}
    assert "1" not in files and files
    n_file_1 = sum(c.num_rows for c in read_chunk_metadata(table) if c.file_id == "1")
    assert result["steps"][0]["num_rows"] == 400 - n_file_1
    assert result["failed"] and all("bad chunk here" in f["error"] for f in result["failed"])


def test_different_crs_or_types_fail_naming_two_chunks_and_safe_ones_unify(tmp_path, table):
    with pytest.raises(StepSchemaError, match=r"chunks 0/0 and 1/0 have different CRSs"):
        run_step(fused.map(table, udf=crs_by_file, output_table=str(tmp_path / "a")))
    assert_no_table(tmp_path / "a")
    with pytest.raises(StepSchemaError, match=r"column 'x'.*chunks 0/0 and 1/0"):
        run_step(fused.map(table, udf=type_by_file, output_table=str(tmp_path / "b")))
    assert_no_table(tmp_path / "b")
    ok = run_step(fused.map(table, udf=int_or_float, output_table=str(tmp_path / "c")))
    frame = open_table(ok["output"]).get_dataframe()
    assert frame["x"].dtype == np.float64 and len(frame) == 400


def test_input_that_is_not_a_table_or_empty_or_missing(tmp_path, table):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "0.parquet").write_bytes(b"x")  # data but no _sample
    for bad in (tmp_path / "folder", tmp_path / "nothing"):
        with pytest.raises(StepInputError, match="is not a table"):
            run_step(fused.map(str(bad), udf=double, output_table=str(tmp_path / "o")))
        assert_no_table(tmp_path / "o")
    from fused_celery.table.write import TableWriter

    empty = TableWriter(str(tmp_path / "empty")).commit([])
    assert empty.num_chunks == 0
    with pytest.raises(StepInputError, match="empty"):
        run_step(fused.map(empty.url, udf=double, output_table=str(tmp_path / "o")))
    with pytest.raises(StepInputError, match="no input"):
        run_step(fused.map(None, udf=double, output_table=str(tmp_path / "o")))
    with pytest.raises(StepInputError, match="no output table"):
        run_step(fused.map(table, udf=double))
    with pytest.raises(StepInputError, match="is its input"):
        run_step(fused.map(table, udf=double, output_table=table))


def test_chunk_read_error_is_typed_and_leaves_no_table(tmp_path, table):
    (Path(table) / "1.parquet").write_bytes(b"not parquet")
    out = tmp_path / "out"
    with pytest.raises(StepInputError, match=r"cannot read chunk 1/0"):
        run_step(fused.map(table, udf=double, output_table=str(out)))
    assert_no_table(out)


def test_existing_output_without_overwrite(tmp_path, table):
    out = str(tmp_path / "out")
    run_step(fused.map(table, udf=double, output_table=out))
    before = read_chunk_metadata(out)
    with pytest.raises(TableExistsError):
        run_step(fused.map(table, udf=double, output_table=out))
    assert read_chunk_metadata(out) == before
    again = run_step(fused.map(table, udf=double, output_table=out, overwrite=True))
    assert again["steps"][0]["num_rows"] == 400
    # a failed overwrite keeps the old table whole
    with pytest.raises(StepOutputError):
        run_step(fused.map(table, udf=returns_int, output_table=out, overwrite=True))
    assert read_chunk_metadata(out) == before
    staged = [p for p in (Path(out) / "_staging").rglob("*") if p.is_file()]
    assert [p.name for p in staged] in ([], ["_writing"])  # the run's staging is gone


def test_small_chunks_are_batched(table):
    step = fused.map(table, udf=double, output_table="/tmp/x")
    from fused_celery.steps.map_stages import MapRun

    run = MapRun(job_id="j", config=step, writer={}, work="/tmp/w")
    n = len(read_chunk_metadata(table))
    _, items = map_items(run)
    assert len(items) == 1 and len(items[0]) == n  # 400 rows: one task
    two = step.model_copy(update={"chunks_per_task": 2})
    _, items = map_items(run.model_copy(update={"config": two}))
    assert [len(i) for i in items] == [2] * (n // 2) + ([1] if n % 2 else [])


@fused.udf
def always_fails(gdf):
    raise RuntimeError("every chunk fails")


@pytest.mark.parametrize("per_task", [None, 1])
def test_every_chunk_failing_fails_even_with_ignore_chunk_error(tmp_path, table, per_task):
    out = tmp_path / "out"
    step = fused.map(
        table,
        udf=always_fails,
        output_table=str(out),
        ignore_chunk_error=True,
        chunks_per_task=per_task,
    )
    with pytest.raises(UdfRuntimeError, match="every chunk fails"):
        run_step(step)
    assert_no_table(out)


def test_a_redelivered_member_returns_the_same_value_and_object(tmp_path, table):
    """Members return values that depend only on their inputs (a Redis chord counts a
    redelivered member once) and overwrite the same staged object."""
    from fused_celery.steps.map_runners import make_map_run
    from fused_celery.steps.map_stages import map_member, part_url

    step = fused.map(table, udf=double, output_table=str(tmp_path / "out"), chunks_per_task=2)
    run = make_map_run(step, None, job_id="j1")
    run, items = map_items(run)
    first = map_member(run, items[0])
    part = Path(part_url(first[0]["key"]))
    size = part.stat().st_size
    assert json.dumps(map_member(run, items[0])) == json.dumps(first)
    assert part.stat().st_size == size and len(list(part.parent.iterdir())) == 3
    assert [i["rows"] for i in first] == [m["num_rows"] for m in items[0]]


# --- whole files --------------------------------------------------------------------------------


@fused.udf
def fails_on_chunk_1(gdf, metadata=None):
    if metadata["chunk_id"] == 1:
        raise ValueError("chunk 1 is bad")
    return gdf


def test_default_batching_writes_whole_files_once_and_staged(tmp_path, table):
    """Tasks that hold every chunk of a file write its output file whole into staged work (no
    chunk parts); a redelivered member returns the same value and overwrites the same file."""
    from fused_celery.jobs import staged
    from fused_celery.steps.map_runners import make_map_run
    from fused_celery.steps.map_stages import file_data_url, map_member

    step = fused.map(table, udf=double, output_table=str(tmp_path / "out"))
    run, items = map_items(make_map_run(step, None, job_id="j1"))
    infos = map_member(run, items[0])
    files = {c.file_id for c in read_chunk_metadata(table)}
    assert {i["file_id"] for i in infos} == files and all(i["file"] for i in infos)
    for info in infos:
        data = Path(file_data_url(info["key"]))
        assert data.is_file() and staged.staged_info(info["key"]) == info
        assert not list(data.parent.glob("part*"))
        chunks = pa.parquet.ParquetFile(data).metadata.num_row_groups
        assert chunks == len(info["metas"]) == info["chunks"]
    again = map_member(run, items[0])
    assert json.dumps(again) == json.dumps(infos)


def test_whole_files_and_chunk_parts_give_the_same_table(tmp_path, table, monkeypatch):
    monkeypatch.setattr(fused.options, "storage_root", str(tmp_path / "root"))
    whole = str(tmp_path / "whole")
    parts = str(tmp_path / "parts")
    run_step(fused.map(table, udf=double, output_table=whole))
    run_step(fused.map(table, udf=double, output_table=parts, chunks_per_task=1))
    got = open_table(whole).get_dataframe().sort_values("uid").reset_index(drop=True)
    want = open_table(parts).get_dataframe().sort_values("uid").reset_index(drop=True)
    assert got.equals(want) and len(got) == 400
    assert read_chunk_metadata(whole) == read_chunk_metadata(parts)
    staged_files = [p for p in (tmp_path / "root").rglob("*") if p.is_file()]
    assert staged_files == []  # committed: the staged work is dropped


def test_a_whole_file_with_a_failed_chunk_is_written_without_it_and_not_reused(tmp_path, table):
    from fused_celery.jobs import staged
    from fused_celery.steps.map_runners import make_map_run
    from fused_celery.steps.map_stages import map_member

    step = fused.map(
        table, udf=fails_on_chunk_1, output_table=str(tmp_path / "out"), ignore_chunk_error=True
    )
    run, items = map_items(make_map_run(step, None, job_id="j2").model_copy(
        update={"ignore_errors": True}))  # fmt: skip
    infos = map_member(run, items[0])
    errors = [i for i in infos if "error" in i]
    assert errors and all(e["chunk_id"] == 1 and "chunk 1 is bad" in e["error"] for e in errors)
    for info in (i for i in infos if "error" not in i):
        failed_here = any(e["file_id"] == info["file_id"] for e in errors)
        assert (staged.staged_info(info["key"]) is None) == failed_here  # a resume redoes it
    result = run_step(step)
    kept = read_chunk_metadata(str(tmp_path / "out"))
    lost = sum(c.num_rows for c in read_chunk_metadata(table) if c.chunk_id == 1)
    assert result["steps"][0]["num_rows"] == sum(c.num_rows for c in kept) == 400 - lost
    assert {f["key"] for f in result["failed"]} == {f"{e['file_id']}.1" for e in errors}
