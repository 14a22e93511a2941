"""The UDF and inputs of ``fused-celery demo``: buffer points by a radius in metres.

Each entry takes a longitude/latitude, buffers the point by ``radius_m`` metres in a local
azimuthal equidistant projection, and returns the buffer's geodesic area and perimeter, its
centroid and bounding box in WGS84.
"""

from __future__ import annotations

from typing import Any

import fused_celery as fused


@fused.udf
def buffered_point(lon: float, lat: float, radius_m: float = 1000.0) -> dict:
    """Geodesic area (km²), perimeter (km), centroid and bbox of a ``radius_m`` buffer."""
    import pyproj
    from shapely.geometry import Point
    from shapely.ops import transform

    local = pyproj.CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +units=m +ellps=WGS84")
    to_wgs84 = pyproj.Transformer.from_crs(local, "EPSG:4326", always_xy=True)
    circle = transform(to_wgs84.transform, Point(0.0, 0.0).buffer(radius_m, quad_segs=16))
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
