"""Validity and centroids of single-ring polygons from coordinates
(fused_celery.partition.ring_shapes), against GEOS: a ring called simple is always valid for
GEOS, star-shaped rings are proven, and centroids equal GEOS's up to rounding."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from fused_celery.partition.prepare import centroids_xy, geometries_valid, prepare_frame
from fused_celery.partition.ring_shapes import ring_centroids, rings_of, surely_simple


def rings(polygons: list[shapely.Polygon]):
    geoms = np.asarray(polygons, dtype=object)
    xy, owner = shapely.get_coordinates(geoms, return_index=True)
    return rings_of(xy[:, 0], xy[:, 1], owner, len(geoms))


def star(rng: np.random.Generator, k: int, cx: float, cy: float, size: float, ccw: bool):
    """A polygon of ``k`` vertices at random radii, in angle order around (cx, cy)."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = size * rng.uniform(0.2, 1.0, k)
    pts = np.c_[cx + radii * np.cos(angles), cy + radii * np.sin(angles)]
    return shapely.Polygon(pts if ccw else pts[::-1])


def shuffled(rng: np.random.Generator, k: int, cx: float, cy: float, size: float):
    """Vertices in random order: mostly self-intersecting."""
    return shapely.Polygon(np.c_[cx, cy] + size * rng.uniform(-1, 1, (k, 2)))


def near_degenerate(rng: np.random.Generator, cx: float, cy: float, size: float):
    """Collinear, repeated, spiked or touching rings, and a ring through its own vertex mean."""
    e = size * 10.0 ** rng.integers(-16, -6)
    choices = [
        [(0, 0), (1, 0), (2, 0), (2, 1), (0, 1)],  # a collinear vertex
        [(0, 0), (1, 0), (1, 0), (1, 1), (0, 1)],  # a repeated vertex
        [(0, 0), (1, 0), (1, 1), (1 + e, 2), (1, 1 + e), (0, 1)],  # a spike
        [(0, 0), (2, 0), (1, 1), (2, 2), (0, 2), (1, 1)],  # touching itself
        [(0, 0), (1, e), (2, 0), (2, 1), (0, 1)],  # almost collinear
        [(0, 0), (1, 0), (0, 1), (1, 1)],  # a bowtie
        [(0, 0), (4, 0), (4, 1), (1, 1), (1, 4), (0, 4)],  # an L (vertex mean outside kernel)
        [(0, 0), (1, 0), (0.5, e)],  # a sliver
    ]
    pts = np.asarray(choices[int(rng.integers(len(choices)))], float)
    return shapely.Polygon(np.c_[cx, cy] + size * pts)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    offset=st.sampled_from([0.0, 179.9, 1e6, 5e8]),
    size=st.sampled_from([1e-9, 1e-5, 1e-2, 1.0, 1e4]),
)
def test_rings_called_simple_are_valid_for_geos(seed: int, offset: float, size: float):
    rng = np.random.default_rng(seed)
    polys = []
    for _ in range(60):
        kind = rng.integers(4)
        cx, cy = offset + rng.uniform(-1, 1), -offset / 2 + rng.uniform(-1, 1)
        k = int(rng.integers(3, 40))
        if kind == 0:
            polys.append(star(rng, k, cx, cy, size, bool(rng.integers(2))))
        elif kind == 1:
            polys.append(shuffled(rng, k, cx, cy, size))
        elif kind == 2:
            polys.append(near_degenerate(rng, cx, cy, size))
        else:
            regular = shapely.Point(cx, cy).buffer(size, quad_segs=int(rng.integers(1, 16)))
            polys.append(regular)
    simple = surely_simple(rings(polys))
    valid = shapely.is_valid(np.asarray(polys, dtype=object))
    assert not (simple & ~valid).any(), [p.wkt for p, s, v in zip(polys, simple, valid) if s > v]


def test_star_shaped_rings_are_proven():
    rng = np.random.default_rng(7)
    polys = [shapely.Point(0, 0).buffer(1.0, quad_segs=q) for q in (1, 2, 8, 16)]
    polys += [shapely.box(10, 10, 10.001, 10.002), shapely.box(-180, -90, 180, 90)]
    polys += [shapely.box(0, 0, 1, 1).reverse()]  # clockwise
    # convex polygons are star-shaped around any inner point, their vertex mean among them
    for _ in range(200):
        hull = shapely.MultiPoint(rng.uniform(-50, 50, (12, 2))).convex_hull
        polys.append(hull)
    assert surely_simple(rings(polys)).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN ring
def test_not_proven_is_left_to_geos():
    bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    l_shape = shapely.Polygon([(0, 0), (4, 0), (4, 1), (1, 1), (1, 4), (0, 4)])
    repeated = shapely.Polygon([(0, 0), (1, 0), (1, 0), (1, 1), (0, 1)])
    nan = shapely.Polygon([(0, 0), (1, 0), (np.nan, 1), (0, 1)])
    twice = shapely.Polygon(  # the same star walked around twice
        [(np.cos(a), np.sin(a)) for a in np.linspace(0, 4 * np.pi, 11)[:-1]]
    )
    got = surely_simple(rings([bowtie, l_shape, repeated, nan, twice]))
    assert not got.any()
    # geometries_valid still gives GEOS's answer for each
    geoms = np.asarray([bowtie, l_shape, repeated, twice, shapely.box(0, 0, 1, 1)], dtype=object)
    np.testing.assert_array_equal(geometries_valid(geoms), shapely.is_valid(geoms))
    assert not surely_simple(rings_of(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), 0)).size
    # rings without coordinates (empty polygons), last or between others
    box = rings([shapely.box(0, 0, 1, 1)])
    three = rings_of(box.x, box.y, np.full(len(box.x), 1), 3)
    assert surely_simple(three).tolist() == [False, True, False]
    assert ring_centroids(three)[2].tolist() == [False, True, False]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    offset=st.sampled_from([0.0, 179.9, 1e6]),
    size=st.sampled_from([1e-5, 1e-2, 1.0, 1e3]),
)
def test_centroids_equal_geos(seed: int, offset: float, size: float):
    rng = np.random.default_rng(seed)
    polys = [
        star(rng, int(rng.integers(3, 30)), offset + rng.uniform(-1, 1), rng.uniform(-1, 1), size,
             bool(rng.integers(2)))
        if rng.integers(3) else shuffled(rng, int(rng.integers(3, 12)), offset, 0.0, size)
        for _ in range(50)
    ]  # fmt: skip
    cx, cy, ok = ring_centroids(rings(polys))
    c = shapely.centroid(np.asarray(polys, dtype=object))
    area = shapely.area(np.asarray(polys, dtype=object))
    assert ok[area > 0].all()
    # a centroid is a sum of triangle moments over the area; GEOS sums them in absolute
    # coordinates: the rounding error is relative to the coordinates' magnitude, and grows as
    # the signed areas cancel (area << extent²)
    magnitude = abs(offset) + 1.0 + size
    tol = 1e-12 * magnitude * (1 + size**2 / np.maximum(area, 1e-300))
    assert (np.abs(cx - shapely.get_x(c))[ok] <= tol[ok]).all()
    assert (np.abs(cy - shapely.get_y(c))[ok] <= tol[ok]).all()


def test_centroids_of_other_geometries_are_geos():
    geoms = np.asarray(
        [
            shapely.box(0, 0, 2, 1),
            shapely.Polygon([(0, 0), (1, 0), (2, 0), (0, 0)]),  # zero area: GEOS's line centroid
            shapely.box(0, 0, 4, 4).difference(shapely.box(1, 1, 2, 2)),  # a hole
            shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(5, 5, 6, 7)]),
            shapely.LineString([(0, 0), (3, 4)]),
            shapely.Point(7, 8),
        ],
        dtype=object,
    )
    x, y = centroids_xy(geoms)
    c = shapely.centroid(geoms)
    np.testing.assert_allclose(np.c_[x, y], np.c_[shapely.get_x(c), shapely.get_y(c)], atol=1e-12)


def test_prepare_frame_matches_geos_only_preparation():
    """prepare_frame's repairs, centroids and measures are those of GEOS alone."""
    rng = np.random.default_rng(3)
    geoms = [star(rng, 8, rng.uniform(-170, 170), rng.uniform(-80, 80), 0.01, True)
             for _ in range(300)]  # fmt: skip
    geoms += [shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])] * 3  # bowties: repaired
    geoms += [shapely.box(0, 0, 4, 4).difference(shapely.box(1, 1, 2, 2)), shapely.Point(1, 2)]
    frame = gpd.GeoDataFrame({"i": np.arange(len(geoms))}, geometry=geoms, crs=4326)
    p = prepare_frame(frame, partitioning_method="area")
    arr = np.asarray(geoms, dtype=object)
    invalid = ~shapely.is_valid(arr)  # the bowties and stars with an angular gap over 180°
    assert p.report.made_valid == int(invalid.sum()) >= 3
    fixed = arr.copy()
    fixed[invalid] = shapely.make_valid(arr[invalid])
    c = shapely.centroid(fixed)
    np.testing.assert_allclose(p.x, shapely.get_x(c), rtol=0, atol=1e-9)
    np.testing.assert_allclose(p.y, shapely.get_y(c), rtol=0, atol=1e-9)
    np.testing.assert_allclose(p.measure, shapely.area(fixed))
