"""Table facts (``fused_celery.table.facts``): chunk metadata from geometries, chunk-bbox
intersection, evenly spaced samples, geometry types."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from fused_celery.table.facts import (
    RowFacts,
    chunks_intersecting,
    compute_chunk_metadata,
    evenly_spaced,
    geometry_types,
)

# --- chunk metadata ------------------------------------------------------------------------------


def test_compute_chunk_metadata_measures_in_wgs84():
    geoms = np.array(
        [
            shapely.box(0, 0, 2, 1),
            shapely.LineString([(5, 5), (5, 8)]),
            shapely.Point(-1, 3),
            None,
            shapely.Polygon(),
        ],
        dtype=object,
    )
    m = compute_chunk_metadata("7", 3, geoms)
    assert (m.file_id, m.chunk_id, m.num_rows) == ("7", 3, 5)
    assert m.bbox == (-1.0, 0.0, 5.0, 8.0)
    assert m.sum_area == pytest.approx(2.0)
    assert m.sum_length == pytest.approx(6.0 + 3.0)
    assert m.num_coords == 5 + 2 + 1
    empty = compute_chunk_metadata("0", 0, np.array([None], dtype=object))
    assert all(math.isnan(v) for v in empty.bbox) and empty.num_rows == 1


def test_chunks_metadata_equals_per_chunk_metadata():
    """The vectorised metadata of consecutive chunks equals each chunk's own, nulls included."""
    rng = np.random.default_rng(1)
    mixed = [shapely.box(0, 0, 1, 2), None, shapely.LineString([(0, 0), (3, 4)])] * 5
    geoms = np.array([shapely.Point(rng.random(2)) for _ in range(50)] + mixed, dtype=object)
    facts = RowFacts.of(geoms)
    offsets = [0, 10, 30, 31, 40, len(geoms)]
    together = facts.chunks_metadata("3", offsets)
    one_by_one = [
        facts.take(slice(a, b)).chunk_metadata("3", k)
        for k, (a, b) in enumerate(zip(offsets[:-1], offsets[1:]))
    ]
    assert [m.model_dump() for m in together] == [m.model_dump() for m in one_by_one]
    assert together[3].num_rows == 9 and together[-1].num_rows == len(geoms) - 40


def test_row_facts_keep_each_bounds_column_contiguous_whatever_they_are_given():
    """Bounds given row-major (shapely's layout) keep their values and become column-major;
    take, concat and clamped keep every column contiguous (Arrow then takes it as it is)."""
    b = np.arange(24, dtype=np.float64).reshape(6, 4)
    n = len(b)
    facts = RowFacts(b, np.zeros(n), np.zeros(n), np.ones(n, np.int64),
                     np.zeros(n, np.int8), np.zeros(n, bool))  # fmt: skip
    derived = [
        facts,
        facts.take(slice(1, 4)),
        facts.take(np.array([5, 0, 2])),
        RowFacts.concat([facts.take(slice(0, 2)), facts.take(np.array([4]))]),
        facts.clamped((0.0, 0.0, 10.0, 10.0), 1e-9)[0],
    ]
    expected = [b, b[1:4], b[[5, 0, 2]], b[[0, 1, 4]], b]
    for got, want in zip(derived, expected):
        assert got.bounds.strides[0] == 8  # each column contiguous
        np.testing.assert_array_equal(got.bounds, want)


# --- bboxes and samples --------------------------------------------------------------------------


def test_chunks_intersecting_edges_and_nan():
    minx = np.array([0.0, 10.0, np.nan, 5.0])
    miny = np.array([0.0, 10.0, np.nan, 5.0])
    maxx = np.array([1.0, 11.0, np.nan, 6.0])
    maxy = np.array([1.0, 11.0, np.nan, 6.0])
    mask = chunks_intersecting(minx, miny, maxx, maxy, (1.0, 1.0, 5.0, 5.0))
    assert mask.tolist() == [True, False, False, True]  # touching edges count
    assert not chunks_intersecting(minx, miny, maxx, maxy, (100, 100, 101, 101)).any()


def test_evenly_spaced_and_geometry_types():
    assert evenly_spaced(3, 10).tolist() == [0, 1, 2]
    idx = evenly_spaced(1000, 5)
    assert idx.tolist() == [0, 250, 500, 749, 999]
    geoms = np.array(
        [
            shapely.Point(0, 0, 1),
            shapely.LinearRing([(0, 0), (1, 0), (1, 1)]),
            shapely.MultiPolygon([shapely.box(0, 0, 1, 1)]),
            None,
            shapely.Point(),
        ],
        dtype=object,
    )
    assert geometry_types(geoms) == ["LineString", "MultiPolygon", "Point Z"]
