"""``fused.types`` parameter types: coerced as the reference SDK does, in annotations of every
form, on both engines."""

from __future__ import annotations

import json
import typing

import compat_udfs as u
import geopandas as gpd
import pytest
import shapely

import fused_celery as fused
from fused_celery.coerce import (
    bounding_tile,
    to_bbox,
    to_bounds,
    to_tile_gdf,
    to_tile_xyz,
    to_viewport_gdf,
)
from fused_celery.errors import UdfRuntimeError

BOX = [0.0, 0.0, 2.0, 1.0]
GDF = gpd.GeoDataFrame(geometry=[shapely.box(*BOX)], crs="EPSG:4326")
GEOJSON = GDF.to_json()


def test_names_and_errors_in_fused_types() -> None:
    for name in ("Bbox", "Bounds", "Tile", "TileGDF", "ViewportGDF", "TileXYZ"):
        assert isinstance(getattr(fused.types, name), typing.TypeVar)
    assert fused.types.UdfRuntimeError is UdfRuntimeError  # the error classes stay there too
    assert fused.types.Bounds.__bound__ is list


@pytest.mark.parametrize("given", [BOX, tuple(BOX), json.dumps(BOX), GDF, GEOJSON, GDF.geometry])
def test_bounds_from_a_list_or_a_geodataframe(given: object) -> None:
    assert to_bounds(given) == BOX
    assert to_bbox(given).equals(shapely.box(*BOX))


def test_bounds_errors() -> None:
    with pytest.raises(ValueError, match="Expected 4 values for bounds, got 3"):
        to_bounds([1, 2, 3])
    with pytest.raises(ValueError, match="expected bounds"):
        to_bounds(5)


def test_tile_frames() -> None:
    tile = to_tile_gdf(u.LONDON)
    assert list(tile.columns) == ["x", "y", "z", "geometry"]
    assert tuple(tile.iloc[0][["x", "y", "z"]]) == (511, 340, 10)
    assert str(tile.crs) == "EPSG:4326"
    given = GDF.assign(x=1, y=2, z=3)
    assert to_tile_gdf(given) is given  # tile columns already there: kept as given
    viewport = to_viewport_gdf(u.LONDON)
    assert list(viewport.columns) == ["geometry"]
    assert list(viewport.total_bounds) == pytest.approx(u.LONDON)
    by_index = to_tile_gdf((511, 340, 10))
    assert by_index.geometry.iloc[0].contains(shapely.box(*u.LONDON))


def test_tile_xyz() -> None:
    assert tuple(to_tile_xyz(u.LONDON)) == (511, 340, 10)
    assert tuple(to_tile_xyz(to_tile_gdf(u.LONDON))) == (511, 340, 10)
    assert tuple(to_tile_xyz([5, 6, 7])) == (5, 6, 7)
    tile = to_tile_xyz(GDF)
    assert (tile.x, tile.y, tile.z) == tuple(bounding_tile(*BOX))
    assert tuple(bounding_tile(-180, -85, 180, 85)) == (0, 0, 0)


def test_same_as_the_reference_sdk_converters() -> None:
    """The SDK's own converters (``fused._udf.args``, pure functions) on the same inputs."""
    pytest.importorskip("fused")
    from fused._udf import args as ref

    for given in (BOX, GDF, json.dumps(BOX)):
        assert to_bounds(given) == ref.convert_to_bounds(given)
        assert to_bbox(given).equals(ref.convert_to_bbox(given))
    ref_view = ref.convert_to_tile_gdf(BOX, add_xyz=False)
    assert to_viewport_gdf(BOX).geometry.iloc[0].equals(ref_view.geometry.iloc[0])


def test_annotation_forms() -> None:
    code = (
        "from __future__ import annotations\n"
        "from typing import Optional\n\n"
        "def f(a: fused.types.Bounds, b: Optional[fused.types.Bbox] = None,\n"
        "      c: fused.types.TileXYZ | None = None, d: 'Bounds' = None):\n"
        "    return [a, b.wkt if b is not None else None, c and list(c), d]\n"
    )
    udf = fused.udf_from_code(code)  # `fused` is unbound: text annotations by their names
    got = udf(a=GDF, b=BOX, c=u.LONDON, d=GEOJSON, engine="local")
    assert got == [BOX, shapely.box(*BOX).wkt, [511, 340, 10], BOX]
    assert udf(a=BOX, engine="local")[1:] == [None, None, None]


def test_a_bad_value_names_the_parameter() -> None:
    with pytest.raises(UdfRuntimeError, match="argument 'bounds'.*Expected 4 values"):
        u.bounds_of(bounds=[1, 2, 3], engine="local")


def test_parameter_types_on_both_engines(engine: str) -> None:
    pool = u.bounds_of.map([BOX, GDF, GEOJSON, u.LONDON], engine=engine, max_retry=0)
    assert pool.results() == [BOX, BOX, BOX, u.LONDON]
    assert u.bbox_wkt.map([GDF], engine=engine).results() == [shapely.box(*BOX).wkt]
    assert u.tile_xyz.map([u.LONDON, GDF], engine=engine).results() == [
        [511, 340, 10],
        list(bounding_tile(*BOX)),
    ]
    assert u.viewport_columns.map([u.LONDON], engine=engine).results() == [
        ["geometry", "EPSG:4326"]
    ]
    frame = u.tile_frame.map([u.LONDON], engine=engine).collect()
    assert list(frame.index.names) == ["tile", None]
    assert list(frame.columns) == ["x", "y", "z", "geometry"]
    assert tuple(frame.iloc[0][["x", "y", "z"]]) == (511, 340, 10)
    default = u.bounds_of.map([{}], engine=engine).results()
    assert default == [None]
