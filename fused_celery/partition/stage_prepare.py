"""The prepare stage of an ingest: the input listed in slices (the fan-out), then each slice read,
prepared (:func:`~.prepare.prepare_frame`: EPSG:4326, repaired, measured, centroids) and written
to the work folder with its planning sample (the member, :func:`prepare_slice`).

GeoParquet slices of 2D points in degrees take a fast path: x, y are read from the WKB bytes and
nothing is staged; scatter reads the slice again (:func:`reread_points`). Slices of 2D
single-ring polygons in degrees take another (:func:`_polygons_fast`): their rings are read
from the WKB bytes, validity, centroids and facts computed from the coordinates, and the slice
is staged as read, with no geometry decoded unless the coordinates cannot prove it valid.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from fused_celery import storage
from fused_celery.errors import IngestInputError
from fused_celery.options import cpu_count, options
from fused_celery.partition.config import GeospatialPartitionJobStepConfig
from fused_celery.partition.fanout import slice_rows_for
from fused_celery.partition.read import (
    InputSlice,
    list_slices,
    parquet_frame,
    parquet_geo,
    read_parquet_table,
    read_slice,
    stream_sequential,
)
from fused_celery.partition.row_report import RowReport
from fused_celery.partition.run import IngestRun
from fused_celery.partition.workfiles import (
    AREA,
    BOUNDS,
    GEOMETRY_KEY,
    HAS_Z,
    HELPER_COLUMNS,
    ID,
    LENGTH,
    NCOORDS,
    TYPE,
    M,
    X,
    Y,
    encode_frame,
    prepared_url,
    reread_url,
    row_ids,
    sample_url,
    write_arrow,
)

if TYPE_CHECKING:
    import geopandas as gpd
    import pyarrow as pa

    from fused_celery.partition.prepare import PrepareReport
    from fused_celery.table.facts import RowFacts

SOURCE_ROW = "__fc_src"
"""Column holding each row's position in its slice while it is prepared."""


class PreparedSlice(TypedDict):
    """What :func:`prepare_slice` returns: slice_id, rows and measure after preparation, and
    report (a :class:`~.row_report.RowReport` as JSON: rows in and out, dropped, repaired)."""

    slice_id: int
    rows: int
    measure: float
    report: dict[str, Any]


# --- the fan-out --------------------------------------------------------------------------------


def list_input_slices(
    config: GeospatialPartitionJobStepConfig, *, slice_rows: int | None = None
) -> list[InputSlice]:
    """The input's slices (see :func:`.read.list_slices`); slice_rows: rows per slice at most
    (default None: ``options.ingest_slice_rows``). Empty input is an error."""
    slices = list_slices(config, target_rows=slice_rows)
    if not slices:
        raise IngestInputError(
            f"the input {config.input!r} has no rows; there is nothing to ingest"
        )
    return slices


def serving_processes(run: IngestRun) -> int:
    """Worker processes that will run the job's tasks: for a remote run, those of the live
    workers of its queue (1 when none is live, e.g. an autoscaled group at zero, or Redis does
    not answer); for a local run, this machine's CPUs (the local engine's processes)."""
    if not run.remote:
        return cpu_count()
    from redis.exceptions import RedisError

    from fused_celery.state.connection import redis_client
    from fused_celery.state.workers import processes_serving

    url = options.resolved_result_backend
    if not url:
        return 1
    try:
        found = processes_serving(
            redis_client(url), run.options.queue, within=options.autoscale_consumer_ttl
        )
    except RedisError:
        return 1
    return max(1, found)


def prepare_items(run: IngestRun) -> tuple[IngestRun, list[dict[str, Any]]]:
    """The prepare fan-out: one item per input slice (its JSON); the run with ``n_slices``.
    An input that makes fewer slices than there are worker processes to prepare them
    (:func:`serving_processes`) is listed again in smaller slices
    (:func:`.fanout.slice_rows_for`, down to ``options.ingest_min_slice_rows``). A layer GDAL
    reads only sequentially is first streamed into Parquet slices in the work folder
    (:func:`.read.stream_sequential`), in this task."""
    slices = list_input_slices(run.config, slice_rows=run.slice_rows)
    processes = serving_processes(run)
    if len(slices) < processes:
        total = _known_rows(slices)
        rows = slice_rows_for(total, run.slice_rows, processes, options.ingest_min_slice_rows)
        if rows < run.slice_rows:
            slices = list_input_slices(run.config, slice_rows=rows)
            run = run.model_copy(update={"slice_rows": rows})
    slices = stream_sequential(
        slices, run.config, storage.join(run.work, "streamed"), target_rows=run.slice_rows
    )
    items = [s.model_dump(mode="json") for s in slices]
    run = run.model_copy(update={"n_slices": len(slices), "input_rows": _known_rows(slices)})
    return run, items


def _known_rows(slices: Sequence[InputSlice]) -> int | None:
    """The rows of ``slices`` in all, or None when a slice's row count is unknown."""
    counts = [s.num_rows for s in slices]
    return None if None in counts else sum(c for c in counts if c is not None)


def slice_key(item: dict[str, Any]) -> str:
    """A prepare item's key: its slice id."""
    return str(item["slice_id"])


def describe_prepare(run: IngestRun, items: Sequence[Any]) -> str:
    """The log line when prepare starts."""
    return f"prepare: {len(items)} slice(s) of {run.config.input!r}"


# --- the member ---------------------------------------------------------------------------------


def _original_wkb(
    table: pa.Table, geo: dict[str, Any] | None, frame: gpd.GeoDataFrame
) -> pa.Array | None:
    """The active geometry's WKB as read from GeoParquet (ISO WKB by the spec), when the frame
    has one geometry column, that one; None otherwise."""
    import pyarrow as pa

    if not geo or len(geo.get("columns", {})) != 1:
        return None
    name = frame.geometry.name
    meta = geo["columns"].get(name)
    if (
        meta is None
        or str(meta.get("encoding", "WKB")).upper() != "WKB"
        or len(frame) != len(table)
    ):
        return None
    col = table.column(name).combine_chunks()
    return col.cast(pa.binary()) if pa.types.is_large_binary(col.type) else col


def _geometries_unchanged(report: PrepareReport, config: GeospatialPartitionJobStepConfig) -> bool:
    """Whether preparation kept every geometry as read (rows may have been dropped)."""
    return (
        report.reprojected_from is None
        and report.made_valid == 0
        and report.subdivided_rows == 0
        and report.exploded_rows_added == 0
        and not config.explode_geometries
    )


WKB_POINT_SIZE = 21
"""Bytes of a 2D point in WKB: byte order, type, x, y."""


def _points_fast(
    table: pa.Table, geo: dict[str, Any] | None, config: GeospatialPartitionJobStepConfig
) -> tuple[pa.Table, np.ndarray, np.ndarray, PrepareReport] | None:
    """Prepare a GeoParquet slice (its ``table`` and ``geo`` metadata, see
    :func:`.read.read_parquet_table`) of 2D points in degrees without decoding a geometry: the WKB
    column is kept as is and x, y are read from its bytes. None when the slice is anything else
    (other geometries, nulls, empty points, another CRS, ``remove_cols``, non-finite
    coordinates kept by ``drop_out_of_bounds=False``): the general path prepares it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from fused_celery.partition.prepare import WGS84_BOUNDS, PrepareReport, within_bounds

    name = _degrees_wkb_column(table, geo, config)
    if name is None:
        return None
    col = table.column(name).combine_chunks()
    large = pa.types.is_large_binary(col.type)
    if col.null_count or not (pa.types.is_binary(col.type) or large):
        return None
    n0 = len(col)
    if n0 and not (pc.binary_length(col).to_numpy() == WKB_POINT_SIZE).all():
        return None
    offsets = np.frombuffer(col.buffers()[1], np.int64 if large else np.int32)
    begin = int(offsets[col.offset]) if n0 else 0
    data = np.frombuffer(col.buffers()[2], np.uint8) if n0 else np.empty(0, np.uint8)
    raw = data[begin : begin + n0 * WKB_POINT_SIZE].reshape(n0, WKB_POINT_SIZE)
    if n0 and not ((raw[:, 0] == 1).all() and (raw[:, 1:5].view("<u4")[:, 0] == 1).all()):
        return None
    # x and y as strided float64 views of the bytes (a copy of raw[:, 5:21] is 25x slower)
    x, y = (
        np.ndarray((n0,), "<f8", buffer=data, offset=begin + at, strides=(WKB_POINT_SIZE,)).copy()
        if n0
        else np.zeros(0)
        for at in (5, 13)
    )
    finite = np.isfinite(x) & np.isfinite(y)
    inside = finite & within_bounds(x, y, x, y)
    report = PrepareReport(input_rows=n0)
    kept = _in_bounds(table, finite, inside, config, report, x, y)
    if kept is None:
        return None
    table, (x, y) = kept
    x0, y0, x1, y1 = WGS84_BOUNDS  # points past the bounds by rounding: their bbox clamped
    past = (x < x0) | (x > x1) | (y < y0) | (y > y1)
    near = past & within_bounds(x, y, x, y)
    if near.any():
        report.clamped_to_bounds = int(near.sum())
        x, y = np.where(near, np.clip(x, x0, x1), x), np.where(near, np.clip(y, y0, y1), y)
    report.output_rows = len(x)
    return _kept_table(table, name), x, y, report


def _in_bounds(
    table: pa.Table,
    finite: np.ndarray,
    inside: np.ndarray,
    config: GeospatialPartitionJobStepConfig,
    report: PrepareReport,
    *arrays: np.ndarray,
) -> tuple[pa.Table, tuple[np.ndarray, ...]] | None:
    """A fast path's rows after ``drop_out_of_bounds``: ``table`` and the per-row ``arrays``
    without the rows not ``inside`` the WGS84 bounds (counted in ``report``), or all of them
    with ``drop_out_of_bounds=False``; None when such rows are not ``finite`` (the general
    path names them in its error)."""
    import pyarrow as pa

    if inside.all():
        return table, arrays
    if config.drop_out_of_bounds is False:
        return (table, arrays) if finite.all() else None
    keep = np.flatnonzero(inside)
    report.dropped_out_of_bounds = int(len(inside) - len(keep))
    return table.take(pa.array(keep)), tuple(a[keep] for a in arrays)


def _degrees_wkb_column(
    table: pa.Table, geo: dict[str, Any] | None, config: GeospatialPartitionJobStepConfig
) -> str | None:
    """The geometry column of a GeoParquet slice (``table`` and its ``geo`` metadata) that a
    fast path may take as it is: the only one, WKB, in degrees, with neither ``lonlat_cols``
    nor ``remove_cols`` asked for; None otherwise."""
    if config.lonlat_cols is not None or config.remove_cols:
        return None
    if not geo or len(geo.get("columns", {})) != 1:
        return None
    name = geo.get("primary_column")
    meta = geo["columns"].get(name)
    if meta is None or name not in table.column_names:
        return None
    if str(meta.get("encoding", "WKB")).upper() != "WKB":
        return None
    if "crs" in meta and meta["crs"] is None:
        return None  # an unknown CRS: the general path tells whether it can be degrees
    if not _is_degrees(meta.get("crs", "OGC:CRS84")):
        return None
    return str(name)


def _kept_table(table: pa.Table, name: str) -> pa.Table:
    """A fast path's slice as the work files hold it: its columns as read but a ``bbox``
    covering (recomputed on write), geometry ``name`` as binary WKB and named in the schema
    metadata; a column with a reserved name is an :class:`IngestInputError`."""
    import pyarrow as pa

    table = table.drop_columns([c for c in table.column_names if c == "bbox" and c != name])
    for reserved in HELPER_COLUMNS:
        if reserved in table.column_names:
            raise IngestInputError(
                f"the input has a column named {reserved!r}, reserved; rename it"
            )
    if pa.types.is_large_binary(table.schema.field(name).type):
        table = table.set_column(
            table.column_names.index(name), name, table.column(name).cast(pa.binary())
        )
    return table.replace_schema_metadata({GEOMETRY_KEY: name.encode()})


def _polygons_fast(
    table: pa.Table, geo: dict[str, Any] | None, config: GeospatialPartitionJobStepConfig
) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, RowFacts, PrepareReport] | None:
    """Prepare a GeoParquet slice of 2D single-ring polygons in degrees without decoding a
    geometry: ``(table, x, y, measure, facts, report)``, what :func:`.prepare.prepare_frame`
    gives, from the rings read out of the WKB bytes
    (:func:`~.wkb_polygons.single_ring_polygons`): validity proven from the coordinates
    (GEOS checks the rest), centroids, and bounds, area and length as GEOS computes them. The
    WKB column is kept as is. None when the slice is anything else (other geometries, holes,
    nulls, another CRS, ``remove_cols``, an invalid polygon to repair, a row to subdivide,
    non-finite coordinates kept by ``drop_out_of_bounds=False``): the general path prepares
    it."""
    import shapely

    from fused_celery.partition.prepare import (
        BOUNDS_TOLERANCE,
        RING_BATCH,
        WGS84_BOUNDS,
        PrepareReport,
        check_subdivide,
        row_measures,
        within_bounds,
    )
    from fused_celery.partition.ring_shapes import (
        ring_bounds,
        ring_centroids,
        ring_measures,
        surely_simple,
    )
    from fused_celery.partition.wkb_polygons import single_ring_polygons
    from fused_celery.table.facts import RowFacts

    name = _degrees_wkb_column(table, geo, config)
    if name is None:
        return None
    col = table.column(name).combine_chunks()
    n0 = len(col)
    if not n0:
        return None
    parts = []
    for a in range(0, n0, RING_BATCH):  # a batch's arrays stay in the CPU's caches
        rings = single_ring_polygons(col.slice(a, RING_BATCH))
        if rings is None:
            return None
        parts.append(
            (surely_simple(rings), *ring_centroids(rings), ring_bounds(rings),
             *ring_measures(rings), rings.count)
        )  # fmt: skip
    simple, x, y, ok, bounds, area, length, count = (np.concatenate(p) for p in zip(*parts))

    def decoded(rows: np.ndarray) -> np.ndarray:  # None where GEOS cannot read the WKB
        return shapely.from_wkb(col.take(rows).to_numpy(False), on_invalid="ignore")

    # GEOS decides the rest; an invalid one (or one GEOS cannot read, e.g. an unclosed ring)
    # is for the general path, which repairs it or names it in its error
    unproven = np.flatnonzero(~simple)
    if len(unproven) and not shapely.is_valid(decoded(unproven)).all():
        return None
    if not ok.all():  # zero area: GEOS's centroid (of the boundary)
        rest = np.flatnonzero(~ok)
        centroids = shapely.centroid(decoded(rest))
        x[rest], y[rest] = shapely.get_x(centroids), shapely.get_y(centroids)
    subdivide = check_subdivide(
        config.subdivide_start, config.subdivide_stop, config.subdivide_method
    )
    if subdivide is not None and (area > subdivide[0]).any():
        return None
    report = PrepareReport(input_rows=n0)
    finite = np.isfinite(bounds).all(axis=1)
    inside = finite & within_bounds(*bounds.T)
    kept = _in_bounds(table, finite, inside, config, report, x, y, bounds, area, length, count)
    if kept is None:
        return None
    table, (x, y, bounds, area, length, count) = kept
    n = len(x)
    facts = RowFacts(
        bounds, area, length, count.astype(np.int64), np.full(n, 3, np.int8), np.zeros(n, bool)
    )
    facts, report.clamped_to_bounds = facts.clamped(WGS84_BOUNDS, BOUNDS_TOLERANCE)
    report.output_rows = n
    measure = row_measures(facts, config.partitioning_method)
    return _kept_table(table, name), x, y, measure, facts, report


def _may_be_points(sl: InputSlice, config: GeospatialPartitionJobStepConfig) -> bool:
    """Whether the Parquet slice can take the points fast path, from its metadata alone: one
    GeoParquet geometry column whose ``geometry_types`` are ``["Point"]`` or not given."""
    if config.lonlat_cols is not None or config.remove_cols or sl.error is not None:
        return False
    geo = parquet_geo(sl)
    if not geo or len(geo.get("columns", {})) != 1:
        return False
    meta = geo["columns"].get(geo.get("primary_column"))
    return meta is not None and list(meta.get("geometry_types") or ["Point"]) == ["Point"]


def points_measure(config: GeospatialPartitionJobStepConfig, n: int) -> np.ndarray:
    """The measure of ``n`` 2D points: 0 for ``area``/``length``, else 1 (a row, a coordinate)."""
    return np.zeros(n) if config.partitioning_method in ("area", "length") else np.ones(n)


def reread_points(run: IngestRun, slice_id: int) -> pa.Table | None:
    """The prepared table of a slice of 2D points that prepare did not stage (see
    :data:`~.workfiles.REREAD_SUFFIX`), read again from the input with the helper columns
    scatter needs; None when the slice was staged."""
    import pyarrow as pa

    try:
        raw = storage.read_bytes(reread_url(run.work, slice_id))
    except FileNotFoundError:
        return None
    config = run.config
    sl = InputSlice.model_validate_json(raw)
    table, geo = read_parquet_table(
        sl, lonlat_cols=config.lonlat_cols, load_columns=config.load_columns
    )
    fast = _points_fast(table, geo, config)
    if fast is None:
        raise IngestInputError(
            f"ingest input {sl.url} changed while it was ingested (slice {slice_id} is no longer "
            "2D points in degrees); run the ingest again"
        )
    table, x, y, _ = fast
    n = len(x)
    ids = row_ids(int(slice_id), n)
    for name, values in {X: x, Y: y, M: points_measure(config, n), ID: ids}.items():
        table = table.append_column(name, pa.array(values))
    return table


def _is_degrees(crs: Any) -> bool:
    """Whether GeoParquet's ``crs`` value is EPSG:4326 or OGC:CRS84."""
    return _is_degrees_json(json.dumps(crs, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _is_degrees_json(crs: str) -> bool:
    """:func:`_is_degrees` of a JSON-encoded value (parsing a CRS costs ~15 ms: cached)."""
    from pyproj import CRS

    try:
        c = CRS.from_user_input(json.loads(crs))
    except Exception:
        return False
    return c.to_epsg() == 4326 or c.to_string() in ("OGC:CRS84", "EPSG:4326")


def _stage_prepared(
    run: IngestRun,
    slice_id: int,
    table: pa.Table,
    x: np.ndarray,
    y: np.ndarray,
    measure: np.ndarray,
    facts: RowFacts,
) -> np.ndarray:
    """Write prepared slice ``slice_id`` (its rows ``table``, their centroids, measures and
    facts as helper columns) to the work folder; returns the rows' ids."""
    import pyarrow as pa

    ids = row_ids(slice_id, len(x))
    helpers = {X: x, Y: y, M: measure, ID: ids}
    helpers.update({name: facts.bounds[:, i] for i, name in enumerate(BOUNDS)})
    helpers.update(
        {AREA: facts.area, LENGTH: facts.length, NCOORDS: facts.num_coords,
         TYPE: facts.type_id, HAS_Z: facts.has_z}
    )  # fmt: skip
    for name, values in helpers.items():
        table = table.append_column(name, pa.array(values))
    write_arrow(prepared_url(run.work, slice_id), table)
    return ids


def prepare_slice(run: IngestRun, input_slice: dict[str, Any]) -> PreparedSlice:
    """The prepare member: read and prepare one slice (``input_slice``: an
    :class:`~.read.InputSlice` as JSON); write it and its planning sample to the work folder.

    Returns the slice's :class:`PreparedSlice` (rows and total measure after preparation; the
    report's counts of dropped, repaired and added rows).
    """
    import pyarrow as pa

    from fused_celery.partition.prepare import prepare_frame
    from fused_celery.table import evenly_spaced

    config = run.config
    sl = InputSlice.model_validate(input_slice)
    fast = polygons = raw = original = None
    if sl.format == "parquet":  # the points or polygons fast path, else a frame from the table
        if _may_be_points(sl, config):  # read the geometry alone first
            table, geo = read_parquet_table(sl, lonlat_cols=config.lonlat_cols, load_columns=[])
            fast = _points_fast(table, geo, config)
        if fast is None:
            table, geo = read_parquet_table(
                sl, lonlat_cols=config.lonlat_cols, load_columns=config.load_columns
            )
            polygons = _polygons_fast(table, geo, config)
        if fast is None and polygons is None:
            raw = parquet_frame(sl, table, geo, lonlat_cols=config.lonlat_cols)
            original = _original_wkb(table, geo, raw)
            if original is not None and SOURCE_ROW not in raw.columns:
                raw[SOURCE_ROW] = np.arange(len(raw))  # each row's position, to reuse its WKB
            else:
                original = None
    if fast is not None:  # nothing staged: scatter reads the slice again (reread_points)
        _, x, y, report = fast
        n = len(x)
        measure = points_measure(config, n)
        ids = row_ids(sl.slice_id, n)
        storage.write_bytes(
            reread_url(run.work, sl.slice_id),
            sl.model_dump_json().encode(),
            durable=False,
        )
    elif polygons is not None:  # staged as read, with the facts of its rings
        table, x, y, measure, facts, report = polygons
        n = len(x)
        ids = _stage_prepared(run, sl.slice_id, table, x, y, measure, facts)
    else:
        prepared = prepare_frame(
            raw if raw is not None else read_slice(sl, config),
            partitioning_method=config.partitioning_method,
            load_columns=(
                config.load_columns
                if config.load_columns is None or original is None
                else [*config.load_columns, SOURCE_ROW]
            ),
            remove_cols=config.remove_cols,
            explode_geometries=config.explode_geometries,
            drop_out_of_bounds=config.drop_out_of_bounds,
            subdivide_method=config.subdivide_method,
            subdivide_start=config.subdivide_start,
            subdivide_stop=config.subdivide_stop,
            allow_empty=True,
        )
        n, x, y, measure, report = (
            len(prepared.frame),
            prepared.x,
            prepared.y,
            prepared.measure,
            prepared.report,
        )
        frame, wkb = prepared.frame, None
        if original is not None:
            if _geometries_unchanged(prepared.report, config):
                wkb = original.take(pa.array(frame[SOURCE_ROW].to_numpy()))
            frame = frame.drop(columns=[SOURCE_ROW])
        table = encode_frame(frame, wkb)
        ids = _stage_prepared(run, sl.slice_id, table, x, y, measure, prepared.facts)

    k = run.samples_for(sl.num_rows)
    pick = evenly_spaced(n, k) if n > k else np.arange(n)
    w = measure[pick]
    total = float(measure.sum())
    scale = total / float(w.sum()) if len(pick) and float(w.sum()) > 0 else 1.0
    sample = pa.table({"x": x[pick], "y": y[pick], "w": w * scale, "id": ids[pick]})
    write_arrow(sample_url(run.work, sl.slice_id), sample)
    return {
        "slice_id": sl.slice_id,
        "rows": n,
        "measure": total,
        "report": RowReport.of(report).model_dump(mode="json"),
    }
