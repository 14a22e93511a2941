"""Reading ingest inputs in slices (fused_celery.partition.read): every format, local and S3
(moto server on loopback), folders, and bad inputs with typed errors."""

from __future__ import annotations

import json
import os

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from pydantic import ValidationError

from fused_celery import storage
from fused_celery.errors import IngestInputError, InputNotFoundError, UnsupportedInputError
from fused_celery.partition.config import GeospatialPartitionJobStepConfig
from fused_celery.partition.read import InputSlice, list_slices, read_input, read_slice, remote

pytest_plugins = ["moto_server"]

N = 230


def sample(n: int = N, crs: int | str = 3857, seed: int = 0) -> gpd.GeoDataFrame:
    """``n`` points with columns ``rid`` (0..n-1), ``name``, ``v``."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1e6, 1e6, (n, 2)) if crs == 3857 else rng.uniform(-50, 50, (n, 2))
    return gpd.GeoDataFrame(
        {"rid": np.arange(n), "name": [f"n{i}" for i in range(n)], "v": rng.random(n)},
        geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]),
        crs=crs,
    )


def cfg(input, **kw) -> GeospatialPartitionJobStepConfig:
    return GeospatialPartitionJobStepConfig(input=input, **kw)


def read_all(
    config: GeospatialPartitionJobStepConfig, target_rows: int
) -> tuple[list, gpd.GeoDataFrame]:
    """The slices of ``config`` and the concatenation of their frames (checking each one)."""
    slices = list_slices(config, target_rows=target_rows)
    assert [s.slice_id for s in slices] == list(range(len(slices)))
    frames = []
    for s in slices:
        f = read_slice(s, config)
        assert isinstance(f, gpd.GeoDataFrame)
        if s.num_rows is not None:
            assert len(f) == s.num_rows
        assert list(f.index) == list(range(len(f)))
        frames.append(f)
    crs = {f.crs for f in frames}
    assert len(crs) == 1
    return slices, pd.concat(frames, ignore_index=True)


def assert_same_rows(got: gpd.GeoDataFrame, want: gpd.GeoDataFrame) -> None:
    """Same rows in the same order (``rid``), same geometry, same CRS."""
    assert len(got) == len(want)
    assert np.array_equal(got["rid"].astype(np.int64).to_numpy(), want["rid"].to_numpy())
    assert got.crs == want.crs
    assert shapely.equals_exact(
        np.asarray(got.geometry.array), np.asarray(want.geometry.array), tolerance=1e-6
    ).all()


def write(g: gpd.GeoDataFrame, path: str, **kw) -> str:
    if path.endswith(".parquet"):
        g.to_parquet(path, **kw)
    else:
        g.to_file(path, engine="pyogrio", **kw)
    return str(path)


# --- the slice model ---------------------------------------------------------------------------


def test_slice_is_frozen_and_json_round_trips(tmp_path):
    path = write(sample(), str(tmp_path / "a.parquet"), row_group_size=50)
    slices = list_slices(cfg(path), target_rows=100)
    for s in slices:
        assert InputSlice.model_validate(json.loads(json.dumps(s.model_dump(mode="json")))) == s
        assert InputSlice.model_validate_json(s.model_dump_json()) == s
    with pytest.raises(ValidationError):
        slices[0].start = 3  # type: ignore[misc]
    assert "row groups 0-1" in slices[0].describe() and path in slices[0].describe()


# --- formats, local ----------------------------------------------------------------------------


def test_geoparquet_groups_row_groups_up_to_target(tmp_path):
    g = sample()
    path = write(g, str(tmp_path / "a.parquet"), row_group_size=20)
    slices, got = read_all(cfg(path), target_rows=50)
    assert [(s.start, s.stop, s.num_rows) for s in slices[:2]] == [(0, 2, 40), (2, 4, 40)]
    assert sum(s.num_rows for s in slices) == N and all(s.num_rows <= 50 for s in slices)
    assert all(s.format == "parquet" and s.row_start is None for s in slices)
    assert_same_rows(got, g)
    assert list(got.columns) == list(gpd.read_parquet(path).columns)


def test_geoparquet_large_row_group_is_cut_in_row_ranges(tmp_path):
    g = sample()
    path = write(g, str(tmp_path / "a.parquet"), row_group_size=200)  # groups of 200 and 30
    slices, got = read_all(cfg(path), target_rows=60)
    ranges = [(s.start, s.row_start, s.row_stop) for s in slices]
    assert ranges == [(0, 0, 50), (0, 50, 100), (0, 100, 150), (0, 150, 200), (1, None, None)]
    assert_same_rows(got, g)


def test_slices_are_cut_by_uncompressed_bytes(tmp_path):
    g = sample()
    path = write(g, str(tmp_path / "a.parquet"), row_group_size=100)  # groups of 100, 100, 30
    meta = pq.ParquetFile(path).metadata
    per_row = meta.row_group(0).total_byte_size / meta.row_group(0).num_rows
    whole = list_slices(cfg(path), target_rows=10**6, target_bytes=10**9)
    assert [(s.start, s.stop) for s in whole] == [(0, 3)]  # small groups gathered
    budget = int(per_row * 40)  # about 40 rows' bytes: each group is cut in row ranges
    slices = list_slices(cfg(path), target_rows=10**6, target_bytes=budget)
    assert len(slices) >= 6 and all(s.num_rows <= 50 for s in slices)
    assert_same_rows(pd.concat([read_slice(s, cfg(path)) for s in slices], ignore_index=True), g)
    csv_path = tmp_path / "pts.csv"
    csv_path.write_text(csv_frame().to_csv(index=False))
    csv_cfg = cfg(str(csv_path), lonlat_cols=("lon", "lat"))
    line = len(csv_path.read_text().splitlines()[1]) + 1
    by_bytes = list_slices(csv_cfg, target_rows=10**6, target_bytes=line * 50)
    assert len(by_bytes) > 1 and all(s.num_rows <= 60 for s in by_bytes)
    assert sum(s.num_rows for s in by_bytes) == len(csv_frame())
    gpkg = write(sample(), str(tmp_path / "a.gpkg"))
    size = os.path.getsize(gpkg)
    features = list_slices(cfg(gpkg), target_rows=10**6, target_bytes=size // 4)
    assert len(features) >= 4 and sum(s.num_rows for s in features) == N
    with pytest.raises(ValueError, match="target_bytes"):
        list_slices(cfg(path), target_bytes=0)


def test_geoparquet_load_columns_and_whole_read(tmp_path):
    g = sample()
    path = write(g, str(tmp_path / "a.parquet"), row_group_size=64)
    _, got = read_all(cfg(path, load_columns=["rid"]), target_rows=64)
    assert list(got.columns) == ["rid", "geometry"]
    assert_same_rows(got, g)
    whole = read_input(cfg(path, load_columns=["name"]))
    assert list(whole.columns) == ["name", "geometry"] and len(whole) == N
    assert whole.crs == g.crs


def test_parquet_with_lonlat_cols(tmp_path):
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {"rid": np.arange(N), "lon": rng.uniform(-9, 9, N), "lat": rng.uniform(-9, 9, N)}
    )
    df["other"] = "x"
    path = str(tmp_path / "pts.parquet")
    df.to_parquet(path, row_group_size=30)
    config = cfg(path, lonlat_cols=("lon", "lat"), load_columns=["rid"])
    slices, got = read_all(config, target_rows=70)
    assert len(slices) == 4
    assert list(got.columns) == ["rid", "lon", "lat", "geometry"]
    want = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df.lon, df.lat), crs=4326)
    assert_same_rows(got, want)


@pytest.mark.parametrize("suffix", [".gpkg", ".shp", ".fgb", ".geojson"])
def test_gdal_formats_in_feature_ranges(tmp_path, suffix):
    g = sample()
    path = write(g, str(tmp_path / f"a{suffix}"))
    slices, got = read_all(cfg(path), target_rows=50)
    assert [(s.start, s.stop) for s in slices] == [(a, min(N, a + 50)) for a in range(0, N, 50)]
    assert all(s.format == "gdal" for s in slices)
    whole = gpd.read_file(path, engine="pyogrio")  # FlatGeobuf: spatial index order
    assert_same_rows(got, whole)
    assert got.crs == g.crs
    _, some = read_all(cfg(path, load_columns=["name"]), target_rows=100)
    assert list(some.columns) == ["name", "geometry"]
    assert some["name"].tolist() == whole["name"].tolist()


def test_geopackage_layer(tmp_path):
    path = str(tmp_path / "multi.gpkg")
    sample(40).to_file(path, layer="first", engine="pyogrio")
    sample(70, seed=2).to_file(path, layer="second", engine="pyogrio")
    config = cfg(path, gdal_config={"layer": "second"})
    slices, got = read_all(config, target_rows=30)
    assert [s.layer for s in slices] == ["second"] * 3
    assert len(got) == 70
    with pytest.raises(IngestInputError, match="no layer 'third'.*first.*second"):
        list_slices(cfg(path, gdal_config={"layer": "third"}))


def csv_frame(n: int = N) -> pd.DataFrame:
    """Points with awkward text: quotes, commas and newlines inside quoted fields."""
    g = sample(n, crs=4326)
    names = [f'line {i}\nnext, "quoted"' if i % 7 == 0 else f"n{i}" for i in range(n)]
    return pd.DataFrame(
        {
            "rid": np.arange(n),
            "name": names,
            "lon": g.geometry.x,
            "lat": g.geometry.y,
            "wkt": g.geometry.to_wkt(),
        }
    )


def test_csv_lonlat_byte_ranges_respect_quoted_newlines(tmp_path):
    df = csv_frame()
    path = str(tmp_path / "pts.csv")
    text = df.to_csv(index=False)
    lines = text.split("\n")
    lines.insert(5, "")  # a blank line is not a record
    (tmp_path / "pts.csv").write_text("\n".join(lines).rstrip("\n"))  # no final newline
    config = cfg(path, lonlat_cols=("lon", "lat"))
    slices, got = read_all(config, target_rows=40)
    assert all(s.format == "csv" and s.header_bytes == len(lines[0]) + 1 for s in slices)
    assert [s.num_rows for s in slices] == [40] * 5 + [30]
    assert slices[-1].stop == os.path.getsize(path)
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    assert got["name"].tolist() == df["name"].tolist()
    want = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df.lon, df.lat), crs=4326)
    assert_same_rows(got, want)
    _, some = read_all(cfg(path, lonlat_cols=("lon", "lat"), load_columns=["name"]), 100)
    assert list(some.columns) == ["name", "lon", "lat", "geometry"]


def test_csv_with_gdal_open_options(tmp_path):
    df = csv_frame()
    path = str(tmp_path / "pts.csv")
    df.to_csv(path, index=False, lineterminator="\r\n")
    want = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df.lon, df.lat), crs=4326)
    xy = {"open_options": {"X_POSSIBLE_NAMES": "lon", "Y_POSSIBLE_NAMES": "lat"}}
    slices, got = read_all(cfg(path, gdal_config=xy), target_rows=60)
    assert len(slices) == 4 and got.crs == "EPSG:4326"
    assert_same_rows(got, want)
    assert got["name"].tolist() == df["name"].tolist()
    wkt = {"open_options": {"GEOM_POSSIBLE_NAMES": "wkt"}}
    _, got = read_all(cfg(path, gdal_config=wkt, load_columns=["rid"]), target_rows=100)
    assert_same_rows(got, want)
    assert list(got.columns) == ["rid", "geometry"]


def test_csv_whose_quotes_do_not_balance_is_one_slice(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("rid,height,lon,lat\n0,5'7\",1,2\n1,6'1,3,4\n")
    config = cfg(str(path), lonlat_cols=("lon", "lat"))
    slices = list_slices(config, target_rows=1)
    assert len(slices) == 1 and slices[0].num_rows is None
    assert read_slice(slices[0], config)["rid"].tolist() == [0, 1]


def test_folder_list_and_order(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    g = sample()
    write(g.iloc[:100], str(folder / "b.parquet"))
    write(g.iloc[100:150], str(folder / "a.parquet"))
    write(g.iloc[150:], str(folder / "sub" / "c.parquet"))
    (folder / "_SUCCESS").write_text("")
    (folder / ".hidden.parquet").write_bytes(b"junk")
    (folder / "notes.txt").write_text("not an input")
    config = cfg(str(folder), file_suffix=".parquet")
    slices = list_slices(config, target_rows=1000)
    assert [os.path.relpath(s.url, folder) for s in slices] == [
        "a.parquet",
        "b.parquet",
        "sub/c.parquet",
    ]
    got = read_input(config)
    assert got["rid"].tolist() == [*range(100, 150), *range(100), *range(150, N)]
    listed = [str(folder / "sub" / "c.parquet"), str(folder / "b.parquet")]
    assert [s.url for s in list_slices(cfg(listed))] == listed
    with pytest.raises(UnsupportedInputError, match="notes.txt.*supported suffixes"):
        list_slices(cfg(str(folder)))


def test_folder_of_shapefiles_skips_sidecars(tmp_path):
    folder = tmp_path / "shp"
    folder.mkdir()
    write(sample(30), str(folder / "a.shp"))
    write(sample(20, seed=3), str(folder / "b.shp"))
    slices = list_slices(cfg(str(folder)), target_rows=1000)
    assert [os.path.basename(s.url) for s in slices] == ["a.shp", "b.shp"]
    assert len(read_input(cfg(str(folder)))) == 50


def test_read_input_in_memory_frame_and_mixed_crs(tmp_path):
    g = sample(20)
    assert read_input(cfg(g)) is g
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    assert read_input(cfg(df, lonlat_cols=("x", "y"))).crs == "EPSG:4326"
    with pytest.raises(TypeError, match="write it to storage first"):
        list_slices(cfg(g))
    a = write(sample(10), str(tmp_path / "a.parquet"))
    b = write(sample(5, crs=4326), str(tmp_path / "b.gpkg"))
    both = read_input(cfg([a, b]))
    assert both.crs == "EPSG:4326" and len(both) == 15
    assert both["rid"].tolist() == [*range(10), *range(5)]


# --- S3 ----------------------------------------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> str:
    folder = str(tmp_path / "input-cache")
    monkeypatch.setattr(remote, "INPUT_CACHE_DIR", folder)
    return folder


def upload(local: str, url: str) -> None:
    with open(local, "rb") as f:
        storage.write_bytes(url, f.read())


def test_s3_geoparquet_reads_row_groups(tmp_path, s3_bucket):
    g = sample()
    local = write(g, str(tmp_path / "a.parquet"), row_group_size=40)
    upload(local, f"{s3_bucket}/in/part-0.parquet")
    upload(local, f"{s3_bucket}/in/_tmp.parquet")
    config = cfg(f"{s3_bucket}/in/", load_columns=["name"])
    slices, got = read_all(config, target_rows=80)
    assert {s.url for s in slices} == {f"{s3_bucket}/in/part-0.parquet"} and len(slices) == 3
    assert list(got.columns) == ["name", "geometry"]
    assert got["name"].tolist() == g["name"].tolist() and got.crs == g.crs
    with pytest.raises(InputNotFoundError, match="missing.parquet"):
        list_slices(cfg(f"{s3_bucket}/missing.parquet"))
    with pytest.raises(InputNotFoundError, match="no-such-bucket.*does not exist"):
        list_slices(cfg("s3://no-such-bucket-4242/a.parquet"))


def test_s3_geopackage_is_downloaded_once(tmp_path, s3_bucket, cache_dir, monkeypatch):
    g = sample()
    upload(write(g, str(tmp_path / "a.gpkg")), f"{s3_bucket}/a.gpkg")
    downloads: list[str] = []
    real = remote._download
    monkeypatch.setattr(remote, "_download", lambda u, d, s: (downloads.append(u), real(u, d, s)))
    slices, got = read_all(cfg(f"{s3_bucket}/a.gpkg"), target_rows=100)
    assert len(slices) == 3 and slices[0].size == os.path.getsize(tmp_path / "a.gpkg")
    assert downloads == [f"{s3_bucket}/a.gpkg"]
    assert_same_rows(got, g)
    assert [p for p in os.listdir(cache_dir)] and not any(
        ".tmp-" in n for _, _, names in os.walk(cache_dir) for n in names
    )


def test_s3_shapefile_with_sidecars_and_csv(tmp_path, s3_bucket, cache_dir):
    g = sample()
    write(g, str(tmp_path / "roads.shp"))
    for ext in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
        if (tmp_path / f"roads{ext}").exists():
            upload(str(tmp_path / f"roads{ext}"), f"{s3_bucket}/shp/roads{ext}")
    slices, got = read_all(cfg(f"{s3_bucket}/shp/roads.shp"), target_rows=100)
    assert {os.path.basename(u) for u in slices[0].sidecars} >= {
        "roads.shx",
        "roads.dbf",
        "roads.prj",
    }
    assert_same_rows(got, g)
    assert got["name"].tolist() == g["name"].tolist()
    df = csv_frame()
    storage.write_bytes(f"{s3_bucket}/pts.csv", df.to_csv(index=False).encode())
    _, pts = read_all(cfg(f"{s3_bucket}/pts.csv", lonlat_cols=("lon", "lat")), target_rows=50)
    assert pts["name"].tolist() == df["name"].tolist()


# --- bad inputs --------------------------------------------------------------------------------


def test_missing_input(tmp_path):
    missing = str(tmp_path / "nope.parquet")
    with pytest.raises(InputNotFoundError, match="nope.parquet.*does not exist") as info:
        list_slices(cfg(missing))
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(InputNotFoundError, match="nope"):
        read_input(cfg([str(tmp_path / "nope")]))


def test_unsupported_suffix_and_scheme(tmp_path):
    (tmp_path / "in.xyz").write_text("hello")
    with pytest.raises(
        UnsupportedInputError, match=r"in\.xyz.*unknown file type.*\.parquet.*\.gpkg"
    ):
        list_slices(cfg(str(tmp_path / "in.xyz")))
    with pytest.raises(UnsupportedInputError, match="gs"):
        list_slices(cfg("gs://bucket/in.parquet"))


@pytest.mark.parametrize("suffix", [".parquet", ".gpkg", ".fgb"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(IngestInputError, match=f"bad\\{suffix}") as info:
        list_slices(cfg(str(path)))
    text = str(info.value)
    assert "not a valid Parquet file" in text if suffix == ".parquet" else "not recognized" in text


def test_truncated_parquet(tmp_path):
    path = write(sample(), str(tmp_path / "cut.parquet"))
    data = (tmp_path / "cut.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestInputError, match="cut.parquet.*corrupt or truncated"):
        list_slices(cfg(path))


def test_corrupt_row_group_names_file_and_slice(tmp_path):
    g = sample(400)
    path = str(tmp_path / "pages.parquet")
    g.to_parquet(path, row_group_size=200, compression="snappy")
    slices = list_slices(cfg(path), target_rows=200)
    col = pq.ParquetFile(path).metadata.row_group(1).column(3)  # geometry of group 1
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    data = bytearray((tmp_path / "pages.parquet").read_bytes())
    data[start + 40 : start + col.total_compressed_size // 2] = b"\xff" * (
        col.total_compressed_size // 2 - 40
    )
    (tmp_path / "pages.parquet").write_bytes(bytes(data))
    assert len(read_slice(slices[0], cfg(path))) == 200
    with pytest.raises(
        IngestInputError, match=r"slice 1 \(row groups 1-1\) of .*pages\.parquet: OSError"
    ):
        read_slice(slices[1], cfg(path))


def test_empty_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestInputError, match="no input files in folder.*empty"):
        list_slices(cfg(str(tmp_path / "empty")))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.csv").write_text("x,y\n")
    with pytest.raises(IngestInputError, match=r"no input files.*file_suffix='\.parquet'.*a\.csv"):
        list_slices(cfg(str(tmp_path / "other"), file_suffix=".parquet"))
    with pytest.raises(IngestInputError, match=r"no rows.*a\.csv"):
        list_slices(cfg(str(tmp_path / "other" / "a.csv"), lonlat_cols=("x", "y")))
    zero = write(sample(0), str(tmp_path / "zero.parquet"))
    with pytest.raises(IngestInputError, match=r"no rows.*zero\.parquet"):
        list_slices(cfg(zero))
    zero_gpkg = write(sample(1).iloc[:0], str(tmp_path / "zero.gpkg"))
    with pytest.raises(IngestInputError, match="no rows"):
        read_input(cfg(zero_gpkg))
    nonzero = write(sample(3), str(tmp_path / "three.parquet"))
    assert sum(s.num_rows for s in list_slices(cfg([zero, nonzero]))) == 3


def test_missing_columns_name_the_columns_there_are(tmp_path):
    pq_path = write(sample(), str(tmp_path / "a.parquet"))
    csv_path = str(tmp_path / "a.csv")
    csv_frame().to_csv(csv_path, index=False)
    gpkg = write(sample(), str(tmp_path / "a.gpkg"))
    for path in (pq_path, csv_path, gpkg):
        with pytest.raises(
            IngestInputError,
            match=r"lonlat_cols names missing column\(s\) \['lng'.*has columns .*'rid'",
        ):
            list_slices(cfg(path, lonlat_cols=("lng", "lat")))
        with pytest.raises(
            IngestInputError, match=r"load_columns names missing.*\['nope'\].*'name'"
        ):
            list_slices(cfg(path, load_columns=["nope"], lonlat_cols=None))
    # read_slice checks too (a slice listed with another config)
    sl = list_slices(cfg(gpkg), target_rows=100)[0]
    with pytest.raises(
        IngestInputError, match=r"lonlat_cols names missing.*\['lng', 'lat'\].*'rid'"
    ):
        read_slice(sl, cfg(gpkg, lonlat_cols=("lng", "lat")))


def test_inputs_without_geometry(tmp_path):
    plain = str(tmp_path / "plain.parquet")
    pd.DataFrame({"a": [1, 2]}).to_parquet(plain)
    with pytest.raises(
        IngestInputError, match=r"plain\.parquet.*without geometry.*lonlat_cols.*\['a'\]"
    ):
        list_slices(cfg(plain))
    text = tmp_path / "plain.csv"
    text.write_text("a,b\n1,2\n")
    with pytest.raises(
        IngestInputError, match="CSV without geometry.*X_POSSIBLE_NAMES.*GEOM_POSSIBLE_NAMES"
    ):
        list_slices(cfg(str(text)))


def test_bad_lonlat_values_are_input_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("lon,lat\n1,2\nabc,3\n")
    config = cfg(str(path), lonlat_cols=("lon", "lat"))
    with pytest.raises(IngestInputError, match="non-numeric"):
        read_slice(list_slices(config)[0], config)


def test_ignore_chunk_error_turns_a_bad_file_into_a_failing_slice(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write(sample(100), str(folder / "a.parquet"), row_group_size=50)
    (folder / "b.parquet").write_bytes(b"PAR1 broken")
    (folder / "c.geojson").write_text("{ not json")
    with pytest.raises(IngestInputError, match=r"b\.parquet"):
        list_slices(cfg(str(folder)))
    config = cfg(str(folder), ignore_chunk_error=True)
    slices = list_slices(config, target_rows=50)
    assert [(os.path.basename(s.url), s.error is None) for s in slices] == [
        ("a.parquet", True),
        ("a.parquet", True),
        ("b.parquet", False),
        ("c.geojson", False),
    ]
    assert sum(len(read_slice(s, config)) for s in slices[:2]) == 100
    for s, name in zip(slices[2:], ["b.parquet", "c.geojson"]):
        again = InputSlice.model_validate(s.model_dump(mode="json"))
        with pytest.raises(IngestInputError, match=name):
            read_slice(again, config)
    with pytest.raises(InputNotFoundError):
        list_slices(
            cfg([str(folder / "a.parquet"), str(folder / "gone.parquet")], ignore_chunk_error=True)
        )
