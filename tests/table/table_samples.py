"""Sample data shared by the table tests (``tests/table/``): chunks of small squares and points
with ids, grouped into files. The writer subprocess of ``test_table_write.py`` imports
:func:`make_files` from here too."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely

CHUNK_CENTERS = {"0": [(0.0, 0.0), (10.0, 10.0)], "1": [(20.0, 20.0), (30.0, -30.0)]}


def make_chunk(cx: float, cy: float, n: int, start: int, seed: int) -> gpd.GeoDataFrame:
    """n small squares and points around (cx, cy) with ids start..start+n-1."""
    rng = np.random.default_rng(seed)
    x, y = cx + rng.random(n), cy + rng.random(n)
    geoms = np.where(
        np.arange(n) % 2 == 0, shapely.box(x, y, x + 0.01, y + 0.02), shapely.points(x, y)
    )
    return gpd.GeoDataFrame(
        {
            "id": np.arange(start, start + n),
            "name": [f"r{i}" for i in range(start, start + n)],
            "value": rng.random(n),
        },
        geometry=geoms,
        crs="EPSG:4326",
    )


def make_files(n: int = 40) -> dict[str, list[gpd.GeoDataFrame]]:
    files, start, seed = {}, 0, 0
    for fid, centers in CHUNK_CENTERS.items():
        files[fid] = []
        for cx, cy in centers:
            files[fid].append(make_chunk(cx, cy, n, start, seed))
            start, seed = start + n, seed + 1
    return files
