"""The table format (``fused_celery.table.format``): names, GeoParquet 1.1 data files, the
``fused:*`` metadata of ``_sample``, CRSs; and external readers of our tables (the reference
SDK, DuckDB, GDAL through pyogrio) on local disk and S3 (moto on loopback)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
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
from table_samples import make_chunk, make_files

from fused_celery import storage
from fused_celery.errors import InvalidNameError, TableFormatError
from fused_celery.options import options
from fused_celery.table.facts import compute_chunk_metadata
from fused_celery.table.format import (
    decode_chunk_metadata,
    encode_chunk_metadata,
    resolve_table_url,
    validate_name,
)
from fused_celery.table.read import get_chunk_from_table, get_chunks_metadata, open_table, read_bbox
from fused_celery.table.write import TableWriter, write_table

pytest_plugins = ["moto_server"]

REFERENCE_REQUIREMENT = "fused==2.9.5"


def _footer(url: str) -> pq.ParquetFile:
    return pq.ParquetFile(storage.open_input_file(url))


# --- names and metadata --------------------------------------------------------------------------


def test_chunk_metadata_encoding_round_trips_in_reference_layout():
    chunks = [compute_chunk_metadata("a", i, np.array([shapely.Point(i, i)])) for i in range(3)]
    value = encode_chunk_metadata(chunks)
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
    assert decode_chunk_metadata(value) == chunks


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", "..", "a..b", "../x", ".hidden", "_x", "a b"])
def test_bad_names_are_rejected(name):
    with pytest.raises(InvalidNameError):
        validate_name(name)


def test_table_names_resolve_under_the_storage_root(tmp_path, monkeypatch):
    monkeypatch.setattr(options, "storage_root", str(tmp_path))
    assert resolve_table_url("roads") == str(tmp_path / "tables" / "roads")
    assert resolve_table_url("s3://b/t/") == "s3://b/t"
    assert resolve_table_url(str(tmp_path / "x")) == str(tmp_path / "x")
    for bad in ("a/b", "a/../b", "..x"):
        with pytest.raises(InvalidNameError, match="table name"):
            resolve_table_url(bad)
    with pytest.raises(InvalidNameError, match="file_id"):
        TableWriter(str(tmp_path / "t")).write_file("../x", [make_chunk(0, 0, 2, 0, 0)])


def test_data_files_are_geoparquet_1_1_with_one_row_group_per_chunk(tmp_path):
    url = str(tmp_path / "t")
    files = make_files()
    write_table(url, files)
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
    table = write_table(url, {"0": [wgs.to_crs(32632)]})
    m = table.chunk_metadata[0]
    # computed from each row's box in UTM, its corners transformed (no vertex reprojected): it
    # holds every row and is within a few metres of the reprojected rows' bbox
    b, eps = wgs.total_bounds, 1e-9  # a point's round trip through UTM moves it by ~1e-15°
    assert m.bbox_minx <= b[0] + eps and m.bbox_miny <= b[1] + eps
    assert m.bbox_maxx >= b[2] - eps and m.bbox_maxy >= b[3] - eps
    assert m.bbox == pytest.approx(tuple(b), abs=1e-3)
    exact = compute_chunk_metadata("0", 0, np.asarray(wgs.geometry.array, dtype=object))
    assert m.sum_area == pytest.approx(exact.sum_area, rel=0.02)
    assert m.sum_length == pytest.approx(exact.sum_length, rel=0.15)  # direction-blind
    assert (m.num_coords, m.num_rows) == (exact.num_coords, exact.num_rows)
    chunk = get_chunk_from_table(url, "0", 0)
    assert chunk.crs.to_epsg() == 32632
    got = read_bbox(url, (10.0, 50.0, 10.5, 50.5))
    want = wgs[wgs.intersects(shapely.box(10.0, 50.0, 10.5, 50.5))]
    assert sorted(got["id"]) == sorted(want["id"])


def test_projected_rows_across_the_antimeridian_span_it(tmp_path):
    """Rows in a Pacific CRS on both sides of 180°: the chunk's WGS84 bbox spans -180..180 (as
    the reprojected rows' would), so a query on either side finds them."""
    lon = np.array([179.95, -179.95, 179.9, -179.9])
    wgs = gpd.GeoDataFrame(
        {"id": np.arange(4)},
        geometry=[
            shapely.Point(lon[0], 10.0),
            shapely.Point(lon[1], 10.0),
            shapely.box(lon[2], 11.0, lon[2] + 0.01, 11.01),
            shapely.box(lon[3], 12.0, lon[3] + 0.01, 12.01),
        ],
        crs="EPSG:4326",
    )
    pacific = wgs.to_crs(3832)  # WGS 84 / PDC Mercator, central meridian 150°E
    crossing = pacific.copy()
    crossing.loc[4] = [4, pacific.geometry.iloc[0].buffer(20_000)]  # a polygon across 180°
    url = str(tmp_path / "pacific")
    m = write_table(url, {"0": [crossing]}).chunk_metadata[0]
    reprojected = crossing.to_crs(4326).total_bounds
    assert m.bbox_minx <= -179.9 and m.bbox_maxx >= 179.9
    assert m.bbox_minx <= reprojected[0] and m.bbox_maxx >= reprojected[2]
    assert m.bbox_miny == pytest.approx(reprojected[1], abs=1e-3)
    assert m.bbox_maxy == pytest.approx(reprojected[3], abs=1e-3)
    assert set(read_bbox(url, (179.8, 9.0, 180.0, 13.0))["id"]) >= {0, 2}
    assert set(read_bbox(url, (-180.0, 9.0, -179.8, 13.0))["id"]) >= {1, 3}
    alone = write_table(str(tmp_path / "east"), {"0": [pacific.iloc[[0, 2]]]}).chunk_metadata[0]
    assert alone.bbox == pytest.approx((179.9, 10.0, 179.95, 11.01), abs=1e-6)  # no spurious span


def test_sample_of_another_format_version_or_without_fused_metadata(tmp_path):
    url = str(tmp_path / "t")
    write_table(url, make_files(5))
    sample = pq.read_table(os.path.join(url, "_sample"))
    meta = dict(sample.schema.metadata)
    pq.write_table(
        sample.replace_schema_metadata({**meta, b"fused:format_version": b"4"}),
        os.path.join(url, "_sample"),
    )
    for read in (lambda: open_table(url), lambda: get_chunks_metadata(url)):
        with pytest.raises(TableFormatError, match="format_version '4'.*version 5 only"):
            read()
    pq.write_table(
        sample.replace_schema_metadata({b"geo": meta[b"geo"]}), os.path.join(url, "_sample")
    )
    with pytest.raises(TableFormatError, match="no fused metadata"):
        open_table(url)


# --- external readers ----------------------------------------------------------------------------


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
    table = write_table(url, files)
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
    TableWriter(storage.join(root, "half")).write_file("0", files["0"])
    assert _run_reference(reference_python, storage.join(root, "half"), "missing")["error"]


def test_duckdb_reads_our_tables_as_geoparquet(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    url = str(tmp_path / "t")
    files = make_files(20)
    write_table(url, files)
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
    # The covering's doubles are stored uncompressed (snappy does not shrink them), the rest snappy.
    codecs = dict(
        con.execute(
            f"select distinct path_in_schema, compression from parquet_metadata('{url}/0.parquet')"
        ).fetchall()
    )
    assert {k: v for k, v in codecs.items() if k.startswith("bbox")} == {
        f"bbox, {k}": "UNCOMPRESSED" for k in ("xmin", "ymin", "xmax", "ymax")
    }
    assert {v for k, v in codecs.items() if not k.startswith("bbox")} == {"SNAPPY"}
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
    write_table(url, files)
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


def test_geopandas_and_pyarrow_read_our_tables(tmp_path):
    """The readers the README names besides DuckDB, GDAL (ADBC) and the reference SDK:
    ``geopandas.read_parquet`` (a data file, and the folder) and ``pyarrow.dataset``."""
    import pyarrow.dataset as ds

    url = str(tmp_path / "t")
    files = make_files(20)
    write_table(url, files)
    one = gpd.read_parquet(os.path.join(url, "1.parquet"))
    want = gpd.pd.concat(files["1"], ignore_index=True)
    assert one.crs.to_epsg() == 4326 and sorted(one["id"]) == sorted(want["id"])
    assert one.geometry.iloc[0].equals_exact(want.geometry.iloc[0], 1e-9)
    parts = [gpd.read_parquet(os.path.join(url, f"{f}.parquet")) for f in sorted(files)]
    assert sum(len(p) for p in parts) == 80
    data = ds.dataset(url, format="parquet", exclude_invalid_files=True)
    assert data.count_rows() == 80
    assert data.to_table(filter=ds.field("id") == 3).num_rows == 1


def test_gdal_without_adbc_does_not_read_our_tables(tmp_path):
    """What the README warns about: pyogrio's bundled GDAL has no Parquet driver, so
    ``gpd.read_file`` on a data file fails; GDAL reads our tables only through ADBC."""
    pyogrio = pytest.importorskip("pyogrio")
    url = str(tmp_path / "t")
    write_table(url, make_files(5))
    if "Parquet" in pyogrio.list_drivers():
        pytest.fail("this GDAL has a Parquet driver now: update the README's list of readers")
    with pytest.raises(pyogrio.errors.DataSourceError):
        gpd.read_file(os.path.join(url, "0.parquet"))
