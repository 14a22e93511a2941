"""Facts of geometries and chunks, computed from arrays: pure numpy/shapely, no I/O.

:class:`RowFacts` (per-row bounds, area, length, coordinate counts and types, in EPSG:4326);
:class:`ChunkMetadata` (one chunk's bbox and measures, the record ``fused:_metadata`` stores; it
lives here because facts compute it); :func:`compute_chunk_metadata`; :func:`chunks_intersecting`
(chunk-bbox intersection); :func:`evenly_spaced` (sample indices); :func:`geometry_types`
(GeoParquet type names).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

_GEOMETRY_TYPE_NAMES = {
    0: "Point",
    1: "LineString",
    2: "LineString",  # LinearRing
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}


class ChunkMetadata(BaseModel):
    """One chunk (Parquet row group) of a table; bbox and measures are in EPSG:4326 (area and
    length in degrees, a heuristic like the reference's)."""

    model_config = ConfigDict(frozen=True)

    file_id: str
    chunk_id: int
    bbox_minx: float
    bbox_miny: float
    bbox_maxx: float
    bbox_maxy: float
    sum_area: float
    sum_length: float
    num_coords: int
    num_rows: int

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)``."""
        return (self.bbox_minx, self.bbox_miny, self.bbox_maxx, self.bbox_maxy)

    def to_box(self) -> Any:
        """The bbox as a shapely Polygon."""
        import shapely

        return shapely.box(*self.bbox)


@dataclass(frozen=True)
class RowFacts:
    """Per-row facts of geometries in EPSG:4326, computed once where they were decoded.

    bounds: (n, 4) minx, miny, maxx, maxy (NaN for null/empty), kept column-major (a copy is
    made of any other layout) so that each column is contiguous: Arrow takes it without a copy
    and reductions run 2-8× faster than over a strided column. area / length: shapely's, in
    degrees. num_coords: coordinate counts. type_id: shapely type ids (-1 null). has_z: 3D rows.
    """

    bounds: np.ndarray
    area: np.ndarray
    length: np.ndarray
    num_coords: np.ndarray
    type_id: np.ndarray
    has_z: np.ndarray

    def __post_init__(self) -> None:
        b = self.bounds
        if not (b.dtype == np.float64 and b.ndim == 2 and b.strides[0] == b.itemsize):
            object.__setattr__(self, "bounds", np.asfortranarray(b, dtype=np.float64))

    @classmethod
    def of(cls, geometries: np.ndarray) -> RowFacts:
        """The facts of shapely ``geometries`` (None allowed)."""
        import shapely

        geoms = np.asarray(geometries, dtype=object)
        if not len(geoms):
            empty = np.empty(0)
            return cls(np.empty((0, 4)), empty, empty, np.empty(0, np.int64),
                       np.empty(0, np.int8), np.empty(0, bool))  # fmt: skip
        types = shapely.get_type_id(geoms).astype(np.int8)
        if (types == 0).all():
            xy = shapely.get_coordinates(geoms)
            return cls.of_points(xy[:, 0], xy[:, 1], shapely.has_z(geoms))
        return cls(
            shapely.bounds(geoms),
            shapely.area(geoms).astype(np.float64),
            shapely.length(geoms).astype(np.float64),
            shapely.get_num_coordinates(geoms).astype(np.int64),
            types,
            shapely.has_z(geoms),
        )

    @classmethod
    def of_points(cls, x: np.ndarray, y: np.ndarray, has_z: np.ndarray | None = None) -> RowFacts:
        """The facts of points at ``x``, ``y`` (no area, no length, one coordinate each).
        has_z: 3D rows (default None: none)."""
        n = len(x)
        return cls(
            bounds_of(x, y, x, y), np.zeros(n), np.zeros(n), np.ones(n, np.int64),
            np.zeros(n, np.int8), np.zeros(n, bool) if has_z is None else has_z,
        )  # fmt: skip

    @classmethod
    def of_projected(cls, geometries: np.ndarray, crs: Any) -> RowFacts:
        """The facts of shapely ``geometries`` in ``crs`` (a projected or other non-EPSG:4326
        CRS), without reprojecting their vertices: each row's bounds are taken in ``crs`` and
        the four corners of that box transformed to EPSG:4326 (the row's box there is the box
        of the four; a row whose corners fall on both sides of the antimeridian spans
        -180..180, as its reprojected vertices would). Area and length are the ones in ``crs``
        scaled by the projection's local scale at the row (from its box's transformed edges):
        area by the scale's determinant (exact to first order for any projection), length by
        its square root (direction-blind: within the ratio of a degree of longitude to one of
        latitude there). Hand-written: pyproj transforms the corners, shapely measures."""
        return cls.of(np.asarray(geometries, dtype=object)).projected_to_wgs84(crs)

    def projected_to_wgs84(self, crs: Any) -> RowFacts:
        """These facts, of rows in ``crs``, as :meth:`of_projected` gives them in EPSG:4326."""
        from pyproj import Transformer

        base = self
        n = len(base.type_id)
        if not n:
            return base
        b = base.bounds
        ok = ~np.isnan(b[:, 0])
        to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        xs = np.concatenate([b[ok, 0], b[ok, 2], b[ok, 0], b[ok, 2]])
        ys = np.concatenate([b[ok, 1], b[ok, 1], b[ok, 3], b[ok, 3]])
        lon, lat = (np.asarray(v).reshape(4, -1) for v in to_wgs84.transform(xs, ys))
        lo, hi = lon.min(0), lon.max(0)
        across = hi - lo > 180.0  # corners on both sides of the antimeridian
        lo[across], hi[across] = -180.0, 180.0
        bounds = np.full((n, 4), np.nan)
        bounds[ok] = np.column_stack([lo, lat.min(0), hi, lat.max(0)])
        # the projection's local scale from the box's edges (corner 0 -> 1 along x, 0 -> 2
        # along y): area scales by |det J|, length by its square root (exact for conformal
        # projections such as UTM and Mercator, a heuristic otherwise)
        w, h = (b[ok, 2] - b[ok, 0]), (b[ok, 3] - b[ok, 1])
        ex = np.stack([_wrap(lon[1] - lon[0]), lat[1] - lat[0]])
        ey = np.stack([_wrap(lon[2] - lon[0]), lat[2] - lat[0]])
        with np.errstate(divide="ignore", invalid="ignore"):
            det = np.abs(ex[0] * ey[1] - ex[1] * ey[0]) / (w * h)
            along_x = np.hypot(ex[0], ex[1]) / w
            along_y = np.hypot(ey[0], ey[1]) / h
        scale_area = np.where((w > 0) & (h > 0), det, 0.0)
        scale_length = np.where(
            (w > 0) & (h > 0), np.sqrt(det), np.where(w > 0, along_x, np.where(h > 0, along_y, 0))
        )
        area, length = np.zeros(n), np.zeros(n)
        area[ok] = np.nan_to_num(base.area[ok]) * scale_area
        length[ok] = np.nan_to_num(base.length[ok]) * scale_length
        return RowFacts(bounds, area, length, base.num_coords, base.type_id, base.has_z)

    def take(self, rows: slice | np.ndarray) -> RowFacts:
        """The facts of ``rows``."""
        return RowFacts(
            self.bounds[rows], self.area[rows], self.length[rows], self.num_coords[rows],
            self.type_id[rows], self.has_z[rows],
        )  # fmt: skip

    @classmethod
    def concat(cls, parts: Sequence[RowFacts]) -> RowFacts:
        """The facts of the rows of ``parts``, in order."""
        if len(parts) == 1:
            return parts[0]
        bounds = np.empty((sum(len(p.bounds) for p in parts), 4), order="F")
        return cls(
            np.concatenate([p.bounds for p in parts], out=bounds),
            np.concatenate([p.area for p in parts]),
            np.concatenate([p.length for p in parts]),
            np.concatenate([p.num_coords for p in parts]),
            np.concatenate([p.type_id for p in parts]),
            np.concatenate([p.has_z for p in parts]),
        )

    def clamped(self, box: Sequence[float], tolerance: float) -> tuple[RowFacts, int]:
        """These facts with the bounds of rows that pass ``box`` = (minx, miny, maxx, maxy) by
        at most ``tolerance`` (floating-point error, e.g. a bound of 180.00000000000006) clipped
        to it, and the number of such rows. Rows further outside keep their bounds."""
        b = self.bounds
        lo = np.asarray(box[:2], np.float64)
        hi = np.asarray(box[2:], np.float64)
        with np.errstate(invalid="ignore"):
            within = ((b[:, :2] >= lo - tolerance) & (b[:, 2:] <= hi + tolerance)).all(axis=1)
            past = ((b[:, :2] < lo) | (b[:, 2:] > hi)).any(axis=1)
        fix = within & past
        n = int(fix.sum())
        if not n:
            return self, 0
        bounds = b.copy(order="F")
        bounds[fix] = np.clip(b[fix], np.r_[lo, lo], np.r_[hi, hi])
        return RowFacts(
            bounds, self.area, self.length, self.num_coords, self.type_id, self.has_z
        ), n

    def geometry_types(self) -> list[str]:
        """GeoParquet ``geometry_types`` of these rows (nulls and empties left out)."""
        keep = (self.type_id >= 0) & ~np.isnan(self.bounds[:, 0])  # null/empty: NaN bounds
        counts = np.bincount(self.type_id[keep].astype(np.int64) * 2 + self.has_z[keep])
        pairs = {(int(c) // 2, bool(c % 2)) for c in np.flatnonzero(counts)}
        return sorted(
            _GEOMETRY_TYPE_NAMES.get(t, "Unknown") + (" Z" if z else "") for t, z in pairs
        )

    def bbox(self) -> tuple[float, float, float, float]:
        """The bbox of the non-null rows (NaNs when there are none)."""
        b = self.bounds  # null/empty rows have NaN bounds, which fmin/fmax skip
        if not len(b):
            return (math.nan,) * 4
        return (float(np.fmin.reduce(b[:, 0])), float(np.fmin.reduce(b[:, 1])),
                float(np.fmax.reduce(b[:, 2])), float(np.fmax.reduce(b[:, 3])))  # fmt: skip

    def chunks_metadata(self, file_id: str, offsets: Sequence[int]) -> list[ChunkMetadata]:
        """The metadata of consecutive non-empty chunks, chunk k being rows
        ``offsets[k]:offsets[k + 1]`` (same values as :meth:`chunk_metadata` of each)."""
        starts = np.asarray(offsets[:-1], np.int64)
        if not len(starts):
            return []
        b = self.bounds
        lo = [np.fmin.reduceat(b[:, i], starts) for i in (0, 1)]
        hi = [np.fmax.reduceat(b[:, i], starts) for i in (2, 3)]
        area = np.add.reduceat(np.nan_to_num(self.area), starts)
        length = np.add.reduceat(np.nan_to_num(self.length), starts)
        coords = np.add.reduceat(self.num_coords, starts)
        rows = np.diff(np.asarray(offsets, np.int64))
        return [
            ChunkMetadata(
                file_id=str(file_id),
                chunk_id=k,
                bbox_minx=float(lo[0][k]),
                bbox_miny=float(lo[1][k]),
                bbox_maxx=float(hi[0][k]),
                bbox_maxy=float(hi[1][k]),
                sum_area=float(area[k]),
                sum_length=float(length[k]),
                num_coords=int(coords[k]),
                num_rows=int(rows[k]),
            )  # fmt: skip
            for k in range(len(starts))
        ]

    def chunk_metadata(self, file_id: str, chunk_id: int) -> ChunkMetadata:
        """The metadata of a chunk made of these rows."""
        n = len(self.type_id)
        if n:
            meta = self.chunks_metadata(file_id, [0, n])[0]
            return meta.model_copy(update={"chunk_id": int(chunk_id)})
        nan = math.nan
        return ChunkMetadata(
            file_id=str(file_id), chunk_id=int(chunk_id), bbox_minx=nan, bbox_miny=nan,
            bbox_maxx=nan, bbox_maxy=nan, sum_area=0.0, sum_length=0.0, num_coords=0, num_rows=0,
        )  # fmt: skip


def bounds_of(minx: Any, miny: Any, maxx: Any, maxy: Any) -> np.ndarray:
    """The (n, 4) column-major bounds array of :class:`RowFacts` from its four columns."""
    out = np.empty((len(minx), 4), order="F")
    for i, column in enumerate((minx, miny, maxx, maxy)):
        out[:, i] = column
    return out


def _wrap(dlon: np.ndarray) -> np.ndarray:
    """Longitude differences in [-180, 180) (across the antimeridian, the short way)."""
    return (dlon + 180.0) % 360.0 - 180.0


def compute_chunk_metadata(file_id: str, chunk_id: int, geometries: np.ndarray) -> ChunkMetadata:
    """Metadata of one chunk from its geometries (shapely objects in EPSG:4326; None allowed).

    The bbox ignores null and empty geometries (NaN when there are none).
    """
    return RowFacts.of(geometries).chunk_metadata(file_id, chunk_id)


def chunks_intersecting(
    minx: np.ndarray,
    miny: np.ndarray,
    maxx: np.ndarray,
    maxy: np.ndarray,
    bbox: Sequence[float],
) -> np.ndarray:
    """Boolean mask of the chunks whose bbox intersects ``bbox`` = (minx, miny, maxx, maxy),
    edges included; chunks with a NaN bbox never intersect."""
    qminx, qminy, qmaxx, qmaxy = (float(v) for v in bbox)
    with np.errstate(invalid="ignore"):
        return (
            (np.asarray(minx, float) <= qmaxx)
            & (np.asarray(maxx, float) >= qminx)
            & (np.asarray(miny, float) <= qmaxy)
            & (np.asarray(maxy, float) >= qminy)
        )


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` indices spread evenly over ``range(n)`` (first and last included)."""
    if n <= k:
        return np.arange(n)
    if k <= 0:
        return np.arange(0)
    idx = np.linspace(0, n - 1, k).round().astype(np.int64)  # ascending: drop repeats
    return idx[np.r_[True, idx[1:] != idx[:-1]]]


def geometry_types(geometries: np.ndarray) -> list[str]:
    """GeoParquet ``geometry_types`` of ``geometries``: sorted names, ``" Z"`` for 3D ones;
    null and empty geometries are left out."""
    import shapely

    geoms = np.asarray(geometries, dtype=object)
    keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    geoms = geoms[keep]
    if not len(geoms):
        return []
    ids = shapely.get_type_id(geoms)
    has_z = shapely.has_z(geoms)
    names = {
        _GEOMETRY_TYPE_NAMES.get(int(i), "Unknown") + (" Z" if z else "")
        for i, z in zip(ids, has_z)
    }
    return sorted(names)
