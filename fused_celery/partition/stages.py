"""The stages of an ingest, as plain functions over storage: no Celery, no Redis.

An ingest is ``prepare`` (one call per input slice) → ``plan`` (once) → ``scatter`` (one call per
prepared slice) → ``write`` (one call per planned file) → ``commit`` (once). The Celery pipeline
(:mod:`.pipeline`) runs each fan-out as a chord; the local runner (:mod:`.local`) runs the same
functions in this process. Every function is idempotent and returns a small JSON-able dict that
depends only on its inputs (a redelivered Celery task returns the same value, which keeps a Redis
chord's count right).

Everything between stages lives under the run's work folder, ``<table>/_staging/<job_id>/_work``
(removed by the commit, or by :func:`discard` when the job fails or is cancelled):

- ``prepared/<slice>.arrow``: the slice after :func:`~.prepare.prepare_frame`, geometry as ISO
  WKB in EPSG:4326, plus the columns ``__fc_x``, ``__fc_y`` (centroid), ``__fc_m`` (measure),
  ``__fc_id`` (row id ``slice_id * 2**32 + row``, which seeds the identical-centroid splits) and
  the row's :class:`~fused_celery.table.RowFacts` (bounds, area, length, coordinates, type), so
  that later stages never decode a geometry; or, for a GeoParquet slice of 2D points in degrees
  (prepared from its WKB bytes alone), ``prepared/<slice>.reread.json``: the input slice, which
  scatter reads again instead of a staged copy;
- ``samples/<slice>.arrow``: an evenly spaced sample of at most ``sample_rows / n_slices``
  rows of the slice (``x, y, w, id``; ``w`` scaled so the sample weighs what the slice weighs);
- ``plan.npz``: the kd split tree (planned on the pooled samples) and the maxima;
- ``scattered/<slice>.arrow``: the slice's rows routed to their files, one record batch per file,
  sorted by chunk.

A plan made from a sample can leave a chunk or file over its maximum; :func:`write_file` refines
such chunks with the exact rows (splitting them again with the same rules) and splits a file
over its maximum into consecutive runs of chunks, named ``<file>``, ``<file>-1``, ... . When the
input has at most ``sample_rows`` rows the sample is the data and the plan is exact.
"""

from __future__ import annotations

import functools
import io
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from fused_celery import storage
from fused_celery.errors import IngestInputError
from fused_celery.partition.config import GeospatialPartitionJobStepConfig
from fused_celery.partition.plan import PartitionTree, plan_partitions, resolve_maxima

if TYPE_CHECKING:
    import geopandas as gpd
    import pyarrow as pa

    from fused_celery.partition.prepare import PrepareReport
    from fused_celery.partition.read import InputSlice
    from fused_celery.table import RowFacts, TableWriter

X, Y, M, ID, CHUNK = "__fc_x", "__fc_y", "__fc_m", "__fc_id", "__fc_chunk"
BOUNDS = ("__fc_minx", "__fc_miny", "__fc_maxx", "__fc_maxy")
AREA, LENGTH, NCOORDS, TYPE, HAS_Z = "__fc_area", "__fc_len", "__fc_nc", "__fc_type", "__fc_z"
FACT_COLUMNS = (*BOUNDS, AREA, LENGTH, NCOORDS, TYPE, HAS_Z)
HELPER_COLUMNS = (X, Y, M, ID, CHUNK, *FACT_COLUMNS)
GEOMETRY_KEY = b"fc:geometry"
"""Schema metadata of work files: the name of the (WKB) geometry column."""
ROW_ID_STRIDE = 2**32
"""Row ids are ``slice_id * ROW_ID_STRIDE + position``: unique without knowing slice sizes."""


# --- the run's context --------------------------------------------------------------------------


def run_context(
    config: GeospatialPartitionJobStepConfig,
    writer: TableWriter,
    *,
    job_id: str,
    n_slices: int,
    sample_rows: int,
    slice_rows: int,
) -> dict[str, Any]:
    """The JSON-able context every stage gets: the job id, the config (its input already a
    path/URL), the table writer, the work folder, the number of slices, the plan's sample size
    and the rows per input slice (the submitting process's options, so workers agree)."""
    return {
        "job_id": job_id,
        "config": config.model_dump(mode="json"),
        "writer": writer.to_dict(),
        "work": storage.join(writer.staging_url, "_work"),
        "n_slices": int(n_slices),
        "sample_rows": int(sample_rows),
        "slice_rows": int(slice_rows),
    }


def _config(ctx: dict[str, Any]) -> GeospatialPartitionJobStepConfig:
    return GeospatialPartitionJobStepConfig.model_validate(ctx["config"])


def _writer(ctx: dict[str, Any]) -> TableWriter:
    from fused_celery.table import TableWriter

    return TableWriter.from_dict(ctx["writer"])


def _path(ctx: dict[str, Any], *parts: str) -> str:
    return storage.join(ctx["work"], *parts)


SOURCE_ROW = "__fc_src"
"""Column holding each row's position in its slice while it is prepared."""


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


def _encode(frame: gpd.GeoDataFrame, wkb: pa.Array | None = None) -> pa.Table:
    """A prepared frame as Arrow: attributes, then every geometry column as ISO WKB (``wkb``:
    the active one's, already encoded); the active geometry's name in the schema metadata.
    Reserved helper column names are refused."""
    import geopandas as gpd
    import pandas as pd
    import pyarrow as pa
    import shapely

    for name in HELPER_COLUMNS:
        if name in frame.columns:
            raise IngestInputError(f"the input has a column named {name!r}, reserved; rename it")
    geo_cols = [c for c in frame.columns if isinstance(frame[c].dtype, gpd.array.GeometryDtype)]
    attrs = pa.Table.from_pandas(pd.DataFrame(frame.drop(columns=geo_cols)), preserve_index=False)
    columns, names = [], []
    for col in frame.columns:
        if col == frame.geometry.name and wkb is not None:
            columns.append(wkb)
        elif col in geo_cols:
            data = shapely.to_wkb(np.asarray(frame[col].array, dtype=object), flavor="iso")
            columns.append(pa.array(data, type=pa.binary()))
        else:
            columns.append(attrs.column(str(col)))
        names.append(str(col))
    table = pa.Table.from_arrays(columns, names=names)
    return table.replace_schema_metadata({GEOMETRY_KEY: str(frame.geometry.name).encode()})


def _write_arrow(url: str, table: pa.Table) -> None:
    """Scratch data between stages: an uncompressed Arrow IPC file, not fsynced."""
    import pyarrow as pa

    options = pa.ipc.IpcWriteOptions(compression=None)
    with (
        storage.atomic_output(url, durable=False) as out,
        pa.ipc.new_file(out, table.schema, options=options) as writer,
    ):
        writer.write_table(table)


def _read_arrow(url: str, columns: list[str] | None = None) -> pa.Table:
    """A file written by :func:`_write_arrow` (only ``columns`` when given); local files are
    memory-mapped, so the table stays valid after the file is closed but reads the mapping."""
    import pyarrow as pa

    with storage.open_input_file(url, memory_map=True) as f:
        table = pa.ipc.open_file(f).read_all()
    return table.select(columns) if columns is not None else table


# --- inputs ---------------------------------------------------------------------------------


def materialize_frame(
    config: GeospatialPartitionJobStepConfig, work_url: str, *, slice_rows: int
) -> GeospatialPartitionJobStepConfig:
    """A config whose in-memory (Geo)DataFrame input is written to ``work_url/input.parquet``
    (GeoParquet, row groups of ``slice_rows``), so that workers can read it in slices; a config
    with a path input is returned as is."""
    import pandas as pd

    from fused_celery.partition.prepare import ensure_geodataframe

    if not isinstance(config.input, pd.DataFrame):
        return config
    gdf = ensure_geodataframe(config.input, config.lonlat_cols)
    if not len(gdf):
        raise IngestInputError("the input (Geo)DataFrame has no rows; there is nothing to ingest")
    url = storage.join(work_url, "input.parquet")
    with storage.atomic_output(url) as out:
        gdf.to_parquet(out, index=False, row_group_size=max(1, int(slice_rows)))
    return config.model_copy(update={"input": url, "lonlat_cols": None})


def list_input_slices(
    config: GeospatialPartitionJobStepConfig, *, slice_rows: int | None = None
) -> list[InputSlice]:
    """The input's slices (see :func:`.read.list_slices`); empty input is an error."""
    from fused_celery.partition.read import list_slices

    slices = list_slices(config, target_rows=slice_rows)
    if not slices:
        raise IngestInputError(
            f"the input {config.input!r} has no rows; there is nothing to ingest"
        )
    return slices


# --- prepare ------------------------------------------------------------------------------------


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

    from fused_celery.partition.prepare import WGS84_BOUNDS, PrepareReport

    if config.lonlat_cols is not None or config.remove_cols:
        return None
    if not geo or len(geo.get("columns", {})) != 1:
        return None
    name = geo.get("primary_column")
    meta = geo["columns"].get(name)
    if meta is None or str(meta.get("encoding", "WKB")).upper() != "WKB":
        return None
    if "crs" in meta and meta["crs"] is None:
        return None  # an unknown CRS: the general path tells whether it can be degrees
    if not _is_degrees(meta.get("crs", "OGC:CRS84")):
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
    xy = raw[:, 5:21].copy().view("<f8")
    x, y = xy[:, 0].copy(), xy[:, 1].copy()
    finite = np.isfinite(x) & np.isfinite(y)
    x0, y0, x1, y1 = WGS84_BOUNDS
    inside = finite & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    report = PrepareReport(input_rows=n0)
    if not inside.all():
        if config.drop_out_of_bounds is False:
            if not finite.all():
                return None  # the general path names the rows
        else:
            keep = np.flatnonzero(inside)
            table, x, y = table.take(pa.array(keep)), x[keep], y[keep]
            report.dropped_out_of_bounds = int(n0 - len(keep))
    drop = [c for c in table.column_names if c == "bbox" and c != name]
    table = table.drop_columns(drop)
    for reserved in HELPER_COLUMNS:
        if reserved in table.column_names:
            raise IngestInputError(
                f"the input has a column named {reserved!r}, reserved; rename it"
            )
    if large:
        table = table.set_column(
            table.column_names.index(name), name, table.column(name).cast(pa.binary())
        )
    report.output_rows = len(x)
    return table.replace_schema_metadata({GEOMETRY_KEY: name.encode()}), x, y, report


REREAD_SUFFIX = ".reread.json"
"""A prepared slice of 2D points is not staged: ``prepared/<slice>.reread.json`` holds its
:class:`~.read.InputSlice`, which scatter reads again (cheaper than writing and reading a copy)."""


def _may_be_points(sl: InputSlice, config: GeospatialPartitionJobStepConfig) -> bool:
    """Whether the Parquet slice can take the points fast path, from its metadata alone: one
    GeoParquet geometry column whose ``geometry_types`` are ``["Point"]`` or not given."""
    from fused_celery.partition.read import parquet_geo

    if config.lonlat_cols is not None or config.remove_cols or sl.error is not None:
        return False
    geo = parquet_geo(sl)
    if not geo or len(geo.get("columns", {})) != 1:
        return False
    meta = geo["columns"].get(geo.get("primary_column"))
    return meta is not None and list(meta.get("geometry_types") or ["Point"]) == ["Point"]


def _row_ids(slice_id: int, n: int) -> np.ndarray:
    """The row ids of a prepared slice of ``n`` rows (see :data:`ROW_ID_STRIDE`)."""
    return slice_id * ROW_ID_STRIDE + np.arange(n, dtype=np.int64)


def _points_measure(config: GeospatialPartitionJobStepConfig, n: int) -> np.ndarray:
    """The measure of ``n`` 2D points: 0 for ``area``/``length``, else 1 (a row, a coordinate)."""
    return np.zeros(n) if config.partitioning_method in ("area", "length") else np.ones(n)


def _reread_points(ctx: dict[str, Any], slice_id: int) -> pa.Table | None:
    """The prepared table of a slice of 2D points that prepare did not stage (see
    :data:`REREAD_SUFFIX`), read again from the input with the helper columns scatter needs;
    None when the slice was staged."""
    import pyarrow as pa

    from fused_celery.partition.read import InputSlice, read_parquet_table

    try:
        raw = storage.read_bytes(_path(ctx, "prepared", f"{slice_id}{REREAD_SUFFIX}"))
    except FileNotFoundError:
        return None
    config = _config(ctx)
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
    ids = _row_ids(int(slice_id), n)
    for name, values in {X: x, Y: y, M: _points_measure(config, n), ID: ids}.items():
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


def prepare_slice(ctx: dict[str, Any], input_slice: dict[str, Any]) -> dict[str, Any]:
    """Read and prepare one slice; write it and its planning sample to the work folder.

    Returns ``{"slice_id", "rows", "measure", "report"}`` (rows and total measure after
    preparation; the report's counts of dropped, repaired and added rows).
    """
    import pyarrow as pa

    from fused_celery.partition.prepare import prepare_frame
    from fused_celery.partition.read import (
        InputSlice,
        parquet_frame,
        read_parquet_table,
        read_slice,
    )
    from fused_celery.table import evenly_spaced

    config = _config(ctx)
    sl = InputSlice.model_validate(input_slice)
    fast = raw = original = None
    if sl.format == "parquet":  # the points fast path, else a frame from the table
        if _may_be_points(sl, config):  # read the geometry alone first
            table, geo = read_parquet_table(sl, lonlat_cols=config.lonlat_cols, load_columns=[])
            fast = _points_fast(table, geo, config)
        if fast is None:
            table, geo = read_parquet_table(
                sl, lonlat_cols=config.lonlat_cols, load_columns=config.load_columns
            )
            raw = parquet_frame(sl, table, geo, lonlat_cols=config.lonlat_cols)
            original = _original_wkb(table, geo, raw)
            if original is not None and SOURCE_ROW not in raw.columns:
                raw[SOURCE_ROW] = np.arange(len(raw))  # each row's position, to reuse its WKB
            else:
                original = None
    if fast is not None:  # nothing staged: scatter reads the slice again (see _reread_points)
        _, x, y, report = fast
        n = len(x)
        measure = _points_measure(config, n)
        ids = _row_ids(sl.slice_id, n)
        storage.write_bytes(
            _path(ctx, "prepared", f"{sl.slice_id}{REREAD_SUFFIX}"),
            sl.model_dump_json().encode(),
            durable=False,
        )
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
        table = _encode(frame, wkb)
        facts = prepared.facts
        ids = _row_ids(sl.slice_id, n)
        helpers = {X: x, Y: y, M: measure, ID: ids}
        helpers.update({name: facts.bounds[:, i] for i, name in enumerate(BOUNDS)})
        helpers.update(
            {AREA: facts.area, LENGTH: facts.length, NCOORDS: facts.num_coords,
             TYPE: facts.type_id, HAS_Z: facts.has_z}
        )  # fmt: skip
        for name, values in helpers.items():
            table = table.append_column(name, pa.array(values))
        _write_arrow(_path(ctx, "prepared", f"{sl.slice_id}.arrow"), table)

    k = max(1, math.ceil(ctx["sample_rows"] / max(1, ctx["n_slices"])))
    pick = evenly_spaced(n, k) if n > k else np.arange(n)
    w = measure[pick]
    total = float(measure.sum())
    scale = total / float(w.sum()) if len(pick) and float(w.sum()) > 0 else 1.0
    sample = pa.table({"x": x[pick], "y": y[pick], "w": w * scale, "id": ids[pick]})
    _write_arrow(_path(ctx, "samples", f"{sl.slice_id}.arrow"), sample)
    r = report
    return {
        "slice_id": sl.slice_id,
        "rows": n,
        "measure": total,
        "report": {
            "input_rows": r.input_rows,
            "dropped_null_geometries": r.dropped_null_geometries,
            "made_valid": r.made_valid,
            "dropped_out_of_bounds": r.dropped_out_of_bounds,
            "subdivided_rows": r.subdivided_rows,
            "exploded_rows_added": r.exploded_rows_added,
            "reprojected_from": r.reprojected_from,
        },
    }


# --- plan ---------------------------------------------------------------------------------------


def _plan_options(config: GeospatialPartitionJobStepConfig) -> dict[str, Any]:
    return {
        "split_method": config.partitioning_split_method,
        "max_width_ratio": config.partitioning_max_width_ratio,
        "max_height_ratio": config.partitioning_max_height_ratio,
        "split_identical_centroids": config.split_identical_centroids,
    }


def make_plan(ctx: dict[str, Any], prepared: list[dict[str, Any]]) -> dict[str, Any]:
    """Plan files and chunks from the pooled samples of the ``prepared`` slices (results of
    :func:`prepare_slice`); write the split tree to the work folder.

    Returns ``{"num_files", "planned_chunks", "max_per_file", "max_per_chunk", "rows",
    "measure"}``. No rows at all after preparation is an :class:`IngestInputError`.
    """
    import pyarrow as pa

    config = _config(ctx)
    rows = sum(int(p["rows"]) for p in prepared)
    measure = float(sum(float(p["measure"]) for p in prepared))
    if rows == 0:
        dropped = {
            k: sum(int(p["report"].get(k) or 0) for p in prepared)
            for k in ("input_rows", "dropped_null_geometries", "dropped_out_of_bounds")
        }
        raise IngestInputError(
            f"no rows left to ingest: {dropped['input_rows']} input row(s), "
            f"{dropped['dropped_null_geometries']} with a null or empty geometry, "
            f"{dropped['dropped_out_of_bounds']} outside the WGS84 bounds"
        )
    if not measure > 0:
        raise IngestInputError(
            f"the total {config.partitioning_method!r} measure of the input is {measure}; "
            f"partitioning_method={config.partitioning_method!r} needs geometries with a "
            "positive measure (use 'rows' for points)"
        )
    per_file, per_chunk = resolve_maxima(
        measure,
        config.partitioning_maximum_per_file,
        config.partitioning_maximum_per_chunk,
        config.target_num_chunks,
    )
    ids = sorted(int(p["slice_id"]) for p in prepared if int(p["rows"]))
    samples = [_read_arrow(_path(ctx, "samples", f"{i}.arrow")) for i in ids]
    s = pa.concat_tables(samples)
    plan = plan_partitions(
        s.column("x").to_numpy(),
        s.column("y").to_numpy(),
        s.column("w").to_numpy(),
        max_per_file=per_file,
        max_per_chunk=per_chunk,
        force_utm=config.partitioning_force_utm,
        ids=s.column("id").to_numpy(),
        **_plan_options(config),
    )
    t = plan.tree
    buf = io.BytesIO()
    np.savez(
        buf,
        axis=t.axis,
        value=t.value,
        left=t.left,
        right=t.right,
        file_index=t.file_index,
        chunk_index=t.chunk_index,
        maxima=np.array([per_file, per_chunk]),
    )
    storage.write_bytes(_path(ctx, "plan.npz"), buf.getvalue())
    return {
        "num_files": plan.num_files,
        "planned_chunks": plan.num_chunks,
        "max_per_file": per_file,
        "max_per_chunk": per_chunk,
        "rows": rows,
        "measure": measure,
    }


_tree_cache: dict[str, PartitionTree] = {}


def _load_tree(ctx: dict[str, Any]) -> PartitionTree:
    url = _path(ctx, "plan.npz")
    tree = _tree_cache.get(url)
    if tree is None:
        with np.load(io.BytesIO(storage.read_bytes(url))) as z:
            tree = PartitionTree(
                axis=z["axis"],
                value=z["value"],
                left=z["left"],
                right=z["right"],
                file_index=z["file_index"],
                chunk_index=z["chunk_index"],
            )
        _tree_cache.clear()
        _tree_cache[url] = tree
    return tree


# --- scatter ------------------------------------------------------------------------------------


def scatter_slice(ctx: dict[str, Any], slice_id: int) -> dict[str, Any]:
    """Route the rows of one prepared slice to their planned file and chunk; write them as one
    Arrow IPC file of the slice with one record batch per file, rows sorted by chunk.

    Returns ``{"slice_id", "files": {file_index: [batch, rows]}}`` (keys as strings)."""
    import pyarrow as pa

    table = _reread_points(ctx, slice_id)
    if table is None:
        table = _read_arrow(_path(ctx, "prepared", f"{slice_id}.arrow"))
    file_index, chunk_index = _load_tree(ctx).route(
        table.column(X).to_numpy(), table.column(Y).to_numpy(), table.column(ID).to_numpy()
    )
    table = table.append_column(CHUNK, pa.array(chunk_index, pa.int32()))
    order = _sort_by_chunk(file_index, chunk_index)
    table = table.take(pa.array(order)).combine_chunks()
    sorted_files = file_index[order]
    starts = (
        np.flatnonzero(np.r_[True, sorted_files[1:] != sorted_files[:-1]]) if len(order) else []
    )
    stops = np.r_[starts[1:], len(order)] if len(order) else []
    files: dict[str, list[int]] = {}
    batches = []
    for a, b in zip(starts, stops):
        files[str(int(sorted_files[a]))] = [len(batches), int(b - a)]
        batches.append(table.slice(a, b - a).to_batches()[0])  # one chunk: combined above
    _write_batches(_path(ctx, "scattered", f"{slice_id}.arrow"), table.schema, batches)
    return {"slice_id": int(slice_id), "files": files}


def _sort_by_chunk(file_index: np.ndarray, chunk_index: np.ndarray) -> np.ndarray:
    """The stable order of rows by (file, chunk), as a radix sort of one small integer key
    when the keys fit 16 bits (several times faster than ``np.lexsort``)."""
    if not len(file_index):
        return np.zeros(0, np.int64)
    stride = int(chunk_index.max()) + 1
    key = file_index * stride + chunk_index
    top = int(key.max())
    dtype = np.int16 if top < 2**15 else np.int32 if top < 2**31 else np.int64
    return np.argsort(key.astype(dtype), kind="stable")


def _write_batches(url: str, schema: pa.Schema, batches: list[pa.RecordBatch]) -> None:
    """An uncompressed Arrow IPC file of ``batches``, not fsynced; batch i is readable alone."""
    import pyarrow as pa

    options = pa.ipc.IpcWriteOptions(compression=None)
    with (
        storage.atomic_output(url, durable=False) as out,
        pa.ipc.new_file(out, schema, options=options) as writer,
    ):
        for batch in batches:
            writer.write_batch(batch)


class _BatchReader:
    """Record batches of scattered files, each file opened once (memory-mapped when local)."""

    def __init__(self, ctx: dict[str, Any]) -> None:
        self._ctx = ctx
        self._open: dict[int, tuple[Any, Any]] = {}

    def batch(self, slice_id: int, index: int) -> pa.RecordBatch:
        import pyarrow as pa

        if slice_id not in self._open:
            url = _path(self._ctx, "scattered", f"{slice_id}.arrow")
            source = storage.open_input_file(url, memory_map=True)
            self._open[slice_id] = (source, pa.ipc.open_file(source))
        return self._open[slice_id][1].get_batch(index)

    def close(self) -> None:
        for source, _ in self._open.values():
            source.close()
        self._open.clear()


# --- write --------------------------------------------------------------------------------------


def refine_chunks(
    x: np.ndarray,
    y: np.ndarray,
    m: np.ndarray,
    ids: np.ndarray,
    chunk: np.ndarray,
    *,
    max_per_chunk: float,
    options: dict[str, Any],
) -> np.ndarray:
    """New chunk numbers (0..k-1, the old chunks' order kept) after splitting every chunk whose
    exact measure is over ``max_per_chunk`` with the planning rules; rows must be sorted by
    ``chunk`` (the rows of a split chunk are then no longer sorted by their new number).
    options: :func:`plan_partitions` split options."""
    out = np.empty(len(chunk), dtype=np.int64)
    bounds = np.flatnonzero(np.diff(chunk)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    stops = np.concatenate([bounds, [len(chunk)]]).astype(np.int64)
    next_id = 0
    for a, b in zip(starts, stops):
        total = float(m[a:b].sum())
        if total <= max_per_chunk or b - a < 2:
            out[a:b] = next_id
            next_id += 1
            continue
        sub = plan_partitions(
            x[a:b],
            y[a:b],
            m[a:b],
            max_per_file=total,
            max_per_chunk=max_per_chunk,
            ids=ids[a:b],
            force_utm=None,
            **options,
        )
        out[a:b] = next_id + sub.chunk_index
        next_id += sub.num_chunks
    return out


def group_chunks(chunk_measures: np.ndarray, max_per_file: float) -> list[tuple[int, int]]:
    """Consecutive runs ``[start, stop)`` of chunks, each run's measure within ``max_per_file``
    (a chunk over it alone is a run of one)."""
    runs: list[tuple[int, int]] = []
    start, acc = 0, 0.0
    for i, v in enumerate(chunk_measures):
        if i > start and acc + float(v) > max_per_file:
            runs.append((start, i))
            start, acc = i, 0.0
        acc += float(v)
    if len(chunk_measures):
        runs.append((start, len(chunk_measures)))
    return runs


def write_task_rows(scattered: list[dict[str, Any]]) -> int:
    """Rows a write task takes at least, from the results of :func:`scatter_slice`: a quarter of
    the average slice, so there are about four write tasks per slice (files smaller than that
    share a task, which reads each slice's scattered file once for all of them)."""
    rows = sum(int(n) for r in scattered for _, n in r["files"].values())
    return max(1, rows // (4 * max(1, len(scattered))))


def write_groups(scattered: list[dict[str, Any]], min_rows: int) -> list[list[list[Any]]]:
    """Write tasks from the results of :func:`scatter_slice`: files in index order, each
    ``[file_index, parts]`` (``parts``: sorted ``[slice_id, batch]`` pairs), grouped so that a
    task writes at least ``min_rows`` rows (one file per task when files are that big); small
    files share a task instead of paying a task each."""
    parts: dict[int, list[list[int]]] = {}
    rows: dict[int, int] = {}
    for r in scattered:
        for f, (batch, n) in r["files"].items():
            parts.setdefault(int(f), []).append([int(r["slice_id"]), int(batch)])
            rows[int(f)] = rows.get(int(f), 0) + int(n)
    groups: list[list[list[Any]]] = []
    current: list[list[Any]] = []
    size = 0
    for f in sorted(parts):
        current.append([f, sorted(parts[f])])
        size += rows[f]
        if size >= min_rows:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def write_files(
    ctx: dict[str, Any], files: list[list[Any]], maxima: tuple[float, float]
) -> dict[str, Any]:
    """:func:`write_file` for each ``[file_index, parts]`` of ``files`` (a group of
    :func:`write_groups`). Returns ``{"files": [file indexes], "chunks": [metadata dicts]}``."""
    chunks: list[dict[str, Any]] = []
    reader = _BatchReader(ctx)
    try:
        for file_index, parts in files:
            chunks.extend(write_file(ctx, int(file_index), parts, maxima, reader)["chunks"])
    finally:
        reader.close()
    return {"files": [int(f) for f, _ in files], "chunks": chunks}


def _facts(table: pa.Table) -> RowFacts:
    """The :class:`~fused_celery.table.RowFacts` of a work table: its fact columns, or for 2D
    points prepared without them, facts from the centroid columns."""
    from fused_celery.table import RowFacts

    if BOUNDS[0] not in table.column_names:
        x, y = table.column(X).to_numpy(), table.column(Y).to_numpy()
        n = len(x)
        return RowFacts(
            np.column_stack([x, y, x, y]), np.zeros(n), np.zeros(n), np.ones(n, np.int64),
            np.zeros(n, np.int8), np.zeros(n, bool),
        )  # fmt: skip
    return RowFacts(
        bounds=np.column_stack([table.column(c).to_numpy() for c in BOUNDS]),
        area=table.column(AREA).to_numpy(),
        length=table.column(LENGTH).to_numpy(),
        num_coords=table.column(NCOORDS).to_numpy(),
        type_id=table.column(TYPE).to_numpy(),
        has_z=table.column(HAS_Z).to_numpy(zero_copy_only=False),
    )


def _merge_by_chunk(tables: list[pa.Table]) -> tuple[pa.Table, RowFacts]:
    """The rows of ``tables`` (each sorted by chunk) in chunk order, and their facts: zero-copy
    slices of the parts, chunk by chunk, part by part (stable); fact columns dropped."""
    import pyarrow as pa

    from fused_celery.table import RowFacts

    chunks = [t.column(CHUNK).to_numpy() for t in tables]
    k = max((int(c[-1]) + 1 for c in chunks if len(c)), default=0)
    cuts = [np.searchsorted(c, np.arange(k + 1)) for c in chunks]
    facts = [_facts(t) for t in tables]
    tables = [t.drop_columns([c for c in FACT_COLUMNS if c in t.column_names]) for t in tables]
    pieces = [
        (p, int(cut[c]), int(cut[c + 1]))
        for c in range(k)
        for p, cut in enumerate(cuts)
        if cut[c + 1] > cut[c]
    ]
    if len(tables) == 1 or len(pieces) <= 1:
        table = pa.concat_tables(tables, promote_options="permissive")
        return table, RowFacts.concat(facts)
    table = pa.concat_tables(
        [tables[p].slice(a, b - a) for p, a, b in pieces], promote_options="permissive"
    )
    return table, RowFacts.concat([facts[p].take(slice(a, b)) for p, a, b in pieces])


def write_file(
    ctx: dict[str, Any],
    file_index: int,
    parts: list[list[int]],
    maxima: tuple[float, float],
    reader: _BatchReader | None = None,
) -> dict[str, Any]:
    """Write planned file ``file_index`` from its scattered parts (``[slice_id, batch]`` pairs,
    see :func:`scatter_slice`), refining chunks and the file with the exact rows. maxima:
    ``(max_per_file, max_per_chunk)``. reader: where to read the parts (default: a new one).

    Returns ``{"file_index", "chunks": [ChunkMetadata dicts]}`` (one output file or more)."""
    import pyarrow as pa

    config = _config(ctx)
    own = reader is None
    reader = reader or _BatchReader(ctx)
    try:
        tables = [pa.Table.from_batches([reader.batch(int(s), int(b))]) for s, b in sorted(parts)]
        table, facts = _merge_by_chunk(tables)
        return _write_merged(ctx, config, file_index, table, facts, maxima)
    finally:
        if own:
            reader.close()


def _write_merged(
    ctx: dict[str, Any],
    config: GeospatialPartitionJobStepConfig,
    file_index: int,
    table: pa.Table,
    facts: RowFacts,
    maxima: tuple[float, float],
) -> dict[str, Any]:
    """:func:`write_file` once its rows are in chunk order."""
    import pyarrow as pa

    chunk = table.column(CHUNK).to_numpy()
    m = table.column(M).to_numpy()
    per_file, per_chunk = maxima
    chunk = refine_chunks(
        table.column(X).to_numpy(),
        table.column(Y).to_numpy(),
        m,
        table.column(ID).to_numpy(),
        chunk,
        max_per_chunk=per_chunk,
        options=_plan_options(config),
    )
    order = np.argsort(chunk, kind="stable")  # split chunks are in kd order, not row order
    if not (order == np.arange(len(order))).all():
        table = table.take(pa.array(order))
        chunk, m, facts = chunk[order], m[order], facts.take(order)
    n_chunks = int(chunk.max()) + 1 if len(chunk) else 0
    chunk_measure = np.bincount(chunk, weights=m, minlength=n_chunks)
    chunk_start = np.searchsorted(chunk, np.arange(n_chunks + 1))
    geometry = (table.schema.metadata or {}).get(GEOMETRY_KEY, b"geometry").decode()
    table = table.drop_columns([c for c in HELPER_COLUMNS if c in table.column_names])
    writer = _writer(ctx)
    metas: list[dict[str, Any]] = []
    for k, (a, b) in enumerate(group_chunks(chunk_measure, per_file)):
        fid = str(file_index) if k == 0 else f"{file_index}-{k}"
        lo, hi = int(chunk_start[a]), int(chunk_start[b])
        written = writer.write_arrow_file(
            fid,
            table.slice(lo, hi - lo),
            chunk_start[a : b + 1] - lo,
            facts.take(slice(lo, hi)),
            geometry=geometry,
        )
        metas.extend(c.model_dump(mode="json") for c in written)
    return {"file_index": int(file_index), "chunks": metas}


# --- commit and discard ---------------------------------------------------------------------


def commit(ctx: dict[str, Any], written: list[dict[str, Any]]) -> dict[str, Any]:
    """Commit the table from the ``written`` files (results of :func:`write_file`); removes the
    staging area. Returns ``{"output", "num_files", "num_chunks", "num_rows"}``."""
    chunks = [c for w in written for c in w["chunks"]]
    table = _writer(ctx).commit(chunks)
    return {
        "output": table.url,
        "num_files": table.num_files,
        "num_chunks": table.num_chunks,
        "num_rows": table.num_rows,
    }


def discard(ctx: dict[str, Any]) -> None:
    """Remove this run's staging (work folder included); when no committed table is there, the
    folder's staging marker too, so a failed or cancelled first run leaves no table behind."""
    from fused_celery.table import SAMPLE_FILE, STAGING_DIR

    writer = _writer(ctx)
    writer.abort()
    if not storage.is_file(storage.join(writer.url, SAMPLE_FILE)):
        storage.delete_prefix(storage.join(writer.url, STAGING_DIR))
