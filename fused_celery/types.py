"""``fused.types``: the parameter types of Fused UDFs, and (as in the reference SDK) the error
classes (defined in :mod:`fused_celery.errors`).

Parameter types, as in the SDK: annotate a UDF parameter with one of them and the argument is
coerced on the worker (see :mod:`fused_celery.coerce`):

==============  ==========================================================================
``Bounds``      ``[minx, miny, maxx, maxy]`` (a list) from a list/tuple of 4 numbers, a
                GeoDataFrame (its total bounds), a shapely geometry or JSON text of either
``Bbox``        a shapely box polygon, from the same inputs
``Tile``        a GeoDataFrame in EPSG:4326 with ``x``, ``y``, ``z`` columns (the smallest
                web-mercator tile holding the bounds) and ``geometry``; from bounds or a
                GeoDataFrame (kept as given when it has ``x``, ``y``, ``z`` already)
``TileGDF``     the same as ``Tile``
``ViewportGDF`` a GeoDataFrame in EPSG:4326 of the bounds, without tile columns
``TileXYZ``     a tile ``(x, y, z)`` named tuple (``mercantile.Tile`` when mercantile is
                installed), from bounds, a GeoDataFrame, or 3 integers ``(x, y, z)``
==============  ==========================================================================

Like the SDK's, they are ``TypeVar`` objects bound to the type a UDF receives, so they work in
annotations, ``Optional[...]`` and ``X | None`` alike.
"""

from __future__ import annotations

from collections import namedtuple
from typing import TYPE_CHECKING, TypeVar

from fused_celery.errors import *  # noqa: F403
from fused_celery.errors import __all__ as _errors_all

if TYPE_CHECKING:  # the bounds are names only: nothing is imported at run time
    import geopandas as gpd
    import mercantile
    import shapely

Tile = TypeVar("Tile", bound="gpd.GeoDataFrame")
Bounds = TypeVar("Bounds", bound=list)
TileXYZ = TypeVar("TileXYZ", bound="mercantile.Tile")
TileGDF = TypeVar("TileGDF", bound="gpd.GeoDataFrame")
ViewportGDF = TypeVar("ViewportGDF", bound="gpd.GeoDataFrame")
Bbox = TypeVar("Bbox", bound="shapely.geometry.polygon.Polygon")

PARAMETER_TYPES: tuple[TypeVar, ...] = (Tile, Bounds, TileXYZ, TileGDF, ViewportGDF, Bbox)
"""Every parameter type above, for coercion by identity."""

XYZ = namedtuple("Tile", ["x", "y", "z"])
"""A web-mercator tile index, shaped like ``mercantile.Tile`` (used when mercantile is not
installed)."""

__all__ = [
    "Bbox",
    "Bounds",
    "Tile",
    "TileGDF",
    "TileXYZ",
    "ViewportGDF",
    "PARAMETER_TYPES",
    "XYZ",
    *_errors_all,
]
