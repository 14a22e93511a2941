"""UDFs in the style of the public Fused UDF catalogue, for the compatibility tests.

A ``bounds: fused.types.Bounds`` parameter with a default viewport, a ``@fused.cache`` helper,
a ``fused.submit`` fan-out. Each cached computation drops a marker file in ``work_dir`` so that
tests count computations across processes (local pool and Celery workers share the disk).
"""

from __future__ import annotations

import os
import uuid

import fused_celery as fused

LONDON = [-0.113, 51.503, -0.099, 51.513]


@fused.cache(cache_key_exclude=["work_dir"])
def box_area(bounds: list, work_dir: str) -> float:
    """The area of a box in square degrees, recording each computation."""
    import shapely

    with open(os.path.join(work_dir, f"computed-{uuid.uuid4().hex}"), "w") as fh:
        fh.write(repr(bounds))
    return round(shapely.box(*bounds).area, 12)


@fused.udf
def cached_area(
    bounds: fused.types.Bounds = LONDON, work_dir: str = "", folder: str = "tmp"
) -> float:
    return box_area(bounds, work_dir, cache_folder_path=folder)


@fused.udf
def bounds_of(bounds: fused.types.Bounds = None):
    return bounds


@fused.udf
def bbox_wkt(bbox: fused.types.Bbox = None):
    return bbox.wkt


@fused.udf
def tile_frame(tile: fused.types.Tile = None):
    return tile


@fused.udf
def viewport_columns(viewport: fused.types.ViewportGDF = None):
    return [str(c) for c in viewport.columns] + [str(viewport.crs)]


@fused.udf
def tile_xyz(tile: fused.types.TileXYZ = None):
    return [tile.x, tile.y, tile.z]


@fused.udf
def strip_area(bounds: fused.types.Bounds = LONDON, scale: float = 1.0):
    import shapely

    return shapely.box(*bounds).area * scale


@fused.udf
def fanned_area(bounds: fused.types.Bounds = LONDON, n: int = 3):
    """Splits the bounds into ``n`` strips and sums their areas with a fused.submit fan-out
    (the strips run on the local engine of whatever runs this UDF)."""
    minx, miny, maxx, maxy = bounds
    step = (maxx - minx) / n
    strips = [[minx + i * step, miny, minx + (i + 1) * step, maxy] for i in range(n)]
    frame = fused.submit(strip_area, strips, engine="local", max_workers=1)
    return float(frame["result"].sum())
