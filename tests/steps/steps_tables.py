"""Small input tables for the step tests: random points, ingested into a few files and chunks."""

from __future__ import annotations

import geopandas as gpd
import numpy as np

import fused_celery as fused


def make_points(n: int = 400, seed: int = 0, crs: str = "EPSG:4326") -> gpd.GeoDataFrame:
    """``n`` points in [-10, 10]², columns ``uid`` (0..n-1) and ``v``."""
    rng = np.random.default_rng(seed)
    return gpd.GeoDataFrame(
        {"uid": np.arange(n, dtype=np.int64), "v": rng.normal(size=n)},
        geometry=gpd.points_from_xy(rng.uniform(-10, 10, n), rng.uniform(-10, 10, n)),
        crs=crs,
    )


def ingest_table(gdf: gpd.GeoDataFrame, url: str, per_file: int = 200, per_chunk: int = 50) -> str:
    """``gdf`` ingested (this process) into table ``url`` of several files and chunks."""
    from fused_celery.partition.runners import run_ingest

    job = fused.ingest(
        gdf, partitioning_maximum_per_file=per_file, partitioning_maximum_per_chunk=per_chunk
    )
    return run_ingest(job, url, engine=None).url
