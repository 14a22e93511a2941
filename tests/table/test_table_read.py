"""Table readers (``fused_celery.table.read``): open_table, chunk metadata, one row group
per chunk read, bbox reads; errors for missing, incomplete or corrupt tables; local disk and
S3 (moto on loopback)."""

from __future__ import annotations

import os

import geopandas as gpd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from table_samples import make_files

from fused_celery import storage
from fused_celery.errors import (
    BucketNotFoundError,
    ChunkNotFoundError,
    ColumnNotFoundError,
    CorruptFileError,
    TableNotFoundError,
    UnsupportedURLError,
)
from fused_celery.table.read import get_chunk_from_table, get_chunks_metadata, open_table, read_bbox
from fused_celery.table.write import TableWriter, write_table

pytest_plugins = ["moto_server"]


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


# --- round trips ---------------------------------------------------------------------------------


def test_round_trip(root, monkeypatch):
    url = storage.join(root, "roads")
    files = make_files()
    table = write_table(url, files)
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
    reopened = open_table(url)
    assert reopened.chunk_metadata == table.chunk_metadata
    assert sorted(storage.list_files(url)) == ["0.parquet", "1.parquet", "_sample"]

    # get_chunks_metadata: bboxes are the inputs' bounds
    meta = get_chunks_metadata(url)
    assert meta.crs.to_epsg() == 4326 and len(meta) == 4
    for (_, row), chunk in zip(meta.iterrows(), inputs):
        assert [row.bbox_minx, row.bbox_miny, row.bbox_maxx, row.bbox_maxy] == pytest.approx(
            list(chunk.total_bounds)
        )
        assert row.num_rows == len(chunk)
        assert row.geometry.equals(shapely.box(*chunk.total_bounds))

    # get_chunk_from_table reads one row group
    spy = ReadSpy(monkeypatch)
    chunk = get_chunk_from_table(url, 1, 1)
    assert spy.calls == [("row_groups", [1])]
    expected = files["1"][1]
    assert chunk["id"].tolist() == expected["id"].tolist()
    assert chunk.geometry.geom_equals_exact(expected.geometry.reset_index(drop=True), 0).all()
    assert chunk.crs.to_epsg() == 4326 and list(chunk.columns) == table.column_names
    only = get_chunk_from_table(url, "0", 0, columns=["id"])
    assert not isinstance(only, gpd.GeoDataFrame) and list(only.columns) == ["id"]
    assert len(get_chunk_from_table(url, "0", None)) == 80
    assert sorted(get_chunk_from_table(url, None, None)["id"]) == list(range(160))

    # bbox read: only the chunk around (10, 10) is opened, and only rows in the box come back
    spy.calls.clear()
    box = (10.0, 10.0, 10.5, 10.5)
    got = read_bbox(url, box)
    assert got.attrs["fused:chunks_read"] == [("0", 1)]
    assert spy.row_groups_read == 1 and spy.calls == [("row_groups", [1])]
    src = files["0"][1]
    want = src[src.intersects(shapely.box(*box))]["id"]
    assert sorted(got["id"]) == sorted(want) and len(want) > 0
    spy.calls.clear()
    two = table.get_dataframe_bbox(0.5, 0.5, 10.5, 10.5, clip=False, columns=["id"])
    assert two.attrs["fused:chunks_read"] == [("0", 0), ("0", 1)]
    assert spy.row_groups_read == 2 and len(two) == 80 and list(two.columns) == ["id", "geometry"]
    none = read_bbox(url, (100, 50, 101, 51))
    assert len(none) == 0 and none.attrs["fused:chunks_read"] == []


# --- bad input -----------------------------------------------------------------------------------


def test_missing_table_unknown_scheme_and_missing_bucket(tmp_path, s3_options):
    with pytest.raises(TableNotFoundError, match="nothing is stored there"):
        open_table(str(tmp_path / "nothing"))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(TableNotFoundError, match="is a file"):
        open_table(str(tmp_path / "file"))
    with pytest.raises(UnsupportedURLError, match="'gs'"):
        open_table("gs://bucket/table")
    with pytest.raises(BucketNotFoundError, match="'no-such-bucket-x' does not exist"):
        open_table("s3://no-such-bucket-x/table")
    with pytest.raises(BucketNotFoundError):
        TableWriter("s3://no-such-bucket-x/table")


def test_nonexistent_file_or_chunk_lists_what_exists(tmp_path):
    url = str(tmp_path / "t")
    write_table(url, make_files(5))
    with pytest.raises(ChunkNotFoundError, match=r"file_id '7'.*file_ids are '0', '1'"):
        get_chunk_from_table(url, 7, 0)
    with pytest.raises(ChunkNotFoundError, match=r"chunk_id 2 .*file '1'.*chunk_ids are 0, 1"):
        get_chunk_from_table(url, "1", 2)
    with pytest.raises(ColumnNotFoundError, match=r"\['nope'\].*'id'"):
        get_chunk_from_table(url, "1", 0, columns=["nope"])


def test_corrupt_parquet_is_named(tmp_path):
    url = str(tmp_path / "t")
    write_table(url, make_files(5))
    data = os.path.join(url, "1.parquet")
    with open(data, "r+b") as fh:
        fh.truncate(os.path.getsize(data) // 2)
    with pytest.raises(CorruptFileError, match=r"1\.parquet is corrupt"):
        get_chunk_from_table(url, "1", 0)
    assert len(get_chunk_from_table(url, "0", 0)) == 5  # other files still read
    with open(os.path.join(url, "_sample"), "wb") as fh:
        fh.write(b"not parquet at all")
    with pytest.raises(CorruptFileError, match=r"_sample is corrupt"):
        open_table(url)
