"""Points within a distance of polygons from coordinate arrays (``steps.segment_distance`` and
``join_frames.point_dwithin_pairs``): exactly GEOS's pairs (``STRtree`` ``dwithin``; and
``intersects`` for ``point_pairs`` with the discs), points placed at the distance from edges and
vertices included, at metric coordinates' magnitudes; each shortcut (the discs, the edge
distances) never contradicts GEOS; polygons it cannot serve go to the tree."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from fused_celery.steps.join_frames import (
    concat_boundaries,
    pairs,
    point_dwithin_pairs,
    point_pairs,
    polygon_boundaries,
)
from fused_celery.steps.segment_distance import (
    MAX_EDGES,
    disc_test,
    padded_edges,
    polygon_discs,
    scale_of,
    tolerance,
    within_distance,
)


def polygon(kind: str, rng: np.random.Generator, cx: float, cy: float, r: float):
    if kind == "disc":
        return shapely.Point(cx, cy).buffer(r, quad_segs=int(rng.integers(1, 12)))
    if kind == "hull":
        return shapely.MultiPoint(rng.normal([cx, cy], r, (8, 2))).convex_hull.buffer(0)
    if kind == "holed":
        outer = shapely.Point(cx, cy).buffer(r, quad_segs=4)
        return outer.difference(shapely.Point(cx, cy).buffer(r / 2, quad_segs=3))
    if kind == "multi":
        a = shapely.Point(cx, cy).buffer(r / 3, quad_segs=3)
        b = shapely.box(cx + r / 2, cy, cx + r, cy + r / 3)
        return shapely.MultiPolygon([a, b])
    if kind == "concave":  # an L
        return shapely.Polygon(
            [(cx, cy), (cx + r, cy), (cx + r, cy + r / 4), (cx + r / 4, cy + r / 4),
             (cx + r / 4, cy + r), (cx, cy + r)]
        )  # fmt: skip
    return shapely.box(cx, cy, cx + r * rng.uniform(0.1, 2), cy + r * rng.uniform(0.1, 2))


KINDS = ["disc", "hull", "holed", "multi", "concave", "box"]


@st.composite
def layouts(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    origin = draw(st.sampled_from([(0.0, 0.0), (500_000.0, 5_000_000.0), (-2e6, 9e6)]))
    r = draw(st.sampled_from([5.0, 430.0]))
    distance = draw(st.sampled_from([0.25, 10.0, 100.0]))
    m = draw(st.integers(1, 25))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=m, max_size=m))
    centres = np.asarray(origin) + rng.uniform(0, 10 * r, (m, 2))
    rg = np.array([polygon(k, rng, x, y, r) for k, (x, y) in zip(kinds, centres)], dtype=object)
    n = draw(st.integers(0, 400))
    xy = np.asarray(origin) + rng.uniform(-r, 11 * r, (n, 2))
    # points at the distance: off vertices, off edge midpoints along the normal, on boundaries
    coords = shapely.get_coordinates(shapely.boundary(rg))
    k = min(len(coords) - 1, 120)
    picks = rng.integers(0, len(coords) - 1, k)
    a, b = coords[picks], coords[picks + 1]
    mid = (a + b) / 2
    normal = np.column_stack([b[:, 1] - a[:, 1], a[:, 0] - b[:, 0]])
    length = np.hypot(normal[:, 0], normal[:, 1])
    ok = length > 0
    normal = normal[ok] / length[ok, None]
    angle = rng.uniform(0, 2 * np.pi, k)
    off = np.column_stack([np.cos(angle), np.sin(angle)]) * distance
    extra = [a + off, mid[ok] + normal * distance, mid[ok] - normal * distance, a, mid]
    xy = np.concatenate([xy, *extra])
    return xy, rg, distance


def tree_pairs(xy, rg, distance):
    return pairs(shapely.points(xy), rg, distance)


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_the_pairs_are_exactly_geos(layout):
    xy, rg, distance = layout
    li, ri = point_dwithin_pairs(xy, rg, distance)
    ei, er = tree_pairs(xy, rg, distance)
    assert np.array_equal(li, ei) and np.array_equal(ri, er)
    # the boundaries of two groups of polygons (two right chunks) concatenated serve the same
    k = len(rg) // 2
    both = concat_boundaries(
        [polygon_boundaries(rg[:k]), polygon_boundaries(rg[k:])], [k, len(rg) - k]
    )
    li, ri = point_dwithin_pairs(xy, rg, distance, both)
    assert np.array_equal(li, ei) and np.array_equal(ri, er)


@settings(max_examples=100, deadline=None)
@given(layouts())
def test_points_in_polygons_with_the_discs_are_exactly_geos(layout):
    xy, rg, _ = layout  # points on vertices and edge midpoints among them
    li, ri = point_pairs(xy, rg, polygon_boundaries(rg))
    ei, er = pairs(shapely.points(xy), rg)
    assert np.array_equal(li, ei) and np.array_equal(ri, er)


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_each_shortcut_agrees_with_geos_distance(layout):
    xy, rg, distance = layout
    found = polygon_boundaries(rg)
    edges = padded_edges(found.segments, found.owners, len(rg))
    rows = np.repeat(np.arange(len(rg)), len(xy))
    px, py = np.tile(xy[:, 0], len(rg)), np.tile(xy[:, 1], len(rg))
    geos = shapely.distance(shapely.points(px, py), rg[rows])
    discs = polygon_discs(edges)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(discs, found.discs))
    tol = tolerance(scale_of(px, py, discs), distance)
    within, beyond = disc_test(px, py, discs, rows, distance, tol)
    assert not (within & beyond).any()
    assert (geos[within] <= distance).all() and (geos[beyond] > distance).all()
    sure, unsure = within_distance(px, py, edges, rows, distance, tol)
    boundary = shapely.distance(shapely.points(px, py), shapely.boundary(rg[rows]))
    assert (boundary[sure] <= distance).all()
    assert (boundary[~sure & ~unsure] > distance).all()


def test_padding_adds_no_distance_and_an_empty_polygon_is_never_within():
    rg = np.array([shapely.box(0, 0, 1, 1), shapely.Point(5, 5).buffer(1), shapely.Polygon()])
    found = polygon_boundaries(rg)
    edges = padded_edges(found.segments, found.owners, len(rg))
    assert edges.shape[:2] == (4, 3) and np.isnan(edges[:, 2]).all()
    px, py = np.array([1.5, 2.0, 2.0, 5.0]), np.array([0.5, 0.5, 0.5, 5.0])
    sure, unsure = within_distance(px, py, edges, np.array([0, 0, 2, 2]), 1.0, 1e-9)
    assert sure.tolist() == [True, False, False, False]
    assert unsure.tolist() == [False, True, False, False]  # exactly at the distance: GEOS decides
    li, ri = point_dwithin_pairs(np.column_stack([px, py]), rg, 1.0)
    assert list(zip(li.tolist(), ri.tolist())) == [(0, 0), (1, 0), (2, 0), (3, 1)]


def test_what_it_cannot_measure_goes_to_the_tree():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (300, 2))
    bowtie = shapely.Polygon([(10, 10), (40, 40), (40, 10), (10, 40)])
    many = shapely.Point(60, 60).buffer(20, quad_segs=MAX_EDGES)  # more edges than a row holds
    line = shapely.LineString([(0, 50), (100, 55)])
    found = polygon_boundaries(np.array([many]))
    assert padded_edges(found.segments, found.owners, 1) is None and found.discs is None
    for rg in ([bowtie, shapely.box(0, 0, 5, 5)], [many], [line, shapely.box(0, 0, 5, 5)]):
        rg = np.array(rg, dtype=object)
        li, ri = point_dwithin_pairs(xy, rg, 3.0)
        ei, er = tree_pairs(xy, rg, 3.0)
        assert np.array_equal(li, ei) and np.array_equal(ri, er) and len(li)


def test_a_point_at_the_centre_of_a_polygon_around_nothing_is_not_matched():
    """The centre of a ring's hole, or of an L's box, lies outside the polygon: its inner disc
    is negative and decides nothing (it once matched the centre point itself)."""
    ring = shapely.Point(0, 0).buffer(10, quad_segs=4).difference(shapely.Point(0, 0).buffer(5, 4))
    ell = shapely.Polygon([(0, 0), (8, 0), (8, 2), (2, 2), (2, 8), (0, 8)])
    rg = np.array([ring, ell], dtype=object)
    assert polygon_boundaries(rg).discs is not None
    xy = np.array([[0.0, 0.0], [4.0, 4.0]])  # the two box centres
    for distance in (0.0, 0.5, 2.5):
        li, ri = (
            point_pairs(xy, rg, polygon_boundaries(rg))
            if distance == 0
            else point_dwithin_pairs(xy, rg, distance)
        )
        ei, er = tree_pairs(xy, rg, distance) if distance else pairs(shapely.points(xy), rg)
        assert np.array_equal(li, ei) and np.array_equal(ri, er), distance
    li, ri = point_pairs(xy, rg, polygon_boundaries(rg))
    assert not ({(0, 0), (1, 1)} & set(zip(li.tolist(), ri.tolist())))  # neither its own centre
