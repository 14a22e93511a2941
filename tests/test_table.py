"""Partitioned tables: format, commit protocol, readers; local disk and S3 (moto on loopback);
external readers (the reference SDK, DuckDB, GDAL through pyogrio)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import os
import signal
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from fused_celery import storage
from fused_celery import table as T
from fused_celery.errors import (
    BucketNotFoundError,
    ChunkNotFoundError,
    ColumnNotFoundError,
    CorruptFileError,
    IncompleteTableError,
    InvalidNameError,
    TableExistsError,
    TableFormatError,
    TableNotFoundError,
    UnsupportedURLError,
)
from fused_celery.options import options

pytest_plugins = ["moto_server"]

REFERENCE_REQUIREMENT = "fused==2.9.5"
CHUNK_CENTERS = {"0": [(0.0, 0.0), (10.0, 10.0)], "1": [(20.0, 20.0), (30.0, -30.0)]}


def make_chunk(cx: float, cy: float, n: int, start: int, seed: int) -> gpd.GeoDataFrame:
    """n small squares and points around (cx, cy) with ids start..start+n-1."""
    rng = np.random.default_rng(seed)
    x, y = cx + rng.random(n), cy + rng.random(n)
    geoms = np.where(
        np.arange(n) % 2 == 0, shapely.box(x, y, x + 0.01, y + 0.02), shapely.points(x, y)
    )
    return gpd.GeoDataFrame(
        {
            "id": np.arange(start, start + n),
            "name": [f"r{i}" for i in range(start, start + n)],
            "value": rng.random(n),
        },
        geometry=geoms,
        crs="EPSG:4326",
    )


def make_files(n: int = 40) -> dict[str, list[gpd.GeoDataFrame]]:
    files, start, seed = {}, 0, 0
    for fid, centers in CHUNK_CENTERS.items():
        files[fid] = []
        for cx, cy in centers:
            files[fid].append(make_chunk(cx, cy, n, start, seed))
            start, seed = start + n, seed + 1
    return files


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A folder URL for tables: a temp dir, or a prefix in a fresh moto bucket."""
    if request.param == "local":
        return str(tmp_path / "tables")
    return request.getfixturevalue("s3_bucket") + "/tables"


class ReadSpy:
    """Records every row-group read that goes through pyarrow.parquet.ParquetFile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, object]] = []
        original_groups = pq.ParquetFile.read_row_groups
        original_group = pq.ParquetFile.read_row_group
        original_read = pq.ParquetFile.read

        def read_row_groups(pf, row_groups, *args, **kwargs):
            self.calls.append(("row_groups", list(row_groups)))
            return original_groups(pf, row_groups, *args, **kwargs)

        def read_row_group(pf, i, *args, **kwargs):
            self.calls.append(("row_group", i))
            return original_group(pf, i, *args, **kwargs)

        def read(pf, *args, **kwargs):
            self.calls.append(("read", pf.metadata.num_row_groups))
            return original_read(pf, *args, **kwargs)

        monkeypatch.setattr(pq.ParquetFile, "read_row_groups", read_row_groups)
        monkeypatch.setattr(pq.ParquetFile, "read_row_group", read_row_group)
        monkeypatch.setattr(pq.ParquetFile, "read", read)

    @property
    def row_groups_read(self) -> int:
        return sum(len(a) if kind == "row_groups" else 1 for kind, a in self.calls)


def _footer(url: str) -> pq.ParquetFile:
    return pq.ParquetFile(storage.open_input_file(url))


# --- pure parts --------------------------------------------------------------------------------


def test_compute_chunk_metadata_measures_in_wgs84():
    geoms = np.array(
        [
            shapely.box(0, 0, 2, 1),
            shapely.LineString([(5, 5), (5, 8)]),
            shapely.Point(-1, 3),
            None,
            shapely.Polygon(),
        ],
        dtype=object,
    )
    m = T.compute_chunk_metadata("7", 3, geoms)
    assert (m.file_id, m.chunk_id, m.num_rows) == ("7", 3, 5)
    assert m.bbox == (-1.0, 0.0, 5.0, 8.0)
    assert m.sum_area == pytest.approx(2.0)
    assert m.sum_length == pytest.approx(6.0 + 3.0)
    assert m.num_coords == 5 + 2 + 1
    empty = T.compute_chunk_metadata("0", 0, np.array([None], dtype=object))
    assert all(math.isnan(v) for v in empty.bbox) and empty.num_rows == 1


def test_chunks_intersecting_edges_and_nan():
    minx = np.array([0.0, 10.0, np.nan, 5.0])
    miny = np.array([0.0, 10.0, np.nan, 5.0])
    maxx = np.array([1.0, 11.0, np.nan, 6.0])
    maxy = np.array([1.0, 11.0, np.nan, 6.0])
    mask = T.chunks_intersecting(minx, miny, maxx, maxy, (1.0, 1.0, 5.0, 5.0))
    assert mask.tolist() == [True, False, False, True]  # touching edges count
    assert not T.chunks_intersecting(minx, miny, maxx, maxy, (100, 100, 101, 101)).any()


def test_evenly_spaced_and_geometry_types():
    assert T.evenly_spaced(3, 10).tolist() == [0, 1, 2]
    idx = T.evenly_spaced(1000, 5)
    assert idx.tolist() == [0, 250, 500, 749, 999]
    geoms = np.array(
        [
            shapely.Point(0, 0, 1),
            shapely.LinearRing([(0, 0), (1, 0), (1, 1)]),
            shapely.MultiPolygon([shapely.box(0, 0, 1, 1)]),
            None,
            shapely.Point(),
        ],
        dtype=object,
    )
    assert T.geometry_types(geoms) == ["LineString", "MultiPolygon", "Point Z"]


def test_chunk_metadata_encoding_round_trips_in_reference_layout():
    chunks = [T.compute_chunk_metadata("a", i, np.array([shapely.Point(i, i)])) for i in range(3)]
    value = T.encode_chunk_metadata(chunks)
    table = pq.read_table(io.BytesIO(base64.b64decode(value)))
    assert table.column_names == [
        "file_id",
        "chunk_id",
        "bbox_minx",
        "bbox_miny",
        "bbox_maxx",
        "bbox_maxy",
        "sum_area",
        "sum_length",
        "num_coords",
        "num_rows",
    ]
    assert T.decode_chunk_metadata(value) == chunks


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", "..", "a..b", "../x", ".hidden", "_x", "a b"])
def test_bad_names_are_rejected(name):
    with pytest.raises(InvalidNameError):
        T.validate_name(name)


def test_table_names_resolve_under_the_storage_root(tmp_path, monkeypatch):
    monkeypatch.setattr(options, "storage_root", str(tmp_path))
    assert T.resolve_table_url("roads") == str(tmp_path / "tables" / "roads")
    assert T.resolve_table_url("s3://b/t/") == "s3://b/t"
    assert T.resolve_table_url(str(tmp_path / "x")) == str(tmp_path / "x")
    for bad in ("a/b", "a/../b", "..x"):
        with pytest.raises(InvalidNameError, match="table name"):
            T.resolve_table_url(bad)
    with pytest.raises(InvalidNameError, match="file_id"):
        T.TableWriter(str(tmp_path / "t")).write_file("../x", [make_chunk(0, 0, 2, 0, 0)])


# --- round trips ---------------------------------------------------------------------------------


def test_round_trip(root, monkeypatch):
    url = storage.join(root, "roads")
    files = make_files()
    table = T.write_table(url, files)
    inputs = [c for chunks in files.values() for c in chunks]

    # open_table
    assert table.url == url and table.name == "roads"
    assert (table.num_files, table.num_chunks, table.num_rows) == (2, 4, 160)
    assert table.files == ["0", "1"]
    assert table.column_names == ["id", "name", "value", "geometry"]
    assert table.table_schema.field("bbox").type == pa.struct(
        [(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")]
    )
    assert isinstance(table.sample, gpd.GeoDataFrame) and 0 < len(table.sample) <= 160
    assert table.sample.crs.to_epsg() == 4326
    assert [(c.file_id, c.chunk_id) for c in table.chunk_metadata] == [
        ("0", 0),
        ("0", 1),
        ("1", 0),
        ("1", 1),
    ]
    reopened = T.open_table(url)
    assert reopened.chunk_metadata == table.chunk_metadata
    assert sorted(storage.list_files(url)) == ["0.parquet", "1.parquet", "_sample"]

    # get_chunks_metadata: bboxes are the inputs' bounds
    meta = T.get_chunks_metadata(url)
    assert meta.crs.to_epsg() == 4326 and len(meta) == 4
    for (_, row), chunk in zip(meta.iterrows(), inputs):
        assert [row.bbox_minx, row.bbox_miny, row.bbox_maxx, row.bbox_maxy] == pytest.approx(
            list(chunk.total_bounds)
        )
        assert row.num_rows == len(chunk)
        assert row.geometry.equals(shapely.box(*chunk.total_bounds))

    # get_chunk_from_table reads one row group
    spy = ReadSpy(monkeypatch)
    chunk = T.get_chunk_from_table(url, 1, 1)
    assert spy.calls == [("row_groups", [1])]
    expected = files["1"][1]
    assert chunk["id"].tolist() == expected["id"].tolist()
    assert chunk.geometry.geom_equals_exact(expected.geometry.reset_index(drop=True), 0).all()
    assert chunk.crs.to_epsg() == 4326 and list(chunk.columns) == table.column_names
    only = T.get_chunk_from_table(url, "0", 0, columns=["id"])
    assert not isinstance(only, gpd.GeoDataFrame) and list(only.columns) == ["id"]
    assert len(T.get_chunk_from_table(url, "0", None)) == 80
    assert sorted(T.get_chunk_from_table(url, None, None)["id"]) == list(range(160))

    # bbox read: only the chunk around (10, 10) is opened, and only rows in the box come back
    spy.calls.clear()
    box = (10.0, 10.0, 10.5, 10.5)
    got = T.read_bbox(url, box)
    assert got.attrs["fused:chunks_read"] == [("0", 1)]
    assert spy.row_groups_read == 1 and spy.calls == [("row_groups", [1])]
    src = files["0"][1]
    want = src[src.intersects(shapely.box(*box))]["id"]
    assert sorted(got["id"]) == sorted(want) and len(want) > 0
    spy.calls.clear()
    two = table.get_dataframe_bbox(0.5, 0.5, 10.5, 10.5, clip=False, columns=["id"])
    assert two.attrs["fused:chunks_read"] == [("0", 0), ("0", 1)]
    assert spy.row_groups_read == 2 and len(two) == 80 and list(two.columns) == ["id", "geometry"]
    none = T.read_bbox(url, (100, 50, 101, 51))
    assert len(none) == 0 and none.attrs["fused:chunks_read"] == []


def test_data_files_are_geoparquet_1_1_with_one_row_group_per_chunk(tmp_path):
    url = str(tmp_path / "t")
    files = make_files()
    T.write_table(url, files)
    for fid, chunks in files.items():
        pf = _footer(storage.join(url, f"{fid}.parquet"))
        assert pf.metadata.num_row_groups == len(chunks)
        geo = json.loads(pf.schema_arrow.metadata[b"geo"])
        col = geo["columns"]["geometry"]
        assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
        assert col["encoding"] == "WKB"
        assert col["geometry_types"] == ["Point", "Polygon"]
        assert col["crs"]["id"] == {"authority": "EPSG", "code": 4326}
        assert col["crs"]["type"] == "GeographicCRS"  # PROJJSON
        bounds = gpd.pd.concat(chunks).total_bounds
        assert col["bbox"] == pytest.approx(list(bounds))
        assert col["covering"] == {
            "bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}
        }
        assert pf.schema_arrow.field("geometry").type == pa.binary()
        for i, chunk in enumerate(chunks):
            rg = pf.metadata.row_group(i)
            assert rg.num_rows == len(chunk)
            stats = {
                rg.column(j).path_in_schema: rg.column(j).statistics for j in range(rg.num_columns)
            }
            b = chunk.total_bounds
            assert stats["bbox.xmin"].min == pytest.approx(b[0])
            assert stats["bbox.ymin"].min == pytest.approx(b[1])
            assert stats["bbox.xmax"].max == pytest.approx(b[2])
            assert stats["bbox.ymax"].max == pytest.approx(b[3])
    kv = _footer(storage.join(url, "_sample")).schema_arrow.metadata
    assert kv[b"fused:format_version"] == b"5"
    rows = pq.read_table(io.BytesIO(base64.b64decode(kv[b"fused:_metadata"]))).to_pylist()
    assert [(r["file_id"], r["chunk_id"], r["num_rows"]) for r in rows] == [
        ("0", 0, 40),
        ("0", 1, 40),
        ("1", 0, 40),
        ("1", 1, 40),
    ]


def test_projected_data_keeps_its_crs_and_metadata_is_wgs84(tmp_path):
    wgs = make_chunk(10, 50, 20, 0, 3)
    url = str(tmp_path / "utm")
    table = T.write_table(url, {"0": [wgs.to_crs(32632)]})
    m = table.chunk_metadata[0]
    assert m.bbox == pytest.approx(tuple(wgs.total_bounds), abs=1e-6)
    chunk = T.get_chunk_from_table(url, "0", 0)
    assert chunk.crs.to_epsg() == 32632
    got = T.read_bbox(url, (10.0, 50.0, 10.5, 50.5))
    want = wgs[wgs.intersects(shapely.box(10.0, 50.0, 10.5, 50.5))]
    assert sorted(got["id"]) == sorted(want["id"])


# --- commit protocol -----------------------------------------------------------------------------


def test_overwrite_false_fails_before_any_work(root):
    url = storage.join(root, "t")
    T.write_table(url, make_files(10))
    before = storage.list_files(url, recursive=True)
    with pytest.raises(TableExistsError, match="overwrite=True"):
        T.TableWriter(url)
    assert storage.list_files(url, recursive=True) == before  # nothing staged


def test_overwrite_false_refuses_a_folder_that_is_not_a_table(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.parquet").write_bytes(b"user data")
    with pytest.raises(TableExistsError, match="not a fused table"):
        T.TableWriter(str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "data.parquet").read_bytes() == b"user data"


def test_overwrite_replaces_the_table_only_at_commit(root):
    url = storage.join(root, "t")
    T.write_table(url, make_files(10))  # files 0 and 1
    writer = T.TableWriter(url, overwrite=True, run_id="job2")
    meta = writer.write_file("0", [make_chunk(50, 50, 5, 1000, 9)])
    old = T.open_table(url)  # still the old table, whole
    assert (old.num_files, old.num_rows) == (2, 40)
    assert len(T.get_chunk_from_table(url, "0", 1)) == 10
    new = writer.commit(meta)
    assert (new.num_files, new.num_chunks, new.num_rows) == (1, 1, 5)
    assert sorted(storage.list_files(url, recursive=True)) == ["0.parquet", "_sample"]
    assert sorted(T.get_chunk_from_table(url, "0", 0)["id"]) == list(range(1000, 1005))


def test_a_table_without_sample_is_incomplete_and_a_rerun_completes_it(root):
    url = storage.join(root, "t")
    files = make_files(10)
    writer = T.TableWriter(url, run_id="job1")
    for fid, chunks in files.items():
        writer.write_file(fid, chunks)
    # The writer "dies" here: no commit.
    for read in (
        lambda: T.open_table(url),
        lambda: T.get_chunks_metadata(url),
        lambda: T.get_chunk_from_table(url, "0", 0),
        lambda: T.read_bbox(url, (0, 0, 1, 1)),
    ):
        with pytest.raises(IncompleteTableError, match="no _sample") as info:
            read()
        assert "rerun the job" in str(info.value)
    # A rerun (new writer, overwrite=False) completes it without duplicates.
    table = T.write_table(url, files, run_id="job2")
    ids = T.get_chunk_from_table(url, None, None)["id"].tolist()
    assert table.num_rows == 40 and sorted(ids) == list(range(40))
    assert "_staging" not in {p.split("/")[0] for p in storage.list_files(url, recursive=True)}


def test_commit_interrupted_before_sample_is_resumed(tmp_path, monkeypatch):
    url = str(tmp_path / "t")
    T.write_table(url, make_files(10))  # an old table, files 0 and 1
    writer = T.TableWriter(url, overwrite=True)
    meta = writer.write_file("5", [make_chunk(0, 0, 3, 500, 1)])
    real_write = storage.write_bytes

    def crash_on_sample(target, data):
        if target.endswith("_sample"):
            raise OSError("simulated crash before _sample")
        return real_write(target, data)

    monkeypatch.setattr(storage, "write_bytes", crash_on_sample)
    with pytest.raises(OSError, match="simulated"):
        writer.commit(meta)
    monkeypatch.setattr(storage, "write_bytes", real_write)
    with pytest.raises(IncompleteTableError):
        T.open_table(url)  # the old table is gone, the new one not committed: not a table
    table = writer.commit(meta)  # the redelivered finalizer completes it
    assert (table.files, table.num_rows) == (["5"], 3)
    assert T.TableWriter(url, overwrite=True).commit(meta).num_rows == 3  # idempotent
    assert sorted(storage.list_files(url, recursive=True)) == ["5.parquet", "_sample"]


def test_commit_refuses_files_that_were_never_written(tmp_path):
    writer = T.TableWriter(str(tmp_path / "t"))
    meta = writer.write_file("0", [make_chunk(0, 0, 3, 0, 0)])
    ghost = T.compute_chunk_metadata("9", 0, np.array([shapely.Point(0, 0)]))
    with pytest.raises(IncompleteTableError, match="'9'"):
        writer.commit([*meta, ghost])
    with pytest.raises(ValueError, match="chunk_ids"):
        writer.commit([*meta, *meta])


def test_empty_chunks_are_skipped_and_an_empty_table_commits(tmp_path):
    chunk = make_chunk(0, 0, 4, 0, 0)
    table = T.write_table(str(tmp_path / "a"), {"0": [chunk.iloc[:0], chunk, chunk.iloc[:0]]})
    assert [(c.chunk_id, c.num_rows) for c in table.chunk_metadata] == [(0, 4)]
    empty = T.write_table(str(tmp_path / "b"), {"0": [chunk.iloc[:0]]})
    assert (empty.num_rows, empty.num_files) == (0, 0)
    assert empty.column_names == ["id", "name", "value", "geometry"]
    assert len(T.read_bbox(str(tmp_path / "b"), (0, 0, 1, 1))) == 0


def test_writer_travels_as_json_between_processes(tmp_path):
    writer = T.TableWriter(str(tmp_path / "t"), run_id="job-7")
    clone = T.TableWriter.from_dict(json.loads(json.dumps(writer.to_dict())))
    meta = clone.write_file(3, [make_chunk(0, 0, 3, 0, 0)])
    assert writer.commit([m.model_dump() for m in meta]).files == ["3"]


# --- bad input -----------------------------------------------------------------------------------


def test_missing_table_unknown_scheme_and_missing_bucket(tmp_path, s3_options):
    with pytest.raises(TableNotFoundError, match="nothing is stored there"):
        T.open_table(str(tmp_path / "nothing"))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(TableNotFoundError, match="is a file"):
        T.open_table(str(tmp_path / "file"))
    with pytest.raises(UnsupportedURLError, match="'gs'"):
        T.open_table("gs://bucket/table")
    with pytest.raises(BucketNotFoundError, match="'no-such-bucket-x' does not exist"):
        T.open_table("s3://no-such-bucket-x/table")
    with pytest.raises(BucketNotFoundError):
        T.TableWriter("s3://no-such-bucket-x/table")


def test_sample_of_another_format_version_or_without_fused_metadata(tmp_path):
    url = str(tmp_path / "t")
    T.write_table(url, make_files(5))
    sample = pq.read_table(os.path.join(url, "_sample"))
    meta = dict(sample.schema.metadata)
    pq.write_table(
        sample.replace_schema_metadata({**meta, b"fused:format_version": b"4"}),
        os.path.join(url, "_sample"),
    )
    for read in (lambda: T.open_table(url), lambda: T.get_chunks_metadata(url)):
        with pytest.raises(TableFormatError, match="format_version '4'.*version 5 only"):
            read()
    pq.write_table(
        sample.replace_schema_metadata({b"geo": meta[b"geo"]}), os.path.join(url, "_sample")
    )
    with pytest.raises(TableFormatError, match="no fused metadata"):
        T.open_table(url)


def test_nonexistent_file_or_chunk_lists_what_exists(tmp_path):
    url = str(tmp_path / "t")
    T.write_table(url, make_files(5))
    with pytest.raises(ChunkNotFoundError, match=r"file_id '7'.*file_ids are '0', '1'"):
        T.get_chunk_from_table(url, 7, 0)
    with pytest.raises(ChunkNotFoundError, match=r"chunk_id 2 .*file '1'.*chunk_ids are 0, 1"):
        T.get_chunk_from_table(url, "1", 2)
    with pytest.raises(ColumnNotFoundError, match=r"\['nope'\].*'id'"):
        T.get_chunk_from_table(url, "1", 0, columns=["nope"])


def test_corrupt_parquet_is_named(tmp_path):
    url = str(tmp_path / "t")
    T.write_table(url, make_files(5))
    data = os.path.join(url, "1.parquet")
    with open(data, "r+b") as fh:
        fh.truncate(os.path.getsize(data) // 2)
    with pytest.raises(CorruptFileError, match=r"1\.parquet is corrupt"):
        T.get_chunk_from_table(url, "1", 0)
    assert len(T.get_chunk_from_table(url, "0", 0)) == 5  # other files still read
    with open(os.path.join(url, "_sample"), "wb") as fh:
        fh.write(b"not parquet at all")
    with pytest.raises(CorruptFileError, match=r"_sample is corrupt"):
        T.open_table(url)


# --- crash: a writer killed between data files and _sample --------------------------------------

WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests_dir!r})
    from test_table import make_files
    from fused_celery.table import TableWriter

    url, mode = sys.argv[1], sys.argv[2]
    writer = TableWriter(url, run_id=mode)
    meta = []
    for fid, chunks in make_files(25).items():
        meta += writer.write_file(fid, chunks)
    print("WRITTEN", flush=True)
    if mode == "hang":
        time.sleep(120)
    writer.commit(meta)
    print("COMMITTED", flush=True)
    """
)


def test_writer_killed_before_sample_leaves_no_table_and_a_rerun_completes(root, tmp_path):
    url = storage.join(root, "killed")
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT.format(tests_dir=str(Path(__file__).parent)))
    proc = subprocess.Popen(
        [sys.executable, str(script), url, "hang"],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert proc.stdout.readline().strip() == "WRITTEN"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    staged = storage.list_files(url, recursive=True)
    assert any(p.endswith("0.parquet") for p in staged) and "_sample" not in staged
    with pytest.raises(IncompleteTableError):
        T.open_table(url)
    with pytest.raises(IncompleteTableError):
        T.get_chunk_from_table(url, "0", 0)
    rerun = subprocess.run(
        [sys.executable, str(script), url, "rerun"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert rerun.returncode == 0, rerun.stderr
    table = T.open_table(url)
    ids = T.get_chunk_from_table(url, None, None)["id"].tolist()
    assert table.num_rows == 100 and sorted(ids) == list(range(100))
    assert sorted(storage.list_files(url, recursive=True)) == ["0.parquet", "1.parquet", "_sample"]


# --- external readers ---------------------------------------------------------------------------

REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import fused
    url, mode = sys.argv[1], sys.argv[2]
    if mode == "missing":
        try:
            fused.get_chunks_metadata(url)
        except Exception as exc:
            print(json.dumps({"error": type(exc).__name__}))
        else:
            print(json.dumps({"error": None}))
        sys.exit(0)
    meta = fused.get_chunks_metadata(url)
    out = {"version": fused.__version__, "crs": meta.crs.to_epsg(), "chunks": [], "reads": {}}
    for row in meta.itertuples():
        out["chunks"].append([row.file_id, int(row.chunk_id), int(row.num_rows),
                              [row.bbox_minx, row.bbox_miny, row.bbox_maxx, row.bbox_maxy]])
        gdf = fused.get_chunk_from_table(url, row.file_id, int(row.chunk_id))
        out["reads"][f"{row.file_id}/{row.chunk_id}"] = {
            "ids": gdf["id"].tolist(), "crs": gdf.crs.to_epsg(), "type": type(gdf).__name__,
            "wkt0": gdf.geometry.iloc[0].wkt,
        }
    part = fused.get_chunk_from_table(url, "1", 0, columns=["id", "name"])
    out["columns"] = list(part.columns)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="session")
def reference_python(request: pytest.FixtureRequest) -> str:
    """A Python that can ``import fused`` (the reference SDK): this one when the ``test-ref``
    extra is installed, else a venv cached in pytest's cache dir that sees this venv's
    packages and adds only fused and its small dependencies."""
    if importlib.util.find_spec("fused") is not None:
        return sys.executable
    venv = Path(request.config.cache.mkdir("fused-ref-venv"))
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import fused"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "fused_celery_base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            REFERENCE_REQUIREMENT,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if pip.returncode != 0 or subprocess.run(check, capture_output=True).returncode != 0:
        pytest.fail(f"cannot install the reference SDK ({REFERENCE_REQUIREMENT}):\n{pip.stderr}")
    return str(python)


def _run_reference(python: str, url: str, mode: str = "read") -> dict:
    result = subprocess.run(
        [python, "-c", REFERENCE_SCRIPT, url, mode],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_reference_sdk_reads_our_tables(root, reference_python):
    url = storage.join(root, "ref")
    files = make_files(12)
    table = T.write_table(url, files)
    out = _run_reference(reference_python, url)
    assert out["crs"] == 4326
    assert [c[:3] for c in out["chunks"]] == [
        [m.file_id, m.chunk_id, m.num_rows] for m in table.chunk_metadata
    ]
    for (fid, cid, _, bbox), m in zip(out["chunks"], table.chunk_metadata):
        assert bbox == pytest.approx(list(m.bbox))
        read = out["reads"][f"{fid}/{cid}"]
        want = files[fid][cid]
        assert read["type"] == "GeoDataFrame" and read["crs"] == 4326
        assert read["ids"] == want["id"].tolist()
        assert shapely.from_wkt(read["wkt0"]).equals_exact(want.geometry.iloc[0], 1e-9)
    assert out["columns"] == ["id", "name"]
    # An uncommitted table is not readable by the reference either.
    T.TableWriter(storage.join(root, "half")).write_file("0", files["0"])
    assert _run_reference(reference_python, storage.join(root, "half"), "missing")["error"]


def test_duckdb_reads_our_tables_as_geoparquet(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    url = str(tmp_path / "t")
    files = make_files(20)
    T.write_table(url, files)
    con = duckdb.connect()
    glob = os.path.join(url, "*.parquet")
    assert con.execute(
        f"select count(*), count(distinct id) from read_parquet('{glob}')"
    ).fetchone() == (80, 80)
    geom_type = con.execute(
        f"select typeof(geometry) from read_parquet('{glob}') limit 1"
    ).fetchone()
    assert geom_type[0].startswith("GEOMETRY")  # DuckDB recognised the GeoParquet metadata
    wkb = con.execute(
        f"select id, geometry::BLOB from read_parquet('{url}/1.parquet') order by id limit 1"
    ).fetchone()
    assert shapely.from_wkb(bytes(wkb[1])).equals_exact(files["1"][0].geometry.iloc[0], 1e-9)
    # Row-group statistics of the covering column: one row group per chunk, bounds per chunk.
    stats = con.execute(
        f"select row_group_id, stats_min, stats_max from parquet_metadata('{url}/0.parquet') "
        "where path_in_schema = 'bbox, xmin' order by row_group_id"
    ).fetchall()
    assert [r[0] for r in stats] == [0, 1]
    for (_, lo, _), chunk in zip(stats, files["0"]):
        assert float(lo) == pytest.approx(chunk.total_bounds[0])
    hits = con.execute(
        f"select id from read_parquet('{glob}') where bbox.xmin <= 10.5 and bbox.xmax >= 10 "
        "and bbox.ymin <= 10.5 and bbox.ymax >= 10 order by id"
    ).fetchall()
    src = files["0"][1]
    want = src[src.intersects(shapely.box(10, 10, 10.5, 10.5))]["id"]
    assert [h[0] for h in hits] == sorted(want)


def _duckdb_adbc_library() -> str:
    duckdb = pytest.importorskip("duckdb")
    folder = Path(duckdb.__file__).parent.parent
    libs = sorted(folder.glob("_duckdb*.so")) + sorted(folder.glob("duckdb/_duckdb*.so"))
    if not libs:
        pytest.fail("the duckdb wheel has no _duckdb*.so (its ADBC driver) to hand to GDAL")
    return str(libs[0])


def test_gdal_reads_our_tables_through_pyogrio(tmp_path):
    """pyogrio's bundled GDAL has no native Parquet driver; its ADBC driver reads GeoParquet
    through DuckDB's ADBC entry point (in the duckdb wheel). GDAL itself interprets the ``geo``
    metadata: geometry column, type, CRS, bbox covering."""
    pyogrio = pytest.importorskip("pyogrio")
    if "ADBC" not in pyogrio.list_drivers():
        pytest.fail(f"pyogrio's GDAL {pyogrio.__gdal_version_string__} lacks the ADBC driver")
    lib = _duckdb_adbc_library()
    url = str(tmp_path / "t")
    files = make_files(20)
    T.write_table(url, files)
    path = f"ADBC:{url}/0.parquet"
    info = pyogrio.read_info(path, ADBC_DRIVER=lib)
    assert info["features"] == 40 and info["crs"] == "EPSG:4326"
    assert info["geometry_name"] == "geometry" and list(info["fields"]) == ["id", "name", "value"]
    assert info["total_bounds"] == pytest.approx(tuple(gpd.pd.concat(files["0"]).total_bounds))
    df = pyogrio.read_dataframe(path, ADBC_DRIVER=lib)
    assert sorted(df["id"]) == list(range(40)) and df.crs.to_epsg() == 4326
    box = (10.0, 10.0, 10.5, 10.5)
    near = pyogrio.read_dataframe(path, ADBC_DRIVER=lib, bbox=box)
    src = files["0"][1]
    assert sorted(near["id"]) == sorted(src[src.intersects(shapely.box(*box))]["id"])


def test_chunks_with_different_columns_and_types_share_one_file_schema(tmp_path):
    a = make_chunk(0, 0, 3, 0, 0)
    a["value"] = [1, 2, 3]  # int64 here, float64 in b
    b = make_chunk(1, 1, 2, 3, 1).assign(extra=["x", "y"])
    url = str(tmp_path / "t")
    table = T.write_table(url, {"0": [a, b]})
    assert table.column_names == ["id", "name", "value", "geometry", "extra"]
    first = T.get_chunk_from_table(url, "0", 0)
    assert first["value"].tolist() == [1.0, 2.0, 3.0] and first["extra"].isna().all()
    assert T.get_chunk_from_table(url, "0", 1)["extra"].tolist() == ["x", "y"]


def test_files_of_one_table_must_share_a_crs(tmp_path):
    chunk = make_chunk(0, 0, 3, 0, 0)
    with pytest.raises(ValueError, match="different CRSs"):
        T.write_table(str(tmp_path / "t"), {"0": [chunk], "1": [chunk.to_crs(3857)]})
    with pytest.raises(IncompleteTableError):
        T.open_table(str(tmp_path / "t"))


def test_chunks_metadata_equals_per_chunk_metadata():
    """The vectorised metadata of consecutive chunks equals each chunk's own, nulls included."""
    from fused_celery.table import RowFacts

    rng = np.random.default_rng(1)
    mixed = [shapely.box(0, 0, 1, 2), None, shapely.LineString([(0, 0), (3, 4)])] * 5
    geoms = np.array([shapely.Point(rng.random(2)) for _ in range(50)] + mixed, dtype=object)
    facts = RowFacts.of(geoms)
    offsets = [0, 10, 30, 31, 40, len(geoms)]
    together = facts.chunks_metadata("3", offsets)
    one_by_one = [
        facts.take(slice(a, b)).chunk_metadata("3", k)
        for k, (a, b) in enumerate(zip(offsets[:-1], offsets[1:]))
    ]
    assert [m.model_dump() for m in together] == [m.model_dump() for m in one_by_one]
    assert together[3].num_rows == 9 and together[-1].num_rows == len(geoms) - 40
