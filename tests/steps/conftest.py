"""Fixtures of the step tests: small input tables made with ``fused.ingest(...).run_local``."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

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


@pytest.fixture
def points() -> gpd.GeoDataFrame:
    """400 points (see :func:`make_points`)."""
    return make_points()


@pytest.fixture
def table(tmp_path: Path, points: gpd.GeoDataFrame) -> str:
    """The URL of a table of :func:`points`: 2 files or more, chunks of at most 50 rows."""
    return ingest_table(points, str(tmp_path / "in"))
