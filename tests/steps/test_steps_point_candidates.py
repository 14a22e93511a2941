"""``steps.point_candidates.points_in_boxes``: the grid join of points with boxes gives exactly
the pairs a brute-force box test gives (edges included, NaN matching nothing), or None when one
grid cannot serve the boxes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fused_celery.steps.point_candidates import points_in_boxes


def brute(x, y, boxes) -> set[tuple[int, int]]:
    out = set()
    for j, (x0, y0, x1, y1) in enumerate(boxes):
        with np.errstate(invalid="ignore"):
            hit = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        out.update((int(i), j) for i in np.flatnonzero(hit))
    return out


@st.composite
def layouts(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, m = draw(st.integers(0, 300)), draw(st.integers(0, 60))
    scale = draw(st.sampled_from([1e-6, 0.01, 1.0, 1000.0]))
    x, y = rng.uniform(-scale, scale, n), rng.uniform(-scale, scale, n)
    cx, cy = rng.uniform(-scale, scale, m), rng.uniform(-scale, scale, m)
    w = rng.uniform(0, scale / draw(st.sampled_from([1, 5, 50])), m)
    h = w * rng.uniform(0.5, 2.0, m)
    boxes = np.column_stack([cx - w, cy - h, cx + w, cy + h])
    if n and m:  # points exactly on box edges and corners
        k = min(n, m)
        x[:k], y[: k // 2] = boxes[:k, 0], boxes[: k // 2, 3]
    if n and draw(st.booleans()):
        x[0] = np.nan
    if m and draw(st.booleans()):
        boxes[-1] = np.nan
    return x, y, boxes


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_the_grid_gives_exactly_the_brute_force_pairs(layout):
    x, y, boxes = layout
    got = points_in_boxes(x, y, boxes)
    if got is None:  # only for boxes of very different sizes among those reaching the points
        with np.errstate(invalid="ignore"):
            reach = (boxes[:, 2] >= np.nanmin(x)) & (boxes[:, 0] <= np.nanmax(x))
            reach &= (boxes[:, 3] >= np.nanmin(y)) & (boxes[:, 1] <= np.nanmax(y))
        b = boxes[reach]
        sides = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        assert np.nanmax(sides) > 2 * np.nanmedian(sides)
        return
    li, bi = got
    pairs = set(zip(li.tolist(), bi.tolist()))
    assert len(pairs) == len(li)  # no pair twice
    assert np.array_equal(np.lexsort((bi, li)), np.arange(len(li)))  # by point, then box
    assert pairs == brute(x, y, boxes)


def test_a_few_huge_boxes_among_small_ones_give_none():
    small = np.array([[i, 0, i + 0.1, 0.1] for i in range(10)], float)
    huge = np.array([[0, 0, 1000, 1000]] * 3, float)
    x = np.arange(10) + 0.05  # every box reaches the points
    assert points_in_boxes(x, np.full(10, 0.05), np.vstack([small, huge])) is None
    # boxes beyond the points' extent are left out before the grid is sized
    li, bi = points_in_boxes(np.array([0.05]), np.array([0.05]), np.vstack([small, huge]))
    assert sorted(zip(li.tolist(), bi.tolist())) == [(0, 0), (0, 10), (0, 11), (0, 12)]
    li, bi = points_in_boxes(np.array([0.05, 5.5]), np.array([0.05, 0.05]), small)
    assert sorted(zip(li.tolist(), bi.tolist())) == [(0, 0)]
