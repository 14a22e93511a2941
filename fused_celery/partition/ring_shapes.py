"""Validity, centroids and measures of single-ring polygons, from coordinate arrays.

Pure numpy (no I/O, no Celery, no GEOS). An ingest checks every polygon's validity (to repair
the invalid ones with ``make_valid``) and takes every row's centroid (the plan's point); on
polygon inputs GEOS's ``is_valid`` and ``centroid`` were two thirds of the prepare stage, one
geometry object at a time. Most polygons are a single ring, and most of those are star-shaped
around the mean of their vertices (buildings, parcels, buffers, hexagons); for them both answers
come from a few vectorised passes over the coordinates. Hand-written because no library gives
either from coordinate arrays (shapely and GEOS take geometries).

* :func:`surely_simple`: whether each ring is closed, has at least four coordinates, and every
  edge turns strictly the same way around the ring's vertex mean ``c``, one full turn. Such a
  ring is star-shaped around ``c``: each edge stays in its own angular sector, so no two edges
  meet but neighbours at their shared vertex, and the polygon is valid. Each orientation is
  trusted only when its computed cross product exceeds the rounding error bound of its
  computation (:data:`CROSS_ERROR`), so a ring reported simple is simple in exact arithmetic,
  and GEOS, whose predicates are exact, calls it valid. ``False`` means "not proven": the
  caller asks GEOS.
* :func:`ring_bounds` and :func:`ring_measures`: each ring's bounds, and the area and length of
  the polygon it bounds with GEOS's own arithmetic (the same terms summed in the same order: the
  same doubles as ``shapely.area`` and ``shapely.length``).
* :func:`ring_centroids`: the area centroid of each ring as GEOS computes it (triangles from the
  ring's first vertex), equal to GEOS's up to rounding; rings of zero or non-finite area are
  marked for the caller to ask GEOS (whose centroid then falls back to the boundary's).

Rings are given as :class:`Rings` (:func:`rings_of`): the coordinates of all rings one after
another, as ``shapely.get_coordinates(..., return_index=True)`` gives them for single-ring
polygons, or as :mod:`.wkb_polygons` reads them from WKB bytes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "CROSS_ERROR",
    "Rings",
    "ring_bounds",
    "ring_centroids",
    "ring_measures",
    "rings_of",
    "surely_simple",
]

#: Relative error bound of a computed cross product of two computed differences ``p - c``:
#: each difference is correctly rounded (relative error 2^-53), the two products and their
#: difference add three more roundings; 8 × 2^-53 covers the five with room.
CROSS_ERROR = 8.0 * 2.0**-53
#: An absolute floor under the error bound: products in the subnormal range lose relative
#: precision (far below any real coordinate difference).
_TINY = 1e-300


class Rings(NamedTuple):
    """Rings as coordinate arrays: ``x``, ``y`` (m: every ring's coordinates, closing one
    included, ring after ring), ``owner`` (m: the ring of each), ``start`` and ``count`` (n: each
    ring's first position and number of coordinates) and ``inside`` (m - 1: whether the edge
    from coordinate i to i + 1 lies in one ring, not from a ring's end to the next start)."""

    x: np.ndarray
    y: np.ndarray
    owner: np.ndarray
    start: np.ndarray
    count: np.ndarray
    inside: np.ndarray


def rings_of(x: np.ndarray, y: np.ndarray, owner: np.ndarray, n: int) -> Rings:
    """The :class:`Rings` of ``n`` rings whose coordinates are ``x``, ``y``, the ring of each
    in ``owner`` (non-decreasing; a ring without coordinates has count 0)."""
    owner = np.asarray(owner, np.int64)
    count = np.bincount(owner, minlength=n)[:n] if len(owner) else np.zeros(n, np.int64)
    return Rings(
        np.asarray(x, np.float64),
        np.asarray(y, np.float64),
        owner,
        (np.cumsum(count) - count).astype(np.int64),
        count.astype(np.int64),
        owner[1:] == owner[:-1],
    )


def surely_simple(rings: Rings) -> np.ndarray:
    """Whether each ring is surely a valid polygon shell: closed, at least 4 coordinates, and
    star-shaped around its vertex mean with every edge's orientation beyond rounding error
    (see the module docstring). False: not proven (self-intersecting, not star-shaped around
    that point, degenerate, non-finite, or too close to call)."""
    x, y, owner, start, count, inside = rings
    n, m = len(start), len(x)
    if not n or not m:
        return np.zeros(n, bool)
    ok = count >= 4
    last = np.where(ok, start + count - 1, 0)
    first = np.where(ok, start, 0)
    with np.errstate(invalid="ignore"):
        ok &= (x[first] == x[last]) & (y[first] == y[last])
    # the centre: the vertex mean (the closing coordinate, a repeat of the first, left out)
    vertices = np.maximum(count - 1, 1)
    cx = (np.bincount(owner, weights=x, minlength=n)[:n] - x[last]) / vertices
    cy = (np.bincount(owner, weights=y, minlength=n)[:n] - y[last]) / vertices
    ax = x - cx[owner]
    ay = y - cy[owner]
    with np.errstate(invalid="ignore", over="ignore"):
        p = ax[:-1] * ay[1:]
        q = ay[:-1] * ax[1:]
        cross = p - q
        np.abs(p, out=p)
        np.abs(q, out=q)
        bound = np.add(p, q, out=p)
        bound *= CROSS_ERROR
        bound += _TINY
        left = cross > bound
        np.negative(bound, out=bound)
        right = cross < bound
        # the edges from below the centre's horizontal to on or above it: with every edge
        # turning the same way, they are the passes of the ray from the centre along +x (turning
        # left) or along -x (turning right), one per turn around the centre
        below = ay < 0
        up = below[:-1] & ~below[1:]
    edges = np.maximum(count - 1, 0)
    n_left, n_right, turns = (_per_ring(f, start, edges) for f in (left, right, up))
    return ok & ((n_left == edges) | (n_right == edges)) & (turns == 1)


def _per_ring(flags: np.ndarray, start: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of each ring's edges (``edges[r]`` from position ``start[r]``) are flagged in
    ``flags`` (one per edge position, m - 1)."""
    total = np.zeros(len(flags) + 1, np.int64)
    np.cumsum(flags, out=total[1:])
    at = np.minimum(start, len(flags))  # a ring without coordinates may start past the end
    return total[at + edges] - total[at]


def ring_centroids(rings: Rings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cx, cy, ok)``: the area centroid of each ring (the polygon it bounds), from the
    triangles of its first vertex and each edge, as GEOS's ``CentroidArea`` sums them; ``ok``
    is False where the ring's area is zero or not finite (GEOS then gives another centroid:
    ask it)."""
    x, y, owner, start, count, inside = rings
    n, m = len(start), len(x)
    if not n or not m:
        return np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool)
    ring = owner[:-1]
    bx, by = x[start[owner]], y[start[owner]]
    dx, dy = x - bx, y - by
    with np.errstate(invalid="ignore", over="ignore"):
        area2 = np.where(inside, dx[:-1] * dy[1:] - dx[1:] * dy[:-1], 0.0)
        mx = (dx[:-1] + dx[1:]) * area2
        my = (dy[:-1] + dy[1:]) * area2
    total = np.bincount(ring, weights=area2, minlength=n)[:n]
    sx = np.bincount(ring, weights=mx, minlength=n)[:n]
    sy = np.bincount(ring, weights=my, minlength=n)[:n]
    first = np.where(count > 0, start, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = x[first] + sx / (3.0 * total)
        cy = y[first] + sy / (3.0 * total)
        ok = (count > 0) & (total != 0) & np.isfinite(cx) & np.isfinite(cy)
    return cx, cy, ok


def ring_bounds(rings: Rings) -> np.ndarray:
    """Each ring's ``(minx, miny, maxx, maxy)`` (n × 4; NaN for a ring without coordinates)."""
    x, y, _, start, count, _ = rings
    out = np.full((len(start), 4), np.nan)
    has = count > 0
    if has.any():
        at = start[has]
        out[has, 0] = np.minimum.reduceat(x, at)
        out[has, 1] = np.minimum.reduceat(y, at)
        out[has, 2] = np.maximum.reduceat(x, at)
        out[has, 3] = np.maximum.reduceat(y, at)
    return out


def ring_measures(rings: Rings) -> tuple[np.ndarray, np.ndarray]:
    """``(area, length)`` of the polygon each ring bounds, as GEOS computes them: the area by
    the shoelace formula from the ring's first x (``Area::ofRingSigned``, absolute), the length
    as the sum of ``sqrt(dx² + dy²)`` along the ring (``Length::ofLine``), each summed from 0
    in ring order (``np.bincount`` adds in index order)."""
    x, y, owner, start, count, inside = rings
    n, m = len(start), len(x)
    if not n or m < 3:
        return np.zeros(n), np.zeros(n)
    with np.errstate(invalid="ignore", over="ignore"):
        # area: for coordinates 1 .. count - 2 of each ring, (x_i - x_0) * (y_{i-1} - y_{i+1})
        middle = inside[:-1] & inside[1:]  # i - 1, i and i + 1 in one ring
        x0 = x[np.where(count > 0, start, 0)][owner[1:-1]]
        term = (x[1:-1] - x0) * (y[:-2] - y[2:])
        area = np.bincount(owner[1:-1][middle], weights=term[middle], minlength=n)[:n]
        dx = x[1:] - x[:-1]
        dy = y[1:] - y[:-1]
        step = np.sqrt(dx * dx + dy * dy)
    length = np.bincount(owner[:-1][inside], weights=step[inside], minlength=n)[:n]
    area = np.where(count >= 3, np.abs(area / 2.0), 0.0)
    return area, np.where(count >= 2, length, 0.0)
