"""Which boxes hold which points: a uniform grid join of point coordinates with boxes.

Pure numpy (no I/O, no Celery, no GEOS): :func:`points_in_boxes` gives every ``(point, box)``
pair whose point lies in the box (edges included), from coordinate arrays, so a points-in-polygon
join needs no point geometries and no tree; the exact test then runs on these candidates only
(``shapely.intersects_xy`` on prepared polygons). Hand-written because shapely's STRtree takes
geometries (making a point object per row costs more than this whole join of boxes) and
geopandas' / dask-geopandas' joins go through that tree.

The grid's cell is the median box's longer side (half of it when there are many points a box),
so a typical box covers at most four (nine) cells and a point is in one cell: each box is listed
under the cells it covers, the points are looked up by cell (in a table of the cells, or by
``searchsorted`` for huge grids), and the pairs are filtered by the exact box test. Only boxes
reaching the points' extent are listed. A point and a box edge with the same coordinate fall in
the same cell (one formula for both), so no pair is lost to rounding. Boxes that would cover very
many cells (a few huge ones among small ones) make the grid a poor fit: :func:`points_in_boxes`
then returns None and the caller uses a tree.
"""

from __future__ import annotations

import numpy as np

__all__ = ["points_in_boxes"]

#: Grid cells all boxes may cover together, per box (beyond it the grid is a poor fit).
MAX_CELLS_PER_BOX = 16

#: Grids of at most this many cells look points up in a table of cells (else by binary search).
_DENSE_CELLS = 1 << 20


def points_in_boxes(
    x: np.ndarray, y: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(point positions, box positions)`` of the pairs where point ``(x[i], y[i])`` lies in
    box ``boxes[j]`` = (minx, miny, maxx, maxy), edges included; sorted by point, then box. Points
    or boxes with NaN coordinates match nothing. None when the boxes' sizes differ too much for
    one grid (more than :data:`MAX_CELLS_PER_BOX` cells a box on average)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    empty = np.empty(0, np.int64)
    with np.errstate(invalid="ignore"):
        ordered = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
    ok = np.isfinite(boxes).all(axis=1) & ordered
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return empty, empty
    fx, fy = x[finite], y[finite]
    # only boxes that reach the points' extent go into the grid
    ok &= (boxes[:, 2] >= fx.min()) & (boxes[:, 0] <= fx.max())
    ok &= (boxes[:, 3] >= fy.min()) & (boxes[:, 1] <= fy.max())
    kept = np.flatnonzero(ok)
    if not len(kept):
        return empty, empty
    b = boxes[kept]
    size = float(np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
    if len(x) > 8 * len(b):  # many points a box: finer cells hold fewer boxes a point
        size /= 2
    span = max(float(b[:, 2].max() - b[:, 0].min()), float(b[:, 3].max() - b[:, 1].min()))
    size = max(size, span / 4096, 1e-12)  # at most ~4096 cells a side
    x0, y0 = float(b[:, 0].min()), float(b[:, 1].min())
    cx0 = np.floor((b[:, 0] - x0) / size).astype(np.int64)
    cx1 = np.floor((b[:, 2] - x0) / size).astype(np.int64)
    cy0 = np.floor((b[:, 1] - y0) / size).astype(np.int64)
    cy1 = np.floor((b[:, 3] - y0) / size).astype(np.int64)
    ny = int(cy1.max()) + 1
    nx = int(cx1.max()) + 1
    wide = cx1 - cx0 + 1
    cells_per_box = wide * (cy1 - cy0 + 1)
    total = int(cells_per_box.sum())
    if total > MAX_CELLS_PER_BOX * len(b):
        return None
    owner = np.repeat(np.arange(len(b)), cells_per_box)
    k = np.arange(total) - np.repeat(np.cumsum(cells_per_box) - cells_per_box, cells_per_box)
    cell = (cx0[owner] + k % wide[owner]) * ny + (cy0[owner] + k // wide[owner])
    order = np.argsort(cell, kind="stable")
    cell, owner = cell[order], owner[order]

    with np.errstate(invalid="ignore"):
        px = np.floor((x - x0) / size)
        py = np.floor((y - y0) / size)
        inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    points = np.flatnonzero(inside)
    pcell = px[points].astype(np.int64) * ny + py[points].astype(np.int64)
    if nx * ny <= _DENSE_CELLS:  # a table of every cell's first entry: a gather, not a search
        first_of = np.searchsorted(cell, np.arange(nx * ny + 1))
        lo = first_of[pcell]
        count = first_of[pcell + 1] - lo
    else:
        lo = np.searchsorted(cell, pcell, side="left")
        count = np.searchsorted(cell, pcell, side="right") - lo
    n_pairs = int(count.sum())
    if not n_pairs:
        return empty, empty
    li = np.repeat(points, count)
    first = np.repeat(np.cumsum(count) - count, count)
    bi = owner[np.repeat(lo, count) + np.arange(n_pairs) - first]
    xs, ys, bb = x[li], y[li], b[bi]
    hit = (xs >= bb[:, 0]) & (xs <= bb[:, 2]) & (ys >= bb[:, 1]) & (ys <= bb[:, 3])
    return li[hit].astype(np.int64), kept[bi[hit]].astype(np.int64)
