"""The UDF, inputs and result map of ``fused-celery demo``: buffer points by a radius in metres.

Each entry takes a longitude/latitude, buffers the point by ``radius_m`` metres in a local
azimuthal equidistant projection, and returns the buffer's geodesic area and perimeter, its
centroid and bounding box in WGS84. :func:`write_result_map` draws the collected result as an
offline HTML map (points coloured by radius).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import fused_celery as fused
from fused_celery.maps import MapFile, show_frame

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd


@fused.udf
def buffered_point(lon: float, lat: float, radius_m: float = 1000.0) -> dict:
    """Geodesic area (km²), perimeter (km), centroid and bbox of a ``radius_m`` buffer."""
    import pyproj
    import shapely

    local = pyproj.CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +units=m +ellps=WGS84")
    to_wgs84 = pyproj.Transformer.from_crs(local, "EPSG:4326", always_xy=True)
    circle = shapely.transform(
        shapely.Point(0.0, 0.0).buffer(radius_m, quad_segs=16),
        to_wgs84.transform,
        interleaved=False,
    )
    area, perimeter = pyproj.Geod(ellps="WGS84").geometry_area_perimeter(circle)
    minx, miny, maxx, maxy = circle.bounds
    return {
        "area_km2": round(abs(area) / 1e6, 6),
        "perimeter_km": round(perimeter / 1e3, 6),
        "centroid_lon": round(circle.centroid.x, 6),
        "centroid_lat": round(circle.centroid.y, 6),
        "bbox": [round(v, 6) for v in (minx, miny, maxx, maxy)],
    }


def sample_points(n: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` reproducible ``{"lon", "lat", "radius_m"}`` entries spread over the inhabited world.

    n: number of points (default 300). seed: random seed (default 0).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    lons = rng.uniform(-180.0, 180.0, n).round(4)
    lats = rng.uniform(-60.0, 70.0, n).round(4)
    radii = rng.choice([250.0, 500.0, 1000.0, 5000.0], n)
    return [
        {"lon": float(x), "lat": float(y), "radius_m": float(r)}
        for x, y, r in zip(lons, lats, radii, strict=True)
    ]


def result_frame(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """The demo's collected result (one row per entry, the arguments in the index or as
    columns) as points at each buffer's centroid in EPSG:4326, with a ``radius`` label such as
    ``"500 m"``; entries without a centroid (failed ones) are left out."""
    import geopandas as gpd

    flat = df.reset_index()
    flat = flat.dropna(subset=["centroid_lon", "centroid_lat"])
    if "radius_m" in flat:
        flat["radius"] = [f"{float(r):g} m" for r in flat["radius_m"]]
    geometry = gpd.points_from_xy(flat["centroid_lon"], flat["centroid_lat"])
    return gpd.GeoDataFrame(flat, geometry=geometry, crs="EPSG:4326")


def write_result_map(df: pd.DataFrame, path: str | os.PathLike[str] | None = None) -> MapFile:
    """Write the map of the demo's result ``df`` (see :func:`result_frame`) and return it.

    path: the HTML file (default ``<storage_root>/maps/demo.html``, see
    :func:`fused_celery.maps.show_frame`)."""
    frame = result_frame(df)
    return show_frame(
        frame,
        path,
        color_by="radius" if "radius" in frame else None,
        name="demo",
        title=f"fused-celery demo: {len(frame):,} buffered points",
    )
