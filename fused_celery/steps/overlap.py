"""The overlap plan of a spatial join: which right chunks each left chunk needs. Pure numpy.

Inputs are chunk bounding boxes in EPSG:4326 (``minx, miny, maxx, maxy`` rows, as the table
layer's chunk metadata stores them) and a buffer distance in **metres**. A left box is grown
by the distance, then compared with every right box (edges included; NaN boxes, i.e. empty
chunks, never match).

How the box grows, so that no right row within the distance of a left row is ever missed,
near the poles and across the antimeridian too:

- The distance is turned into an angle on a sphere of radius :data:`MIN_RADIUS_M`, the smallest
  radius of curvature of the WGS84 ellipsoid (the meridian's at the equator, ``a (1 - e²)``).
  The ellipsoid's metric ``M² dφ² + (N cos φ)² dλ²`` dominates that sphere's
  (``M ≥ a(1-e²)``, ``N ≥ a``), so any path is at least as long on the ellipsoid: every point
  within ``d`` metres (geodesic) lies within that angle on the sphere. The angle is multiplied by
  :data:`SAFETY` (1 %) because the join measures distances in a metric projection (UTM, or UPS
  near the poles), whose scale factor is ≥ 0.9996 (UTM) / 0.994 (UPS): a pair the join keeps
  is at most 0.6 % farther apart on the ground.
- Latitude grows by that angle exactly, clamped to ±90.
- Longitude grows by ``asin(sin r / cos φm)``, the exact half-width in longitude of a spherical
  cap of angular radius ``r`` centred at latitude ``φm``, where ``φm`` is the largest ``|lat|``
  of the box (the width grows towards the poles, so the box's most poleward edge bounds every
  cap centred in it). When a cap reaches a pole (``|lat| + r ≥ 90°``), every longitude is
  within reach: the box spans -180..180.
- A grown box that crosses ±180 is split into two boxes, one each side (a box given with
  ``minx > maxx`` is read as crossing the antimeridian, and split the same way), so a plain
  interval test compares them.

Hand-written (a few lines of numpy) because no maintained library plans chunk pairs from bbox
metadata with a geodesic buffer; shapely's STRtree works in planar degrees.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fused_celery.errors import StepInputError

__all__ = [
    "MIN_RADIUS_M",
    "SAFETY",
    "buffered_parts",
    "check_buffer_distance",
    "overlap_pairs",
    "right_chunks_per_left",
]

#: The smallest radius of curvature of the WGS84 ellipsoid, metres: a (1 - e²).
MIN_RADIUS_M = 6378137.0 * (1.0 - 0.00669437999014)
#: Extra reach for the metric projection the join measures in (scale factor ≥ 0.994).
SAFETY = 1.01
#: Pairs of boxes compared at once (memory of one block of the comparison).
_BLOCK = 1 << 22


def check_buffer_distance(value: Any) -> float:
    """``value`` as a distance in metres: None -> 0.0; a finite number ≥ 0 as a float. A
    :class:`StepInputError` for anything else (bool, text, negative, NaN, infinite)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise StepInputError(
            f"buffer_distance must be a number of metres (or None), not {type(value).__name__} "
            f"{value!r}"
        )
    d = float(value)
    if not math.isfinite(d) or d < 0:
        raise StepInputError(
            f"buffer_distance must be a finite distance >= 0 in metres, got {value!r}"
        )
    return d


def _as_bounds(bounds: Any) -> np.ndarray:
    b = np.asarray(bounds, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        b = b.reshape(-1, 4)
    return b


def buffered_parts(bounds: Any, distance_m: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The boxes ``bounds`` ((n, 4) minx, miny, maxx, maxy in degrees) grown by ``distance_m``
    metres (default 0) and split at the antimeridian (module docstring): ``(parts (k, 4),
    owner (k,))``, part i belonging to box ``owner[i]``; each box gives one or two parts (NaN
    boxes one NaN part), every part has ``minx <= maxx`` within -180..180."""
    b = _as_bounds(bounds)
    n = len(b)
    minx, miny, maxx, maxy = (b[:, i].copy() for i in range(4))
    with np.errstate(invalid="ignore"):
        wrapped = minx > maxx  # given across the antimeridian
    maxx = np.where(wrapped, maxx + 360.0, maxx)
    d = check_buffer_distance(distance_m)
    if d > 0:
        r = min(SAFETY * d / MIN_RADIUS_M, math.pi)  # radians
        r_deg = math.degrees(r) + 1e-9
        lo_lat, hi_lat = miny - r_deg, maxy + r_deg
        with np.errstate(invalid="ignore"):
            polar = (lo_lat <= -90.0) | (hi_lat >= 90.0)
            phi = np.radians(np.maximum(np.abs(miny), np.abs(maxy)))
            ratio = math.sin(r) / np.cos(phi)
            polar |= ratio >= 1.0
            dlon = np.degrees(np.arcsin(np.clip(ratio, 0.0, 1.0))) + 1e-9
        miny, maxy = np.clip(lo_lat, -90.0, 90.0), np.clip(hi_lat, -90.0, 90.0)
        minx = np.where(polar, -180.0, minx - dlon)
        maxx = np.where(polar, 180.0, maxx + dlon)
    with np.errstate(invalid="ignore"):
        whole = (maxx - minx) >= 360.0
        minx = np.where(whole, -180.0, minx)
        maxx = np.where(whole, 180.0, maxx)
        low = minx < -180.0  # spills west: [minx + 360, 180] and [-180, maxx]
        high = maxx > 180.0  # spills east: [minx, 180] and [-180, maxx - 360]
    first = np.column_stack(
        [np.where(low, minx + 360.0, minx), miny, np.where(high, 180.0, maxx), maxy]
    )
    first[low, 2] = 180.0
    split = low | high
    second = np.column_stack([np.full(n, -180.0), miny, np.where(low, maxx, maxx - 360.0), maxy])[
        split
    ]
    parts = np.concatenate([first, second])
    owner = np.concatenate([np.arange(n), np.flatnonzero(split)])
    return parts, owner


def overlap_pairs(
    left_bounds: Any, right_bounds: Any, distance_m: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)`` index arrays of the chunk pairs to join: left box grown by
    ``distance_m`` metres (default 0) intersects right box, edges included; unique pairs sorted
    by left then right index. NaN boxes never match."""
    lp, lo = buffered_parts(left_bounds, distance_m)
    rp, ro = buffered_parts(right_bounds, 0.0)
    if not len(lp) or not len(rp):
        empty = np.empty(0, np.int64)
        return empty, empty
    found_l: list[np.ndarray] = []
    found_r: list[np.ndarray] = []
    step = max(1, _BLOCK // len(rp))
    for a in range(0, len(lp), step):
        blk = lp[a : a + step]
        with np.errstate(invalid="ignore"):
            hit = (
                (blk[:, None, 0] <= rp[None, :, 2])
                & (blk[:, None, 2] >= rp[None, :, 0])
                & (blk[:, None, 1] <= rp[None, :, 3])
                & (blk[:, None, 3] >= rp[None, :, 1])
            )
        i, j = np.nonzero(hit)
        found_l.append(lo[a + i])
        found_r.append(ro[j])
    left = np.concatenate(found_l).astype(np.int64)
    right = np.concatenate(found_r).astype(np.int64)
    if not len(left):
        return left, right
    key = np.unique(left * (int(ro.max()) + 1) + right)
    width = int(ro.max()) + 1
    return key // width, key % width


def right_chunks_per_left(
    left_bounds: Any, right_bounds: Any, distance_m: float = 0.0
) -> list[np.ndarray]:
    """For each left box, the sorted indices of the right boxes it needs
    (:func:`overlap_pairs`)."""
    n = len(_as_bounds(left_bounds))
    left, right = overlap_pairs(left_bounds, right_bounds, distance_m)
    cuts = np.searchsorted(left, np.arange(n + 1))
    return [right[cuts[k] : cuts[k + 1]] for k in range(n)]
