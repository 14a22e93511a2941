"""The join of two GeoDataFrames a join step performs when it has no UDF: every pair of a left
row and a right row whose geometries intersect, or lie within ``distance_m`` metres of each
other, found with shapely's STRtree (``tree.query(geoms, predicate=...)``, vectorised); left
points given as coordinates are matched without point objects or a tree
(:func:`point_pairs`, :func:`point_dwithin_pairs`: the same pairs).

Distances are measured in a metric projection chosen from the left rows' extent
(:func:`metric_crs`: the UTM zone of their centre, UPS beyond 84°N / 80°S), every pair within
the distance kept (not only the nearest). The output is the left rows (their geometry and CRS)
with the right rows' columns, left rows in order and each one's matches by right row; a right
column whose name the left already has gets the suffix ``_right``; the right geometry is
dropped (as geopandas' ``sjoin``). ``how="left"`` keeps left rows without a match, right
columns null.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd
    import pyarrow as pa
    from pyproj import CRS

    from fused_celery.steps.segment_distance import Discs
    from fused_celery.table.facts import RowFacts

__all__ = [
    "RIGHT_SUFFIX",
    "join_pairs",
    "joined_columns",
    "joined_table",
    "metric_crs",
    "pairs",
    "reproject",
    "reproject_xy",
    "point_pairs",
    "point_dwithin_pairs",
    "Boundaries",
    "concat_boundaries",
    "polygon_boundaries",
    "spatial_join",
    "points_facts",
    "wgs84_bounds",
    "wgs84_box",
    "wkb_points_xy",
]

RIGHT_SUFFIX = "_right"


def metric_crs(bounds: Any) -> CRS:
    """The metric CRS distances are measured in for rows within ``bounds`` (minx, miny, maxx,
    maxy in EPSG:4326): the WGS84 UTM zone of the box's centre, or UPS north (EPSG:32661) above
    84°N / south (EPSG:32761) below 80°S."""
    from pyproj import CRS

    minx, miny, maxx, maxy = (float(v) for v in bounds)
    lon = (minx + maxx) / 2.0 if np.isfinite(minx + maxx) else 0.0
    lat = (miny + maxy) / 2.0 if np.isfinite(miny + maxy) else 0.0
    if lat > 84.0:
        return CRS.from_epsg(32661)
    if lat < -80.0:
        return CRS.from_epsg(32761)
    zone = min(60, int((lon + 180.0) // 6.0) + 1)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def wgs84_bounds(geoms: np.ndarray, crs: Any) -> tuple[float, float, float, float]:
    """The box of shapely ``geoms`` (in ``crs``; None: EPSG:4326) in EPSG:4326; zeros when
    there are none."""
    import shapely

    if not len(geoms):
        return (0.0, 0.0, 0.0, 0.0)
    with np.errstate(invalid="ignore"):
        return wgs84_box(shapely.total_bounds(geoms), crs)


def wgs84_box(box: Any, crs: Any) -> tuple[float, float, float, float]:
    """``box`` (minx, miny, maxx, maxy in ``crs``; None: EPSG:4326) in EPSG:4326."""
    from pyproj import CRS, Transformer

    minx, miny, maxx, maxy = (float(v) for v in box)
    if crs is None or CRS.from_user_input(crs).equals("EPSG:4326"):
        return (minx, miny, maxx, maxy)
    t = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return t.transform_bounds(minx, miny, maxx, maxy)


def _wgs84_bounds(frame: gpd.GeoDataFrame) -> tuple[float, float, float, float]:
    return wgs84_bounds(np.asarray(frame.geometry.array, dtype=object), frame.crs)


def reproject(geoms: np.ndarray, src: Any, dst: Any) -> np.ndarray:
    """Shapely ``geoms`` from CRS ``src`` (None: EPSG:4326) to ``dst``, as geopandas'
    ``to_crs`` does it (same coordinates)."""
    from geopandas.array import GeometryArray

    array = GeometryArray(np.asarray(geoms, dtype=object), crs=src or "EPSG:4326")
    return np.asarray(array.to_crs(dst), dtype=object)


#: ISO WKB of a 2D point, little-endian: byte order, type (1), x, y.
_WKB_POINT = np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")])


def wkb_points_xy(wkb: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """The ``(n, 2)`` coordinates of ``wkb`` (a binary Arrow array) when every value is a
    non-empty 2D point in little-endian ISO WKB (what the table layer writes), read without
    decoding one geometry; None otherwise (nulls, empties, other types or encodings)."""
    import pyarrow as pa

    if isinstance(wkb, pa.ChunkedArray):
        wkb = wkb.combine_chunks()
    n = len(wkb)
    if wkb.null_count or wkb.type != pa.binary():
        return None
    if not n:
        return np.empty((0, 2))
    offsets = np.frombuffer(wkb.buffers()[1], np.int32, n + 1, wkb.offset * 4)
    if offsets[-1] - offsets[0] != n * _WKB_POINT.itemsize:
        return None
    if (np.diff(offsets) != _WKB_POINT.itemsize).any():
        return None
    rows = np.frombuffer(wkb.buffers()[2], _WKB_POINT, n, int(offsets[0]))
    if (rows["order"] != 1).any() or (rows["type"] != 1).any():
        return None
    xy = np.column_stack([rows["x"], rows["y"]])
    return xy if np.isfinite(xy).all() else None


def points_facts(xy: np.ndarray) -> RowFacts:
    """The :class:`~fused_celery.table.facts.RowFacts` of 2D points at ``xy`` (what
    ``RowFacts.of`` gives for them)."""
    from fused_celery.table.facts import RowFacts

    return RowFacts.of_points(xy[:, 0], xy[:, 1])


def reproject_xy(xy: np.ndarray, src: Any, dst: Any) -> np.ndarray:
    """Coordinates ``xy`` (``(n, 2)`` in CRS ``src``, None: EPSG:4326) in CRS ``dst``."""
    from pyproj import Transformer

    t = Transformer.from_crs(src or "EPSG:4326", dst, always_xy=True)
    x, y = t.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([np.asarray(x, np.float64), np.asarray(y, np.float64)])


def join_pairs(
    left: gpd.GeoDataFrame, right: gpd.GeoDataFrame, distance_m: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(left positions, right positions)`` of the matching pairs, sorted by left then right
    position: intersecting (``distance_m`` 0, default) or within ``distance_m`` metres (in
    :func:`metric_crs` of the left rows). Both frames in one CRS (None: lon/lat)."""
    if not len(left) or not len(right):
        empty = np.empty(0, np.int64)
        return empty, empty
    lg = np.asarray(left.geometry.array, dtype=object)
    rg = np.asarray(right.geometry.array, dtype=object)
    if distance_m > 0:
        crs = metric_crs(_wgs84_bounds(left))
        src = left.crs or "EPSG:4326"
        lg, rg = reproject(lg, src, crs), reproject(rg, src, crs)
    return pairs(lg, rg, distance_m)


def pairs(lg: np.ndarray, rg: np.ndarray, distance: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(left positions, right positions)`` of shapely ``lg`` and ``rg`` (one CRS, metric when
    ``distance`` > 0) that intersect (``distance`` 0, default) or lie within ``distance`` of
    each other; sorted by left then right position."""
    if not len(lg) or not len(rg):
        empty = np.empty(0, np.int64)
        return empty, empty
    predicate = "dwithin" if distance > 0 else "intersects"
    within = distance if distance > 0 else None
    if _tree_on_left(lg, rg):
        l_idx, r_idx = _query(lg, rg, predicate, within)
    else:
        r_idx, l_idx = _query(rg, lg, predicate, within)
    order = np.lexsort((r_idx, l_idx))
    return l_idx[order].astype(np.int64), r_idx[order].astype(np.int64)


def point_pairs(
    xy: np.ndarray, rg: np.ndarray, boundaries: Boundaries | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pairs` (``intersects``) of points given as coordinates ``xy`` (n × 2; NaN: an
    empty point) and shapely ``rg`` (one CRS): candidates from a grid of the right boxes
    (:func:`~fused_celery.steps.point_candidates.points_in_boxes`), then ``intersects_xy`` on
    the candidates only, the right geometries prepared once (they stay prepared, e.g. in the
    join's per-worker cache): no tree and no point object per row, 2-4x faster than
    :func:`pairs` on the join benchmark's chunks. boundaries: :func:`polygon_boundaries` of
    ``rg`` when known (default None: not used); with their discs, most candidates are decided
    by a disc inside and a disc around their polygon
    (:func:`~fused_celery.steps.segment_distance.disc_test`) and only the rest by GEOS. Falls
    back to :func:`pairs` when one grid cannot serve the boxes."""
    import shapely

    from fused_celery.steps.point_candidates import points_in_boxes

    empty = np.empty(0, np.int64)
    if not len(xy) or not len(rg):
        return empty, empty
    found = points_in_boxes(xy[:, 0], xy[:, 1], shapely.bounds(rg))
    if found is None:
        return pairs(shapely.points(xy), rg)
    li, ri = found
    discs = None if boundaries is None else boundaries.discs
    hit, _ = _inside(xy, rg, li, ri, discs, 0.0, _tolerance(xy, discs, 0.0))
    return li[hit], ri[hit]  # points_in_boxes' order: by left, then right position


def _tolerance(xy: np.ndarray, discs: Discs | None, distance: float) -> float:
    """:func:`~fused_celery.steps.segment_distance.tolerance` of points ``xy`` and polygons of
    ``discs`` (0 without discs: nothing is decided by them)."""
    from fused_celery.steps.segment_distance import scale_of, tolerance

    return 0.0 if discs is None else tolerance(scale_of(xy[:, 0], xy[:, 1], discs), distance)


def _inside(
    xy: np.ndarray,
    rg: np.ndarray,
    li: np.ndarray,
    ri: np.ndarray,
    discs: Discs | None,
    distance: float,
    tol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(hit, rest)`` for candidate pairs ``(li, ri)`` of points ``xy`` and polygons ``rg``:
    ``hit`` where the point is surely within ``distance`` of its polygon (its ``discs``, when
    given, less ``tol``: :func:`_tolerance`) or in it (``intersects_xy``); ``rest``: positions
    of the candidates neither decides (outside the polygon, neither disc sure)."""
    import shapely

    from fused_celery.steps.segment_distance import disc_test

    px, py = xy[li, 0], xy[li, 1]
    if discs is None:
        hit = np.zeros(len(li), bool)
        rest = np.arange(len(li))
    else:
        hit, beyond = disc_test(px, py, discs, ri, distance, tol)
        rest = np.flatnonzero(~(hit | beyond))
    if len(rest):
        shapely.prepare(rg)
        inside = shapely.intersects_xy(rg[ri[rest]], px[rest], py[rest])
        hit[rest[inside]] = True
        rest = rest[~inside]
    return hit, rest


class Boundaries(NamedTuple):
    """The boundaries of polygons, for matching points against them from coordinates:
    ``segments`` (m × 4: every ring's edges as ax, ay, bx, by, in order of polygon),
    ``owners`` (m: the polygon each belongs to) and their
    :class:`~fused_celery.steps.segment_distance.Discs` (None when a polygon has more than
    :data:`~fused_celery.steps.segment_distance.MAX_EDGES` edges)."""

    segments: np.ndarray
    owners: np.ndarray
    discs: Discs | None


def polygon_boundaries(rg: np.ndarray) -> Boundaries | None:
    """The :class:`Boundaries` of shapely ``rg``; None unless every geometry is a valid
    Polygon or MultiPolygon (the only ones :func:`point_pairs` and
    :func:`point_dwithin_pairs` measure themselves)."""
    import shapely

    from fused_celery.steps.segment_distance import padded_edges, polygon_discs

    types = shapely.get_type_id(rg)
    if not np.isin(types, (3, 6)).all() or not shapely.is_valid(rg).all():
        return None
    if (types == 3).all():  # polygons are their own parts (get_parts would copy them)
        parts, part_of = rg, np.arange(len(rg))
    else:
        parts, part_of = shapely.get_parts(rg, return_index=True)
    rings, ring_of = shapely.get_rings(parts, return_index=True)
    coords, coord_of = shapely.get_coordinates(rings, return_index=True)
    same = coord_of[1:] == coord_of[:-1]
    segments = np.column_stack([coords[:-1][same], coords[1:][same]])
    owners = part_of[ring_of[coord_of[:-1][same]]].astype(np.int64)
    edges = padded_edges(segments, owners, len(rg))
    return Boundaries(segments, owners, None if edges is None else polygon_discs(edges))


def concat_boundaries(
    parts: Sequence[Boundaries | None], counts: Sequence[int]
) -> Boundaries | None:
    """The :class:`Boundaries` of groups of ``counts`` polygons each, in order (owners
    counted across them); None when a group has none."""
    from fused_celery.steps.segment_distance import concat_discs

    known = [p for p in parts if p is not None]
    if not known or len(known) < len(parts):
        return None
    if len(known) == 1:
        return known[0]
    offsets = np.cumsum([0, *counts[:-1]])
    segments = np.concatenate([p.segments for p in known])
    owners = np.concatenate([p.owners + o for p, o in zip(known, offsets)])
    discs = [p.discs for p in known if p.discs is not None]
    joined = concat_discs(discs) if len(discs) == len(known) else None
    return Boundaries(segments, owners, joined)


def point_dwithin_pairs(
    xy: np.ndarray,
    rg: np.ndarray,
    distance: float,
    boundaries: Boundaries | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pairs` (within ``distance`` > 0) of points given as coordinates ``xy`` (n × 2,
    finite, metric CRS) and shapely ``rg`` (same CRS), the same pairs as GEOS, with no point
    object per row: candidates from a grid of the right boxes grown by the distance
    (:func:`~fused_celery.steps.point_candidates.points_in_boxes`); most are decided by a disc
    inside and a disc around their polygon
    (:func:`~fused_celery.steps.segment_distance.disc_test`); of the rest, one in its polygon
    (``intersects_xy``, the polygons prepared once) is within, the others are measured against
    the polygon's edges (:func:`~fused_celery.steps.segment_distance.within_distance`), the few
    within rounding of the distance decided by ``shapely.dwithin``. boundaries:
    :func:`polygon_boundaries` of ``rg`` when known (default: computed). Falls back to the tree
    (:func:`pairs`) unless ``rg`` is all valid polygons of few edges whose boxes fit one
    grid."""
    import shapely

    from fused_celery.steps.point_candidates import points_in_boxes
    from fused_celery.steps.segment_distance import padded_edges, within_distance

    empty = np.empty(0, np.int64)
    if not len(xy) or not len(rg):
        return empty, empty
    if boundaries is None:
        boundaries = polygon_boundaries(rg)
    discs = None if boundaries is None else boundaries.discs
    found = None
    if discs is not None:
        boxes = shapely.bounds(rg) + np.array([-distance, -distance, distance, distance])
        found = points_in_boxes(xy[:, 0], xy[:, 1], boxes)
    if found is None or boundaries is None or discs is None:
        return pairs(shapely.points(xy), rg, distance)
    li, ri = found
    tol = _tolerance(xy, discs, distance)
    hit, rest = _inside(xy, rg, li, ri, discs, distance, tol)
    if len(rest):
        edges = padded_edges(boundaries.segments, boundaries.owners, len(rg))
        assert edges is not None  # discs exist, so every polygon fits a row
        rx, ry = xy[li[rest], 0], xy[li[rest], 1]
        sure, unsure = within_distance(rx, ry, edges, ri[rest], distance, tol)
        hit[rest[sure]] = True
        check = rest[unsure]
        if len(check):
            points = shapely.points(xy[li[check]])
            hit[check] = shapely.dwithin(points, rg[ri[check]], distance)
    return li[hit], ri[hit]  # points_in_boxes' order: by left, then right position


def _tree_on_left(lg: np.ndarray, rg: np.ndarray) -> bool:
    """Whether the left geometries go in the tree: the side with fewer coordinates a geometry
    (points) does, and the other side queries it, each of its geometries prepared once by
    GEOS (points queried against a tree of polygons are ~3x slower than the reverse)."""
    import shapely

    per_left = shapely.get_num_coordinates(lg).sum() / len(lg)
    per_right = shapely.get_num_coordinates(rg).sum() / len(rg)
    if per_left != per_right:
        return bool(per_left < per_right)
    return len(lg) >= len(rg)


def _query(
    tree_geoms: np.ndarray, geoms: np.ndarray, predicate: str, distance: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(tree positions, query positions)`` of the pairs where ``predicate(query, tree)``."""
    import shapely

    tree = shapely.STRtree(tree_geoms)
    if distance is None:
        q, t = tree.query(geoms, predicate=predicate)
    else:
        q, t = tree.query(geoms, predicate=predicate, distance=distance)
    return t, q


def spatial_join(
    left: gpd.GeoDataFrame,
    right: gpd.GeoDataFrame,
    *,
    how: Literal["inner", "left"] = "inner",
    distance_m: float = 0.0,
) -> gpd.GeoDataFrame:
    """The join of ``left`` and ``right`` (module docstring). how: ``"inner"`` (default) or
    ``"left"``; distance_m: 0 (default) for ``intersects``, else ``within`` that many metres.
    ``right`` is reprojected to ``left``'s CRS when they differ."""
    import geopandas as gpd
    import pandas as pd

    if right.crs is not None and left.crs is not None and not right.crs.equals(left.crs):
        right = right.to_crs(left.crs)
    li, ri = join_pairs(left, right, distance_m)
    if how == "left":
        matched = np.zeros(len(left), bool)
        matched[li] = True
        lonely = np.flatnonzero(~matched)
        li = np.concatenate([li, lonely])
        ri = np.concatenate([ri, np.full(len(lonely), -1, np.int64)])
        order = np.argsort(li, kind="stable")
        li, ri = li[order], ri[order]
    geometry = left.geometry.name
    right_attrs = pd.DataFrame(right.drop(columns=[right.geometry.name]))
    out = joined_columns(pd.DataFrame(left), right_attrs, li, ri)
    return gpd.GeoDataFrame(out, geometry=geometry, crs=left.crs)


def joined_columns(
    left: pd.DataFrame,
    right: pd.DataFrame,
    li: np.ndarray,
    ri: np.ndarray,
    left_names: Collection[str] = (),
) -> pd.DataFrame:
    """Rows ``li`` of ``left`` beside rows ``ri`` of ``right`` (-1: nulls), index dropped; a
    right column whose name the left has (or is in ``left_names``, default none more) gets
    :data:`RIGHT_SUFFIX`."""
    import pandas as pd

    attrs = right.reset_index(drop=True)
    taken = attrs.reindex(ri) if (ri < 0).any() else attrs.take(ri)
    names = {*left.columns, *left_names}
    taken = taken.rename(
        columns={c: f"{c}{RIGHT_SUFFIX}" for c in taken.columns if c in names}
    ).reset_index(drop=True)
    base = left.take(li).reset_index(drop=True)
    return pd.concat([base, taken], axis=1)


def joined_table(
    left: pa.Table,
    geometry: str,
    rows: RowFacts,
    crs: Any,
    right: pd.DataFrame,
    li: np.ndarray,
    ri: np.ndarray,
) -> tuple[pa.Table, dict[str, Any]]:
    """The inner join's rows as the table stores them, and their facts: what
    :func:`~fused_celery.table.format.frame_to_arrow` gives for :func:`spatial_join`'s frame,
    without decoding or encoding a geometry. left: the left chunk as read (its ``geometry``
    column ISO WKB in ``crs``, no covering column; no other geometry column); rows: the left
    rows' facts; right: the right rows' columns but geometry; li / ri: the pairs
    (:func:`pairs`, no -1)."""
    import pyarrow as pa

    from fused_celery.table.format import COVERING_COLUMN, _crs_json, _is_wgs84

    attrs = _joined_attributes(left.drop_columns([geometry]), left.column_names, right, li, ri)
    taken = rows.take(li)
    bounds = taken.bounds
    ok = ~np.isnan(bounds).any(axis=1)
    bbox = (
        [bounds[ok, 0].min(), bounds[ok, 1].min(), bounds[ok, 2].max(), bounds[ok, 3].max()]
        if ok.any()
        else None
    )
    wgs84 = taken if _is_wgs84(crs) else taken.projected_to_wgs84(crs)
    facts: dict[str, Any] = {
        "primary": geometry,
        "columns": {geometry: {"geometry_types": taken.geometry_types(), "bbox": bbox}},
        "crs": _crs_json(crs),
        "metadata": wgs84.chunk_metadata("0", 0).model_dump(mode="json"),
    }
    covering = pa.StructArray.from_arrays(
        [pa.array(bounds[:, i], type=pa.float64()) for i in range(4)],
        names=["xmin", "ymin", "xmax", "ymax"],
        mask=pa.array(~ok, type=pa.bool_()),
    )
    wkb = left.column(geometry).take(pa.array(li, type=pa.int64()))
    if wkb.type != pa.binary():
        wkb = wkb.cast(pa.binary())
    names = [c for c in left.column_names if c != COVERING_COLUMN]
    names += [c for c in attrs.column_names if c not in names]
    columns = [wkb if c == geometry else attrs.column(c) for c in names]
    return pa.Table.from_arrays([*columns, covering], names=[*names, COVERING_COLUMN]), facts


def _plain_numbers(table: pa.Table) -> bool:
    """Whether every column of ``table`` is integers, floats or booleans without a null (which
    pandas holds as numpy arrays of the same type, and gives back unchanged)."""
    import pyarrow as pa

    return all(
        (pa.types.is_integer(c.type) or pa.types.is_floating(c.type) or pa.types.is_boolean(c.type))
        and c.null_count == 0
        for c in table.columns
    )


def _joined_attributes(
    left: pa.Table, left_names: Collection[str], right: pd.DataFrame, li: np.ndarray, ri: np.ndarray
) -> pa.Table:
    """The columns but geometry of the join's rows, as ``frame_to_arrow`` of
    :func:`joined_columns`' frame makes them (``bbox`` left out): taken in Arrow when that
    gives the same types (the left's survive the trip through pandas, the right's are numpy
    numbers, booleans or times), through pandas otherwise."""
    import pyarrow as pa

    from fused_celery.table.format import COVERING_COLUMN

    if COVERING_COLUMN in left.column_names:  # never output (a dict per row through pandas)
        left = left.drop_columns([COVERING_COLUMN])
    numeric_right = all(isinstance(t, np.dtype) and t.kind in "biufmM" for t in right.dtypes)
    plain_left = None
    if _plain_numbers(left):  # numbers without nulls: the same types after pandas, surely
        same_left = True
    else:
        plain_left = left.to_pandas()
        through = pa.Schema.from_pandas(plain_left, preserve_index=False)
        same_left = [f.type for f in through] == list(left.schema.types)
    if not (same_left and numeric_right):
        if plain_left is None:
            plain_left = left.to_pandas()
        plain = joined_columns(plain_left, right, li, ri, left_names=left_names)
        plain = plain.drop(columns=[COVERING_COLUMN], errors="ignore")
        return pa.Table.from_pandas(plain, preserve_index=False).replace_schema_metadata(None)
    taken_left = left.take(pa.array(li, pa.int64()))
    plain_right = pa.Table.from_pandas(right.reset_index(drop=True), preserve_index=False)
    taken_right = plain_right.take(pa.array(ri, pa.int64()))
    names = {*left.column_names, *left_names}
    columns = dict(zip(taken_left.column_names, taken_left.columns))
    for name, column in zip(taken_right.column_names, taken_right.columns):
        columns[f"{name}{RIGHT_SUFFIX}" if name in names else name] = column
    columns.pop(COVERING_COLUMN, None)
    return pa.Table.from_arrays(list(columns.values()), names=list(columns))
