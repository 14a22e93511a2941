"""The overlap plan of the join (``fused_celery.steps.overlap``): properties against brute force
geodesic distances, near the poles and across the antimeridian."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pyproj import Geod

from fused_celery.errors import StepInputError
from fused_celery.steps.overlap import (
    buffered_parts,
    check_buffer_distance,
    overlap_pairs,
    right_chunks_per_left,
)

GEOD = Geod(ellps="WGS84")

# centres anywhere, with extra weight on the poles and the antimeridian
lat = st.one_of(st.floats(-89.999, 89.999), st.floats(85.0, 89.999), st.floats(-89.999, -85.0))
lon = st.one_of(st.floats(-180.0, 180.0), st.floats(178.0, 180.0), st.floats(-180.0, -178.0))


@st.composite
def chunked_points(draw, max_chunks: int = 5):
    """Chunks of points near one another: a list of (n, 2) lon/lat arrays."""
    clat, clon = draw(lat), draw(lon)
    spread = draw(st.sampled_from([0.01, 0.2, 2.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    chunks = []
    for _ in range(draw(st.integers(1, max_chunks))):
        n = int(rng.integers(1, 6))
        la = np.clip(clat + rng.normal(0, spread, n), -89.9999, 89.9999)
        lo = (clon + rng.normal(0, spread, n) + 180.0) % 360.0 - 180.0
        chunks.append(np.column_stack([lo, la]))
    return chunks


def bounds_of(chunks) -> np.ndarray:
    return np.array([[c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()] for c in chunks])


def geodesic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic distances (m) of every point of ``a`` to every point of ``b``: (len a, len b)."""
    ax, ay = np.repeat(a[:, 0], len(b)), np.repeat(a[:, 1], len(b))
    bx, by = np.tile(b[:, 0], len(a)), np.tile(b[:, 1], len(a))
    _, _, dist = GEOD.inv(ax, ay, bx, by)
    return np.asarray(dist).reshape(len(a), len(b))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    left=chunked_points(),
    right=chunked_points(),
    distance=st.sampled_from([0.0, 1.0, 100.0, 5_000.0, 50_000.0, 400_000.0]),
    near=st.booleans(),
)
def test_no_pair_within_the_distance_is_missed(left, right, distance, near):
    if near:  # right chunks around the left ones, so that many pairs are close
        right = [c + np.array([0.0, 0.0]) for c in left] + right
    lb, rb = bounds_of(left), bounds_of(right)
    li, ri = overlap_pairs(lb, rb, distance)
    planned = set(zip(li.tolist(), ri.tolist()))
    for i, lc in enumerate(left):
        for j, rc in enumerate(right):
            if distance == 0.0:
                close = bool(  # same points, or bboxes touching
                    (lb[i, 0] <= rb[j, 2]) & (lb[i, 2] >= rb[j, 0])
                    & (lb[i, 1] <= rb[j, 3]) & (lb[i, 3] >= rb[j, 1])
                )  # fmt: skip
            else:
                close = bool((geodesic(lc, rc) <= distance).any())
            if close:
                assert (i, j) in planned, (i, j, lb[i], rb[j], distance)


@settings(max_examples=200, deadline=None)
@given(left=chunked_points(), right=chunked_points())
def test_without_a_buffer_exactly_the_intersecting_boxes(left, right):
    lb, rb = bounds_of(left), bounds_of(right)
    li, ri = overlap_pairs(lb, rb, 0.0)
    expected = {
        (i, j)
        for i in range(len(lb))
        for j in range(len(rb))
        if lb[i, 0] <= rb[j, 2] and lb[i, 2] >= rb[j, 0] and lb[i, 1] <= rb[j, 3]
        and lb[i, 3] >= rb[j, 1]
    }  # fmt: skip
    assert set(zip(li.tolist(), ri.tolist())) == expected


@settings(max_examples=300, deadline=None)
@given(
    clat=st.floats(-80.0, 80.0),
    clon=lon,
    distance=st.sampled_from([10.0, 1_000.0, 20_000.0]),
    bearing=st.sampled_from([0.0, 90.0, 180.0, 270.0]),
    gap=st.floats(1.05, 3.0),
)
def test_no_chunk_read_that_cannot_match(clat, clon, distance, bearing, gap):
    """A right point straight north/south/east/west of a left point (same meridian or parallel
    direction) is planned when within the distance and left out when ``gap`` times farther."""
    left = np.array([[clon, clat, clon, clat]])
    for factor, wanted in ((0.98, True), (gap, False)):
        x, y, _ = GEOD.fwd(clon, clat, bearing, distance * factor)
        right = np.array([[x, y, x, y]])
        got = len(overlap_pairs(left, right, distance)[0]) == 1
        if bearing in (90.0, 270.0) and not wanted:
            # east/west the geodesic bends poleward: the box may reach a little farther
            _, _, back = GEOD.inv(clon, clat, x, y)
            assume(back > 1.03 * distance)
        assert got is wanted, (factor, x, y)


def test_poles_and_antimeridian_parts():
    # a box at 89.99N reaches the pole within 10 km: every longitude
    parts, owner = buffered_parts([[10.0, 89.99, 10.0, 89.99]], 10_000.0)
    assert parts.tolist() == [[-180.0, pytest.approx(89.89, abs=0.01), 180.0, 90.0]]
    # a box at 179.99E grown by 5 km crosses +180: two parts, one each side
    parts, owner = buffered_parts([[179.99, 0.0, 179.99, 0.0]], 5_000.0)
    assert owner.tolist() == [0, 0] and parts[0, 2] == 180.0 and parts[1, 0] == -180.0
    assert -179.97 < parts[1, 2] < -179.96  # 5 km * 1.01 is 0.0457 degrees
    # so a point just across the antimeridian is planned, and one far west is not
    right = np.array([[-179.99, 0.0, -179.99, 0.0], [-170.0, 0.0, -170.0, 0.0]])
    assert right_chunks_per_left([[179.99, 0.0, 179.99, 0.0]], right, 5_000.0)[0].tolist() == [0]
    # a box given across the antimeridian (minx > maxx) meets boxes on both sides
    wrapped = [[179.0, -1.0, -179.0, 1.0]]
    right = np.array([[179.5, 0, 179.6, 0.1], [-179.5, 0, -179.4, 0.1], [0, 0, 1, 1]])
    assert right_chunks_per_left(wrapped, right, 0.0)[0].tolist() == [0, 1]
    # longitude reach grows with latitude: 1 km at 60N is about 2 km of longitude at the equator
    eq, _ = buffered_parts([[0.0, 0.0, 0.0, 0.0]], 1_000.0)
    north, _ = buffered_parts([[0.0, 60.0, 0.0, 60.0]], 1_000.0)
    assert north[0, 2] / eq[0, 2] == pytest.approx(1 / math.cos(math.radians(60)), rel=1e-3)


def test_nan_boxes_and_empty_inputs():
    nan = [math.nan] * 4
    li, ri = overlap_pairs([nan, [0, 0, 1, 1]], [[0.5, 0.5, 2, 2], nan], 100.0)
    assert li.tolist() == [1] and ri.tolist() == [0]
    assert [a.tolist() for a in right_chunks_per_left([[0, 0, 1, 1]], np.empty((0, 4)))] == [[]]
    assert right_chunks_per_left(np.empty((0, 4)), [[0, 0, 1, 1]]) == []


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "100", True, [1]])
def test_bad_buffer_distance(bad):
    with pytest.raises(StepInputError, match="buffer_distance"):
        check_buffer_distance(bad)
    assert check_buffer_distance(None) == 0.0 and check_buffer_distance(5) == 5.0
