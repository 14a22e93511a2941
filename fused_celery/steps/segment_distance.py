"""Whether points lie within a distance of polygons' boundaries, from coordinate arrays.

Pure numpy (no I/O, no Celery, no GEOS). A point lies within ``d`` of a polygon when it is in
the polygon or within ``d`` of one of its boundary edges; the join step answers the first with
``shapely.intersects_xy`` on prepared polygons and the second here, so a ``dwithin`` join of
points needs no point object per row (making them costs more than GEOS's test) and no tree.
Hand-written because no library measures point-to-edge distances from coordinate arrays:
shapely and GEOS take geometries, one per pair.

Most pairs never reach the edges: :func:`polygon_discs` gives each polygon a disc around it and
one inside it, and :func:`disc_test` decides every point beyond the first or inside the second
(each grown by the distance). For the rest, each polygon's edges are held as a row of
:func:`padded_edges` (zero-length edges at its last vertex up to the longest row), so the
distances of many points to their polygons' edges are one vectorised computation and a minimum
along the row. A computed distance may differ from GEOS's in the last bits: every test leaves
undecided what lies within :func:`tolerance` of its bound, and :func:`within_distance` reports
such a pair as unsure, for the caller to decide with GEOS itself, so the join's pairs are GEOS's.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "MAX_EDGES",
    "Discs",
    "concat_discs",
    "disc_test",
    "padded_edges",
    "polygon_discs",
    "scale_of",
    "tolerance",
    "within_distance",
]

#: Edges a polygon may have for :func:`padded_edges` (beyond it a tree of its edges is faster).
MAX_EDGES = 64

#: Points tested together (bounds the temporaries to about 40 MB at :data:`MAX_EDGES`).
_BLOCK = 16_384


def tolerance(scale: float, distance: float) -> float:
    """The band around ``distance`` within which a computed distance is unsure: 2^-36 of the
    largest coordinate magnitude ``scale`` plus the distance (thousands of ulps: far above the
    formula's rounding, far below any distance a join asks for)."""
    return (abs(scale) + abs(distance) + 1.0) * 2.0**-36


def padded_edges(segments: np.ndarray, owners: np.ndarray, count: int) -> np.ndarray | None:
    """The edges of ``count`` polygons as an array (4, count, K): ax, ay, bx, by of each
    polygon's edges, from segments (m, 4) with ``owners`` (m,), the polygon each belongs to, in
    order of polygon. A row is padded with zero-length edges at its last vertex (which change
    no distance and cross no ray); a polygon without edges (empty) gets NaN (never within).
    None when a polygon has more than :data:`MAX_EDGES` edges."""
    owners = np.asarray(owners, np.int64)
    segments = np.asarray(segments, np.float64).reshape(-1, 4)
    per = np.bincount(owners, minlength=count)
    width = max(int(per.max(initial=1)), 1)
    if width > MAX_EDGES:
        return None
    out = np.full((count, width, 4), np.nan)
    if len(owners):
        start = np.cumsum(per) - per
        out[owners, np.arange(len(owners)) - start[owners]] = segments
        some = per > 0
        pad = (np.arange(width)[None, :] >= per[:, None]) & some[:, None]
        end = segments[(start + per - 1)[some]][:, [2, 3, 2, 3]]
        out[pad] = np.repeat(end, (width - per)[some], axis=0)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _nearest_d2(px: np.ndarray, py: np.ndarray, e: np.ndarray) -> np.ndarray:
    """The squared distance of point ``(px[i], py[i])`` to the nearest of edges ``e[:, i]``
    (4, n, K), NaN for NaN edges."""
    ax, ay = e[0], e[1]
    dx = e[2] - ax
    dy = e[3] - ay
    qx = px[:, None] - ax
    qy = py[:, None] - ay
    len2 = dx * dx + dy * dy
    with np.errstate(invalid="ignore", divide="ignore"):
        t = qx * dx
        t += qy * dy
        t /= len2
        np.clip(t, 0.0, 1.0, out=t)
    t[len2 == 0] = 0.0
    dx *= t
    dy *= t
    qx -= dx
    qy -= dy
    qx *= qx
    qy *= qy
    qx += qy
    with np.errstate(invalid="ignore"):
        return np.min(qx, axis=1)


class Discs(NamedTuple):
    """A disc around each polygon and one inside it, to decide most points without its edges:
    centre (``x``, ``y``: the middle of its box), ``outer`` (the farthest vertex: the polygon
    lies in that disc) and ``inner`` (the distance to the nearest edge, negative when the centre
    is outside: the disc of that radius lies in the polygon)."""

    x: np.ndarray
    y: np.ndarray
    inner: np.ndarray
    outer: np.ndarray


def polygon_discs(edges: np.ndarray) -> Discs:
    """The :class:`Discs` of polygons given by :func:`padded_edges` ``edges``."""
    ax, ay = edges[0], edges[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (np.min(ax, axis=1) + np.max(ax, axis=1)) / 2
        cy = (np.min(ay, axis=1) + np.max(ay, axis=1)) / 2
        outer = np.sqrt(np.max((ax - cx[:, None]) ** 2 + (ay - cy[:, None]) ** 2, axis=1))
        inner = np.sqrt(_nearest_d2(cx, cy, edges))
        by = edges[3]
        crosses = (ay > cy[:, None]) != (by > cy[:, None])
        xcross = ax + (cy[:, None] - ay) * (edges[2] - ax) / (by - ay)
        inside = np.sum(crosses & (cx[:, None] < xcross), axis=1) % 2 == 1
    return Discs(cx, cy, np.where(inside, inner, -inner), outer)


def disc_test(
    px: np.ndarray,
    py: np.ndarray,
    discs: Discs,
    rows: np.ndarray,
    distance: float,
    tol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(within, beyond)``: points ``(px[i], py[i])`` surely within ``distance`` of polygon
    ``rows[i]`` (within its inner disc grown by the distance, less ``tol``) and surely
    farther (beyond its outer disc grown by the distance, plus ``tol``); neither: undecided."""
    with np.errstate(invalid="ignore"):
        q = (px - discs.x[rows]) ** 2 + (py - discs.y[rows]) ** 2
        near = discs.inner[rows] + distance - tol  # negative: no point is sure
        return (near >= 0) & (q <= near * near), q > (discs.outer[rows] + distance + tol) ** 2


def scale_of(px: np.ndarray, py: np.ndarray, discs: Discs) -> float:
    """The largest finite coordinate magnitude among points and polygons (a bound: each
    polygon's centre plus its outer radius), for :func:`tolerance`."""
    top = 0.0
    for values in (px, py, np.abs(discs.x) + discs.outer, np.abs(discs.y) + discs.outer):
        values = np.abs(np.asarray(values, np.float64))
        top = max(top, float(values[np.isfinite(values)].max(initial=0.0)))
    return top


def concat_discs(parts: list[Discs]) -> Discs:
    """The :class:`Discs` of several groups of polygons, in order."""
    return Discs(*(np.concatenate([getattr(d, f) for d in parts]) for f in Discs._fields))


def within_distance(
    px: np.ndarray, py: np.ndarray, edges: np.ndarray, rows: np.ndarray, distance: float, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(sure, unsure)`` boolean arrays for points ``(px[i], py[i])`` against the edges of
    polygon ``rows[i]`` of ``edges`` (:func:`padded_edges`): ``sure`` where the nearest edge
    lies within ``distance`` less ``tol`` (:func:`tolerance`), ``unsure`` where its distance is
    within ``tol`` of ``distance`` (neither: farther)."""
    n = len(px)
    sure = np.zeros(n, bool)
    unsure = np.zeros(n, bool)
    lo, hi = (max(distance - tol, 0.0)) ** 2, (distance + tol) ** 2
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        nearest = _nearest_d2(px[start:stop], py[start:stop], edges[:, rows[start:stop]])
        with np.errstate(invalid="ignore"):
            sure[start:stop] = nearest <= lo
            unsure[start:stop] = (nearest > lo) & (nearest <= hi)
    return sure, unsure
