"""Fixtures of the step tests: small input tables made with ``fused.ingest(...).run_local``."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
from steps_tables import ingest_table, make_points


@pytest.fixture
def points() -> gpd.GeoDataFrame:
    """400 points (see :func:`make_points`)."""
    return make_points()


@pytest.fixture
def table(tmp_path: Path, points: gpd.GeoDataFrame) -> str:
    """The URL of a table of :func:`points`: 2 files or more, chunks of at most 50 rows."""
    return ingest_table(points, str(tmp_path / "in"))
