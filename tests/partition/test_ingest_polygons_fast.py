"""The polygons fast path of the ingest's prepare stage (stage_prepare._polygons_fast, reading
rings from WKB with fused_celery.partition.wkb_polygons): the same table as the general path,
and the general path for whatever it does not take."""

from __future__ import annotations

import warnings

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

import fused_celery as fused
from fused_celery.partition import stage_prepare
from fused_celery.partition.ring_shapes import ring_bounds, ring_measures
from fused_celery.partition.runners import run_ingest
from fused_celery.partition.wkb_polygons import single_ring_polygons
from fused_celery.table import read_chunk_metadata


def polygons(n: int, seed: int = 0) -> gpd.GeoDataFrame:
    """``n`` valid single-ring polygons: octagons star-shaped around their centre, some
    L-shapes (valid, not proven from coordinates: GEOS decides) and boxes."""
    rng = np.random.default_rng(seed)
    centres = np.column_stack([rng.uniform(-170, 170, n), rng.uniform(-80, 80, n)])
    geoms = []
    for i, (cx, cy) in enumerate(centres):
        size = 10.0 ** rng.uniform(-4, -1)
        if i % 10 == 3:
            pts = [(0, 0), (4, 0), (4, 1), (1, 1), (1, 4), (0, 4)]
            geoms.append(shapely.Polygon([(cx + size * a, cy + size * b) for a, b in pts]))
        elif i % 10 == 7:
            geoms.append(shapely.box(cx, cy, cx + size, cy + 2 * size))
        else:
            angles = np.linspace(0, 2 * np.pi, 9)[:-1] + rng.uniform(0, 0.7, 8)
            r = size * rng.uniform(0.3, 1.0, 8)
            geoms.append(shapely.Polygon(np.c_[cx + r * np.cos(angles), cy + r * np.sin(angles)]))
    return gpd.GeoDataFrame(
        {"uid": np.arange(n, dtype=np.int64), "v": rng.normal(size=n),
         "cat": rng.choice(["a", "b", "c"], n)},
        geometry=geoms, crs="EPSG:4326",
    )  # fmt: skip


@pytest.fixture
def fast_calls(monkeypatch):
    """What _polygons_fast returned, per call: True (taken) or False (general path)."""
    calls: list[bool] = []
    real = stage_prepare._polygons_fast

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(stage_prepare, "_polygons_fast", spy)
    return calls


@pytest.mark.parametrize("method", ["area", "coords"])
def test_polygons_fast_path_matches_the_general_path(tmp_path, monkeypatch, fast_calls, method):
    """GeoParquet polygons skip geometry decoding; the table (rows, chunk metadata to the last
    bit) equals the one the general path makes of the same file, out-of-bounds rows dropped
    and rows past the bounds by rounding clamped in both."""
    src = polygons(1200, seed=3)
    src.loc[5, "geometry"] = shapely.box(179.5, 0, 181, 1)  # out of bounds: dropped
    src.loc[6, "geometry"] = shapely.box(179.5, 0, 180 + 1e-12, 1)  # clamped
    src.to_parquet(tmp_path / "in.parquet")
    geoms = src.geometry.to_numpy()
    total = {"area": shapely.area, "length": shapely.length, "coords": shapely.get_num_coordinates}
    per = float(total[method](geoms).sum()) if method in total else len(src)
    opts = {"partitioning_method": method, "partitioning_maximum_per_chunk": per / 20,
            "partitioning_maximum_per_file": per / 4}  # fmt: skip
    tables = {}
    for name in ("fast", "general"):
        if name == "general":  # the same file through the general path
            monkeypatch.setattr(stage_prepare, "_polygons_fast", lambda *a, **k: None)
        with pytest.warns(UserWarning, match="1 outside the WGS84 bounds"):
            job = fused.ingest(str(tmp_path / "in.parquet"), **opts)
            tables[name] = run_ingest(job, str(tmp_path / name))
    assert fast_calls and all(fast_calls)  # the fast path was taken, every slice
    fast, slow = tables["fast"], tables["general"]
    assert fast.num_rows == slow.num_rows == 1199
    a, b = read_chunk_metadata(fast.url), read_chunk_metadata(slow.url)
    assert [m.model_dump() for m in a] == [m.model_dump() for m in b]
    fa, fb = fast.get_dataframe(), slow.get_dataframe()
    assert fa.to_wkb().equals(fb.to_wkb())  # same rows, same order, same bytes
    assert fast.ingest_report == slow.ingest_report
    assert fast.ingest_report["clamped_to_bounds"] == 1


@pytest.mark.parametrize(
    ("odd", "told"),
    [
        (shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)]), "repaired 1"),  # invalid
        (shapely.box(0, 0, 4, 4).difference(shapely.box(1, 1, 2, 2)), None),  # a hole
        (shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(3, 3, 4, 4)]), None),
        (shapely.Point(1, 1), None),
        (None, "dropped 1"),
    ],
    ids=["bowtie", "hole", "multi", "point", "null"],
)
def test_other_rows_take_the_general_path(tmp_path, fast_calls, odd, told):
    src = polygons(200, seed=1)
    src.loc[7, "geometry"] = odd
    src.to_parquet(tmp_path / "in.parquet")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        table = run_ingest(fused.ingest(str(tmp_path / "in.parquet")), str(tmp_path / "a"))
    assert fast_calls == [False]
    messages = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
    assert [told in m for m in messages] == ([True] if told else [])
    assert table.num_rows == (199 if odd is None else 200)
    assert table.ingest_report["made_valid"] == (1 if told == "repaired 1" else 0)


def test_unreadable_wkb_gets_the_general_paths_error(tmp_path, fast_calls):
    """A ring GEOS cannot read (not closed) is not taken by the fast path: the ingest fails
    with the general path's typed error naming the slice, and writes no table."""
    import json
    import struct

    import pyarrow.parquet as pq

    from fused_celery.errors import IngestInputError

    def wkb(pts):
        head = struct.pack("<BIII", 1, 3, 1, len(pts))
        return head + b"".join(struct.pack("<dd", *p) for p in pts)

    rows = [wkb([(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)])] * 20
    rows[3] = wkb([(0, 0), (1, 0), (1, 1), (0, 1)])  # not closed
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}}}  # fmt: skip
    table = pa.table({"i": np.arange(20), "geometry": pa.array(rows, pa.binary())})
    pq.write_table(table.replace_schema_metadata({"geo": json.dumps(geo)}), tmp_path / "in.parquet")
    with pytest.raises(IngestInputError, match="cannot read slice 0 .*closed linestring"):
        run_ingest(fused.ingest(str(tmp_path / "in.parquet")), str(tmp_path / "out"))
    assert fast_calls == [False]
    assert not (tmp_path / "out").exists()


def wkb_column(geoms, **kwargs) -> pa.Array:
    return pa.array(shapely.to_wkb(np.asarray(geoms, dtype=object), flavor="iso", **kwargs))


def test_wkb_rings_are_the_coordinates():
    geoms = polygons(300, seed=5).geometry.to_numpy()
    col = wkb_column(geoms)
    for part in (col, col.slice(17, 100), pa.chunked_array([col[:50], col[50:]]),
                 col.cast(pa.large_binary())):  # fmt: skip
        got = single_ring_polygons(part)
        chosen = geoms[17:117] if len(part) == 100 else geoms
        xy, owner = shapely.get_coordinates(chosen, return_index=True)
        np.testing.assert_array_equal(np.c_[got.x, got.y], xy)
        np.testing.assert_array_equal(got.owner, owner)


@pytest.mark.parametrize(
    "column",
    [
        wkb_column([shapely.box(0, 0, 1, 1)], byte_order=0),  # big-endian
        wkb_column([shapely.Polygon([(0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 0, 1)])]),  # Z
        wkb_column([shapely.box(0, 0, 4, 4).difference(shapely.box(1, 1, 2, 2))]),
        wkb_column([shapely.MultiPolygon([shapely.box(0, 0, 1, 1)])]),
        wkb_column([shapely.Polygon()]),
        wkb_column([shapely.box(0, 0, 1, 1), shapely.LineString([(0, 0), (1, 1)])]),
        pa.array([shapely.box(0, 0, 1, 1).wkb, None]),
        pa.array([shapely.box(0, 0, 1, 1).wkb + b"\x00"]),  # trailing bytes
        pa.array([b"\x01\x03"]),  # truncated
        pa.array([], pa.binary()),
        pa.array(["not wkb"]),
    ],
    ids=[
        "big-endian",
        "z",
        "hole",
        "multi",
        "empty",
        "line",
        "null",
        "trailing",
        "short",
        "no rows",
        "string",
    ],  # fmt: skip
)
def test_wkb_rings_refuse_anything_else(column):
    assert single_ring_polygons(column) is None


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([0.0, 150.0, 1e6]))
def test_ring_measures_are_geos_to_the_bit(seed: int, offset: float):
    rng = np.random.default_rng(seed)
    geoms = []
    for _ in range(40):
        k = int(rng.integers(3, 30))
        pts = offset + 10.0 ** rng.uniform(-6, 2) * rng.normal(size=(k, 2))
        geoms.append(shapely.Polygon(pts))  # any ring, simple or not
    geoms = np.asarray(geoms, dtype=object)
    rings = single_ring_polygons(wkb_column(geoms))
    area, length = ring_measures(rings)
    np.testing.assert_array_equal(area, shapely.area(geoms))
    np.testing.assert_array_equal(length, shapely.length(geoms))
    np.testing.assert_array_equal(ring_bounds(rings), shapely.bounds(geoms))
