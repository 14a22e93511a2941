"""Preparation (fused_celery.partition.prepare): columns, CRS, validity, explode, bounds,
subdivision, measures and centroids over in-memory GeoDataFrames."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import CRS

from fused_celery.errors import IngestInputError
from fused_celery.partition.prepare import (
    check_subdivide,
    ensure_geodataframe,
    frame_from_lonlat,
    prepare_frame,
)


def frame(geoms, crs="EPSG:4326", **cols) -> gpd.GeoDataFrame:
    data = {"a": np.arange(len(geoms)), **cols}
    return gpd.GeoDataFrame(data, geometry=list(geoms), crs=crs)


def test_columns_load_and_remove():
    g = frame([shapely.Point(0, 0)] * 3, b=["x", "y", "z"], c=[1.0, 2.0, 3.0])
    assert list(prepare_frame(g, load_columns=["b"]).frame.columns) == ["b", "geometry"]
    assert list(prepare_frame(g, remove_cols=["a", "c"]).frame.columns) == ["b", "geometry"]
    with pytest.raises(IngestInputError, match=r"load_columns .*\['nope'\]"):
        prepare_frame(g, load_columns=["nope"])
    with pytest.raises(IngestInputError, match="remove_cols"):
        prepare_frame(g, remove_cols=["nope"])
    with pytest.raises(IngestInputError, match="geometry column"):
        prepare_frame(g, remove_cols=["geometry"])


def test_reprojects_to_wgs84_and_reports_it():
    pts = [shapely.Point(2.35, 48.85), shapely.Point(-74.0, 40.7)]
    g = frame(pts).to_crs("EPSG:3857")
    p = prepare_frame(g)
    assert p.frame.crs.to_epsg() == 4326
    assert p.report.reprojected_from == "EPSG:3857"
    np.testing.assert_allclose(p.x, [2.35, -74.0], atol=1e-9)
    np.testing.assert_allclose(p.y, [48.85, 40.7], atol=1e-9)


def test_impossible_reprojection_names_the_crs():
    # An engineering CRS has no transformation to EPSG:4326.
    local = CRS.from_wkt(
        'ENGCRS["Local grid",EDATUM["site"],CS[Cartesian,2],AXIS["x",east,LENGTHUNIT["metre",1]],'
        'AXIS["y",north,LENGTHUNIT["metre",1]]]'
    )
    g = frame([shapely.Point(10, 10)], crs=local)
    with pytest.raises(IngestInputError, match="Local grid"):
        prepare_frame(g)


def test_no_crs_degrees_are_taken_as_wgs84_and_metres_are_an_error():
    p = prepare_frame(frame([shapely.Point(10, 10), shapely.Point(20, 5)], crs=None))
    assert p.frame.crs.to_epsg() == 4326 and "EPSG:4326" in p.report.notes[0]
    metres = frame([shapely.Point(500_000, 4_000_000), shapely.Point(600_000, 4_100_000)], None)
    with pytest.raises(IngestInputError, match="no CRS .* cannot be degrees"):
        prepare_frame(metres)


def test_invalid_geometries_are_made_valid_and_counted():
    bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    p = prepare_frame(frame([bowtie, shapely.box(0, 0, 1, 1)]))
    assert p.report.made_valid == 1
    assert shapely.is_valid(np.asarray(p.frame.geometry.array)).all()
    assert p.measure.tolist() == [1.0, 1.0]  # rows


def test_explode_geometries():
    mp = shapely.MultiPoint([(0, 0), (1, 1), (2, 2)])
    g = frame([mp, shapely.Point(5, 5)])
    assert len(prepare_frame(g).frame) == 2
    p = prepare_frame(g, explode_geometries=True)
    assert p.frame["a"].tolist() == [0, 0, 0, 1]
    assert p.report.exploded_rows_added == 2
    assert set(shapely.get_type_id(np.asarray(p.frame.geometry.array)).tolist()) == {0}


def test_out_of_bounds_dropped_by_default_kept_when_asked():
    g = frame([shapely.Point(0, 0), shapely.Point(200, 0), shapely.Point(0, -95)])
    p = prepare_frame(g)
    assert p.frame["a"].tolist() == [0] and p.report.dropped_out_of_bounds == 2
    assert len(prepare_frame(g, drop_out_of_bounds=False).frame) == 3
    nan = frame([shapely.Point(0, 0), shapely.Point(np.nan, 1)])
    assert prepare_frame(nan).report.dropped_out_of_bounds == 1
    with pytest.raises(IngestInputError, match="non-finite"):
        prepare_frame(nan, drop_out_of_bounds=False)
    with pytest.raises(IngestInputError, match="no rows left"):
        prepare_frame(frame([shapely.Point(0, 100)]))


def test_empty_and_null_inputs_are_errors():
    with pytest.raises(IngestInputError, match="no rows"):
        prepare_frame(frame([]))
    with pytest.raises(IngestInputError, match="no rows"):
        prepare_frame(frame([None, shapely.Point()]))
    p = prepare_frame(frame([None, shapely.Point(1, 1)]))
    assert p.frame["a"].tolist() == [1] and p.report.dropped_null_geometries == 1
    with pytest.raises(IngestInputError, match="GeoDataFrame"):
        prepare_frame(pd.DataFrame({"a": [1]}))  # type: ignore[arg-type]


def test_measures_and_centroids():
    geoms = [shapely.box(0, 0, 2, 1), shapely.LineString([(0, 0), (3, 4)]), shapely.Point(7, 8)]
    g = frame(geoms)
    assert prepare_frame(g, partitioning_method="area").measure.tolist() == [2.0, 0.0, 0.0]
    length = prepare_frame(g, partitioning_method="length").measure
    np.testing.assert_allclose(length, [6.0, 5.0, 0.0])
    assert prepare_frame(g, partitioning_method="coords").measure.tolist() == [5.0, 2.0, 1.0]
    p = prepare_frame(g)
    assert p.measure.tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(np.c_[p.x, p.y], [[1, 0.5], [1.5, 2], [7, 8]])
    with pytest.raises(ValueError, match="partitioning_method"):
        prepare_frame(g, partitioning_method="volume")  # type: ignore[arg-type]


def test_subdivide_rules():
    assert check_subdivide(None, None) is None
    assert check_subdivide(4, None) == (4.0, 4.0)
    assert check_subdivide(None, 2) == (2.0, 2.0)
    assert check_subdivide(4, 1) == (4.0, 1.0)
    with pytest.raises(ValueError, match="subdivide_stop must be > 0"):
        check_subdivide(1, 0)
    with pytest.raises(ValueError, match=">= subdivide_stop"):
        check_subdivide(1, 2)
    with pytest.raises(ValueError, match="subdivide_method"):
        check_subdivide(1, 1, None)


@settings(max_examples=40, deadline=None)
@given(
    w=st.floats(0.5, 20),
    h=st.floats(0.5, 20),
    start=st.floats(0.5, 50),
    ratio=st.floats(0.05, 1.0),
    hole=st.booleans(),
)
def test_subdivide_pieces_cover_the_geometry(w, h, start, ratio, hole):
    stop = start * ratio
    poly = shapely.box(0, 0, w, h)
    if hole:
        poly = poly.difference(shapely.box(w / 4, h / 4, w / 2, h / 2))
    g = frame([poly, shapely.Point(0.1, 0.1)], tag=["big", "point"])
    p = prepare_frame(g, subdivide_start=start, subdivide_stop=stop, partitioning_method="area")
    pieces = p.frame[p.frame["tag"] == "big"]
    areas = shapely.area(np.asarray(pieces.geometry.array))
    if poly.area > start:
        assert p.report.subdivided_rows == 1
        assert (areas <= stop * (1 + 1e-9)).all()
        assert len(pieces) >= 2
    else:
        assert len(pieces) == 1
    assert areas.sum() == pytest.approx(poly.area, rel=1e-9)
    assert p.frame["tag"].tolist()[-1] == "point"  # row order and attributes kept
    assert shapely.union_all(np.asarray(pieces.geometry.array)).symmetric_difference(
        poly
    ).area == pytest.approx(0.0, abs=1e-9)


def test_lonlat_frames():
    df = pd.DataFrame({"lon": [1.0, 2.0], "lat": [3.0, 4.0], "v": ["a", "b"]})
    g = frame_from_lonlat(df, "lon", "lat")
    assert g.crs.to_epsg() == 4326 and g.geometry.x.tolist() == [1.0, 2.0]
    assert ensure_geodataframe(df, ("lon", "lat"))["v"].tolist() == ["a", "b"]
    with pytest.raises(IngestInputError, match="missing column"):
        frame_from_lonlat(df, "x", "lat")
    with pytest.raises(IngestInputError, match="non-numeric"):
        frame_from_lonlat(df.assign(lon=["1", "east"]), "lon", "lat")
    with pytest.raises(IngestInputError, match="NaN"):
        frame_from_lonlat(df.assign(lat=[1.0, np.nan]), "lon", "lat")
    with pytest.raises(IngestInputError, match="lonlat_cols"):
        ensure_geodataframe(df)
    with pytest.raises(IngestInputError, match="cannot ingest"):
        ensure_geodataframe([1, 2])
