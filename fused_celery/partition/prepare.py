"""Preparing rows for partitioning: pure geopandas/shapely over an in-memory GeoDataFrame.

:func:`prepare_frame` applies, in order:

1. ``load_columns`` (keep these and the geometry) and ``remove_cols`` (drop these); a name that is
   not a column is an :class:`IngestInputError` listing the columns there are;
2. rows with a null or empty geometry are dropped (counted in the report);
3. the CRS: a frame in another CRS is reprojected to EPSG:4326 (an error names the CRS when that
   is impossible); a frame without CRS is taken as EPSG:4326 when at least half of its rows lie
   within [-180, 180] × [-90, 90], and is an error otherwise ("cannot be degrees");
4. invalid geometries are repaired with ``shapely.make_valid`` (counted in the report); single-ring
   polygons that :mod:`~fused_celery.partition.ring_shapes` proves valid from their coordinates
   skip GEOS's check, and their centroids (step 8) come from the same coordinates;
5. ``explode_geometries``: multi-part geometries become one row per part;
6. ``drop_out_of_bounds`` (None means True): rows whose bbox is not within the WGS84 bounds are
   dropped (counted); with False they are kept, but non-finite coordinates are still an error.
   A bbox past the bounds by at most :data:`BOUNDS_TOLERANCE` (floating-point error, e.g. a
   bound of 180.00000000000006 after reprojection) is inside: the row is kept as it is and its
   stored bbox clamped to the bounds (counted as ``clamped_to_bounds``);
7. subdivision (``subdivide_method="area"``): a polygon whose area in WGS84 square degrees is over
   ``subdivide_start`` is cut in halves of its bbox (along the longer side) until every piece's
   area is at most ``subdivide_stop`` (start ≥ stop > 0; one of them None takes the other's value);
   each piece is a row with the original's attributes;
8. the measure of each row for ``partitioning_method`` (``rows``: 1, ``area``: area in square
   degrees, ``length``: length in degrees, ``coords``: number of coordinates; the units of
   :class:`~fused_celery.table.facts.ChunkMetadata`) and its centroid.

An input with no rows left is an :class:`IngestInputError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from fused_celery.errors import IngestInputError

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd

    from fused_celery.table.facts import RowFacts

PartitioningMethod = Literal["rows", "area", "length", "coords"]
PARTITIONING_METHODS: tuple[str, ...] = ("rows", "area", "length", "coords")
WGS84_BOUNDS = (-180.0, -90.0, 180.0, 90.0)
BOUNDS_TOLERANCE = 1e-9
"""Degrees (about 0.1 mm) a bbox may pass :data:`WGS84_BOUNDS` by and still be inside: the
floating-point error of a reprojection or a source that rounds, never real data."""
MAX_SUBDIVIDE_DEPTH = 100
"""Cuts per geometry at most; a guard, reached only with a tiny ``subdivide_stop``."""


@dataclass
class PrepareReport:
    """What preparation did: rows in and out, and the rows repaired, dropped or added."""

    input_rows: int = 0
    output_rows: int = 0
    dropped_null_geometries: int = 0
    made_valid: int = 0
    dropped_out_of_bounds: int = 0
    clamped_to_bounds: int = 0
    subdivided_rows: int = 0
    exploded_rows_added: int = 0
    reprojected_from: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PreparedFrame:
    """A prepared input: ``frame`` (EPSG:4326, index 0..n-1), per-row ``x``, ``y`` (centroid),
    ``measure`` (for the partitioning method) and ``facts`` (bounds, area, length, coordinates,
    type: :class:`~fused_celery.table.facts.RowFacts`), and the :class:`PrepareReport`."""

    frame: gpd.GeoDataFrame
    x: np.ndarray
    y: np.ndarray
    measure: np.ndarray
    facts: RowFacts
    report: PrepareReport


def within_bounds(
    minx: np.ndarray, miny: np.ndarray, maxx: np.ndarray, maxy: np.ndarray
) -> np.ndarray:
    """Whether each bbox lies within :data:`WGS84_BOUNDS`, up to :data:`BOUNDS_TOLERANCE`
    (NaN: False)."""
    x0, y0, x1, y1 = WGS84_BOUNDS
    t = BOUNDS_TOLERANCE
    with np.errstate(invalid="ignore"):
        return (minx >= x0 - t) & (miny >= y0 - t) & (maxx <= x1 + t) & (maxy <= y1 + t)


def check_subdivide(
    start: float | None, stop: float | None, method: str | None = "area"
) -> tuple[float, float] | None:
    """``(start, stop)`` to subdivide with, or None for no subdivision.

    None for both (or ``method`` None) means no subdivision; one None takes the other's value.
    Raises ValueError unless ``start >= stop > 0`` and ``method`` is ``"area"`` or None (and
    None only without start/stop).
    """
    if start is None and stop is None:
        return None
    if method is None:
        raise ValueError(
            'subdivide_start / subdivide_stop need subdivide_method="area" (the only method)'
        )
    if method != "area":
        raise ValueError(f'subdivide_method must be "area" or None, got {method!r}')
    start = stop if start is None else start
    stop = start if stop is None else stop
    assert start is not None and stop is not None
    if not (np.isfinite(stop) and stop > 0):
        raise ValueError(
            f"subdivide_stop must be > 0 (square degrees), got {stop!r}: a stop of 0 would "
            "subdivide forever"
        )
    if not (np.isfinite(start) and start >= stop):
        raise ValueError(
            f"subdivide_start ({start!r}) must be >= subdivide_stop ({stop!r}), both in WGS84 "
            "square degrees"
        )
    return float(start), float(stop)


def frame_from_lonlat(df: pd.DataFrame, lon: str, lat: str) -> gpd.GeoDataFrame:
    """Point GeoDataFrame (EPSG:4326) from longitude/latitude columns of ``df`` (kept as
    attributes). Missing columns, non-numeric values or NaN coordinates are errors."""
    import geopandas as gpd
    import pandas as pd

    missing = [c for c in (lon, lat) if c not in df.columns]
    if missing:
        raise IngestInputError(
            f"lonlat_cols names missing column(s) {missing}; the input has {list(df.columns)}"
        )
    values = {}
    for c in (lon, lat):
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() & df[c].notna()
        if bad.any():
            raise IngestInputError(
                f"column {c!r} of lonlat_cols has non-numeric values (e.g. "
                f"{df[c][bad].iloc[0]!r} in row {bad.to_numpy().nonzero()[0][0]})"
            )
        if v.isna().any():
            raise IngestInputError(
                f"column {c!r} of lonlat_cols has {int(v.isna().sum())} missing (NaN) "
                "coordinate(s); drop or fill those rows first"
            )
        values[c] = v.to_numpy(dtype=np.float64)
    geometry = gpd.points_from_xy(values[lon], values[lat])
    return gpd.GeoDataFrame(df.copy(), geometry=geometry, crs="EPSG:4326")


def _select_columns(
    gdf: gpd.GeoDataFrame, load_columns: list[str] | None, remove_cols: list[str]
) -> gpd.GeoDataFrame:
    geom = gdf.geometry.name
    names = [c for c in gdf.columns]
    if load_columns is not None:
        missing = [c for c in load_columns if c not in names]
        if missing:
            raise IngestInputError(
                f"load_columns names missing column(s) {missing}; the input has {names}"
            )
        keep = [c for c in names if c in set(load_columns) or c == geom]
        gdf = gdf[keep]
    if remove_cols:
        missing = [c for c in remove_cols if c not in names]
        if missing:
            raise IngestInputError(
                f"remove_cols names missing column(s) {missing}; the input has {names}"
            )
        if geom in remove_cols:
            raise IngestInputError(
                f"remove_cols cannot remove the geometry column {geom!r}; it is what is partitioned"
            )
        gdf = gdf.drop(columns=[c for c in remove_cols if c in gdf.columns])
    return gdf


def _to_wgs84(gdf: gpd.GeoDataFrame, report: PrepareReport) -> gpd.GeoDataFrame:
    import shapely

    crs = gdf.crs
    if crs is None:
        b = shapely.bounds(np.asarray(gdf.geometry.array, dtype=object))
        inside = within_bounds(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
        if len(inside) and inside.mean() < 0.5:
            tb = np.nanmin(b[:, 0]), np.nanmin(b[:, 1]), np.nanmax(b[:, 2]), np.nanmax(b[:, 3])
            raise IngestInputError(
                "the input has no CRS and its coordinates cannot be degrees (bounds "
                f"{tuple(round(float(v), 3) for v in tb)}, {int((~inside).sum())} of "
                f"{len(inside)} rows outside [-180, 180] x [-90, 90]); set its CRS, e.g. "
                "gdf.set_crs('EPSG:3857')"
            )
        report.notes.append("no CRS: taken as EPSG:4326")
        return gdf.set_crs("EPSG:4326")
    if crs.to_epsg() == 4326:
        return gdf
    name = crs.to_string()
    try:
        out = gdf.to_crs("EPSG:4326")
    except Exception as exc:  # pyproj raises several types
        raise IngestInputError(
            f"cannot reproject the input from its CRS {name!r} ({crs.name}) to EPSG:4326: {exc}"
        ) from exc
    report.reprojected_from = name
    return out


def _subdivide(gdf: gpd.GeoDataFrame, start: float, stop: float) -> tuple[gpd.GeoDataFrame, int]:
    """Cut rows whose area > ``start`` into pieces of area <= ``stop``; returns the frame and
    the number of rows that were cut."""
    import geopandas as gpd
    import shapely

    geoms = np.asarray(gdf.geometry.array, dtype=object)
    big = np.flatnonzero(shapely.area(geoms) > start)
    if not len(big):
        return gdf, 0
    pieces = geoms[big]
    owner = big.copy()
    done_geoms: list[np.ndarray] = []
    done_owner: list[np.ndarray] = []
    for _ in range(MAX_SUBDIVIDE_DEPTH):
        area = shapely.area(pieces)
        small = area <= stop
        done_geoms.append(pieces[small])
        done_owner.append(owner[small])
        pieces, owner = pieces[~small], owner[~small]
        if not len(pieces):
            break
        b = shapely.bounds(pieces)
        wide = (b[:, 2] - b[:, 0]) >= (b[:, 3] - b[:, 1])
        midx = (b[:, 0] + b[:, 2]) / 2
        midy = (b[:, 1] + b[:, 3]) / 2
        first = shapely.box(
            b[:, 0], b[:, 1], np.where(wide, midx, b[:, 2]), np.where(wide, b[:, 3], midy)
        )
        second = shapely.box(
            np.where(wide, midx, b[:, 0]), np.where(wide, b[:, 1], midy), b[:, 2], b[:, 3]
        )
        halves = np.concatenate(
            [shapely.intersection(pieces, first), shapely.intersection(pieces, second)]
        )
        owner = np.concatenate([owner, owner])
        halves = _polygonal(halves)
        keep = ~(shapely.is_empty(halves) | shapely.is_missing(halves))
        pieces, owner = halves[keep], owner[keep]
    done_geoms.append(pieces)
    done_owner.append(owner)
    new_geoms = np.concatenate(done_geoms)
    new_owner = np.concatenate(done_owner)
    order = np.argsort(new_owner, kind="stable")
    new_geoms, new_owner = new_geoms[order], new_owner[order]
    untouched = np.setdiff1d(np.arange(len(gdf)), big)
    rows = np.concatenate([untouched, new_owner])
    geometry = np.concatenate([geoms[untouched], new_geoms])
    order = np.argsort(rows, kind="stable")  # keep the input's row order
    out = gdf.iloc[rows[order]].copy()
    out = out.set_geometry(
        gpd.GeoSeries(geometry[order], index=out.index, crs=gdf.crs), crs=gdf.crs
    )
    return out, len(big)


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """Geometry collections from an intersection reduced to their polygonal parts."""
    import shapely

    coll = np.flatnonzero(shapely.get_type_id(geoms) == 7)
    for i in coll:
        parts = shapely.get_parts(geoms[i])
        polys = parts[np.isin(shapely.get_type_id(parts), (3, 6))]
        geoms[i] = shapely.union_all(polys) if len(polys) else shapely.Polygon()
    return geoms


#: Polygons whose rings :func:`single_rings` measures at a time (bounds its temporary arrays to
#: a few MB each, which stay in the CPU's caches).
RING_BATCH = 16_384


class SingleRings(NamedTuple):
    """What :mod:`~fused_celery.partition.ring_shapes` tells of the single-ring polygons among
    some geometries: their positions (``single``), whether each is surely valid (``simple``),
    and their centroids (``cx``, ``cy``; ``ok`` False where GEOS must give it)."""

    single: np.ndarray
    simple: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    ok: np.ndarray


def single_rings(geoms: np.ndarray) -> SingleRings:
    """The :class:`SingleRings` of shapely ``geoms``: the polygons without holes, their
    coordinates read (``get_coordinates``) and measured :data:`RING_BATCH` at a time."""
    import shapely

    from fused_celery.partition.ring_shapes import ring_centroids, rings_of, surely_simple

    single = np.flatnonzero(
        (shapely.get_type_id(geoms) == 3) & (shapely.get_num_interior_rings(geoms) == 0)
    )
    simple, ok = np.zeros(len(single), bool), np.zeros(len(single), bool)
    cx, cy = np.full(len(single), np.nan), np.full(len(single), np.nan)
    for a in range(0, len(single), RING_BATCH):
        part = geoms[single[a : a + RING_BATCH]]
        xy, owner = shapely.get_coordinates(part, return_index=True)
        rings = rings_of(xy[:, 0], xy[:, 1], owner, len(part))
        b = a + len(part)
        simple[a:b] = surely_simple(rings)
        cx[a:b], cy[a:b], ok[a:b] = ring_centroids(rings)
    return SingleRings(single, simple, cx, cy, ok)


def geometries_valid(geoms: np.ndarray, rings: SingleRings | None = None) -> np.ndarray:
    """``shapely.is_valid`` of ``geoms``, with the single-ring polygons that
    :func:`~fused_celery.partition.ring_shapes.surely_simple` proves valid from their
    coordinates left out of GEOS's check (most of them: a few times cheaper than GEOS's).
    rings: :func:`single_rings` of ``geoms`` when known (default None: computed)."""
    import shapely

    found = rings if rings is not None else single_rings(geoms)
    valid = np.zeros(len(geoms), bool)
    valid[found.single] = found.simple
    rest = np.flatnonzero(~valid)
    if len(rest):
        valid[rest] = shapely.is_valid(geoms[rest])
    return valid


def centroids_xy(
    geoms: np.ndarray, rings: SingleRings | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The centroids' ``(x, y)`` of shapely ``geoms`` (non-empty): GEOS's, but those of
    single-ring polygons computed from their coordinates
    (:func:`~fused_celery.partition.ring_shapes.ring_centroids`, equal up to rounding).
    rings: :func:`single_rings` of ``geoms`` when known (default None: computed)."""
    import shapely

    found = rings if rings is not None else single_rings(geoms)
    x, y = np.full(len(geoms), np.nan), np.full(len(geoms), np.nan)
    done = np.zeros(len(geoms), bool)
    at = found.single[found.ok]
    x[at], y[at], done[at] = found.cx[found.ok], found.cy[found.ok], True
    rest = np.flatnonzero(~done)
    if len(rest):
        centroids = shapely.centroid(geoms[rest])
        x[rest], y[rest] = shapely.get_x(centroids), shapely.get_y(centroids)
    return x, y


def row_measures(facts: RowFacts, method: str) -> np.ndarray:
    """Per-row measure for ``method`` from the rows' facts: ``rows`` 1, ``area`` square degrees,
    ``length`` degrees, ``coords`` coordinate count (as float64)."""
    if method == "rows":
        return np.ones(len(facts.type_id))
    if method == "area":
        return np.asarray(facts.area, np.float64)
    if method == "length":
        return np.asarray(facts.length, np.float64)
    if method == "coords":
        return np.asarray(facts.num_coords, np.float64)
    raise ValueError(f"partitioning_method must be one of {PARTITIONING_METHODS}, got {method!r}")


def prepare_frame(
    data: gpd.GeoDataFrame,
    *,
    partitioning_method: PartitioningMethod = "rows",
    load_columns: list[str] | None = None,
    remove_cols: list[str] | None = None,
    explode_geometries: bool = False,
    drop_out_of_bounds: bool | None = None,
    subdivide_method: str | None = "area",
    subdivide_start: float | None = None,
    subdivide_stop: float | None = None,
    allow_empty: bool = False,
) -> PreparedFrame:
    """Prepare ``data`` for planning (steps in the module docstring).

    partitioning_method: measure per row (default ``"rows"``). load_columns: columns to keep
    (default all). remove_cols: columns to drop (default none). explode_geometries: one row per
    part (default False). drop_out_of_bounds: drop rows outside WGS84 bounds (default None, i.e.
    True). subdivide_method / subdivide_start / subdivide_stop: see :func:`check_subdivide`
    (defaults ``"area"``, None, None: no subdivision). allow_empty: return an empty result
    instead of raising when no row is left (default False; one slice of a larger input may be
    empty).
    """
    import geopandas as gpd
    import shapely

    from fused_celery.table.facts import RowFacts

    if partitioning_method not in PARTITIONING_METHODS:
        raise ValueError(
            f"partitioning_method must be one of {PARTITIONING_METHODS}, got "
            f"{partitioning_method!r}"
        )
    subdivide = check_subdivide(subdivide_start, subdivide_stop, subdivide_method)
    if not isinstance(data, gpd.GeoDataFrame):
        raise IngestInputError(
            f"expected a geopandas.GeoDataFrame, got {type(data).__name__}; for a table with "
            "longitude/latitude columns pass lonlat_cols"
        )
    try:
        data.geometry  # noqa: B018 - raises without an active geometry column
    except AttributeError as exc:
        raise IngestInputError(
            "the input GeoDataFrame has no active geometry column; call set_geometry() first"
        ) from exc
    report = PrepareReport(input_rows=len(data))
    gdf = _select_columns(data, load_columns, list(remove_cols or []))
    gdf = gdf.reset_index(drop=True)

    geoms = np.asarray(gdf.geometry.array, dtype=object)
    null = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if null.any():
        report.dropped_null_geometries = int(null.sum())
        gdf = gdf[~null].reset_index(drop=True)
    if not len(gdf) and not allow_empty:
        raise IngestInputError(
            f"the input has no rows to ingest ({report.input_rows} row(s), "
            f"{report.dropped_null_geometries} with a null or empty geometry)"
        )

    gdf = _to_wgs84(gdf, report)

    geoms = np.asarray(gdf.geometry.array, dtype=object)
    b = shapely.bounds(geoms)
    rings = single_rings(geoms)  # validity and centroids of the polygons without holes
    # Non-finite coordinates are handled with the bounds below; make_valid cannot take them.
    invalid = ~geometries_valid(geoms, rings) & np.isfinite(b).all(axis=1)
    unchanged = not invalid.any()
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid])
        b[invalid] = shapely.bounds(geoms[invalid])
        report.made_valid = int(invalid.sum())
        gdf = gdf.set_geometry(gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs))

    if explode_geometries:
        before = len(gdf)
        gdf = gdf.explode(index_parts=False, ignore_index=True)
        report.exploded_rows_added = len(gdf) - before
        b = shapely.bounds(np.asarray(gdf.geometry.array, dtype=object))
        unchanged = False

    finite = np.isfinite(b).all(axis=1)
    inside = finite & within_bounds(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
    if drop_out_of_bounds is None or drop_out_of_bounds:
        if not inside.all():
            report.dropped_out_of_bounds = int((~inside).sum())
            gdf = gdf[inside].reset_index(drop=True)
            unchanged = False
    elif not finite.all():
        raise IngestInputError(
            f"{int((~finite).sum())} row(s) have non-finite (NaN or infinite) coordinates, e.g. "
            f"row {int(np.flatnonzero(~finite)[0])}; drop them or pass drop_out_of_bounds=True"
        )
    if not len(gdf) and not allow_empty:
        raise IngestInputError(
            f"no rows left to ingest: all {report.input_rows} row(s) are outside the WGS84 "
            "bounds [-180, 180] x [-90, 90] or have no geometry"
        )

    if subdivide is not None:
        gdf, report.subdivided_rows = _subdivide(gdf, *subdivide)
        gdf = gdf.reset_index(drop=True)
        unchanged = unchanged and not report.subdivided_rows

    geoms = np.asarray(gdf.geometry.array, dtype=object)
    facts, report.clamped_to_bounds = RowFacts.of(geoms).clamped(WGS84_BOUNDS, BOUNDS_TOLERANCE)
    if len(geoms) and (facts.type_id == 0).all():  # points are their centroids
        x, y = facts.bounds[:, 0], facts.bounds[:, 1]
    else:
        x, y = centroids_xy(geoms, rings if unchanged else None)
    report.output_rows = len(gdf)
    return PreparedFrame(
        frame=gdf,
        x=np.asarray(x, np.float64),
        y=np.asarray(y, np.float64),
        measure=row_measures(facts, partitioning_method),
        facts=facts,
        report=report,
    )


def ensure_geodataframe(data: Any, lonlat_cols: tuple[str, str] | None = None) -> gpd.GeoDataFrame:
    """``data`` as a GeoDataFrame: a GeoDataFrame as is, a DataFrame through ``lonlat_cols``
    (required then), anything else an :class:`IngestInputError`."""
    import geopandas as gpd
    import pandas as pd

    if isinstance(data, gpd.GeoDataFrame) and lonlat_cols is None:
        return data
    if isinstance(data, pd.DataFrame):
        if lonlat_cols is None:
            raise IngestInputError(
                "a pandas DataFrame without geometry needs lonlat_cols=(lon_column, lat_column)"
            )
        return frame_from_lonlat(pd.DataFrame(data), *lonlat_cols)
    raise IngestInputError(
        f"cannot ingest a {type(data).__name__}; pass a GeoDataFrame, a DataFrame with "
        "lonlat_cols, or a path"
    )
