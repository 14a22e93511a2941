"""Inputs of the join tests: points and small polygons, ingested into tables of several files and
chunks, and geopandas' ``sjoin`` pairs to compare with."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
from steps_tables import ingest_table, make_points


def make_polygons(n: int = 60, seed: int = 1, radius: float = 1.0) -> gpd.GeoDataFrame:
    """``n`` discs of ``radius`` degrees in [-10, 10]², columns ``pid`` and ``v``."""
    rng = np.random.default_rng(seed)
    centres = gpd.points_from_xy(rng.uniform(-10, 10, n), rng.uniform(-10, 10, n))
    return gpd.GeoDataFrame(
        {"pid": np.arange(n, dtype=np.int64), "v": rng.normal(size=n)},
        geometry=gpd.GeoSeries(centres).buffer(radius),
        crs="EPSG:4326",
    )


def join_inputs(tmp_path, n_points: int = 400, n_polygons: int = 60) -> tuple[str, str]:
    """``(left table of points, right table of polygons)`` URLs under ``tmp_path``."""
    left = ingest_table(make_points(n_points), str(tmp_path / "left"))
    right = ingest_table(make_polygons(n_polygons), str(tmp_path / "right"), 30, 10)
    return left, right


def pairs(frame, a: str = "uid", b: str = "pid") -> set[tuple[int, int]]:
    """The (left id, right id) pairs of a join's output (rows without a match left out)."""
    kept = frame[frame[b].notna()]
    return set(zip(kept[a].astype(int), kept[b].astype(int)))


def sjoin_pairs(points, polygons, distance: float | None = None) -> set[tuple[int, int]]:
    """geopandas' pairs: intersects, or every pair within ``distance`` metres in UTM."""
    if distance is None:
        return pairs(gpd.sjoin(points, polygons, predicate="intersects"))
    crs = "EPSG:32631"  # the data's centre (0, 0): UTM zone 31N, as the step chooses
    joined = gpd.sjoin(
        points.to_crs(crs), polygons.to_crs(crs), predicate="dwithin", distance=distance
    )
    return pairs(joined)
