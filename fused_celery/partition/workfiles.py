"""The work-file format of an ingest: what its stages leave for the next ones, under the run's work
folder ``<table>/_staging/<job_id>/_work`` (removed by the commit, or by the discard when the job
fails or is cancelled).

- ``input.parquet``: an in-memory (Geo)DataFrame input, written at submit time;
- ``prepared/<slice>.arrow``: the slice after :func:`~.prepare.prepare_frame`, geometry as ISO
  WKB in EPSG:4326 (:func:`encode_frame`), plus the columns :data:`X`, :data:`Y` (centroid),
  :data:`M` (measure), :data:`ID` (row id ``slice_id * 2**32 + row``, which seeds the
  identical-centroid splits) and the row's :class:`~fused_celery.table.RowFacts`
  (:data:`FACT_COLUMNS`: bounds, area, length, coordinates, type), so that later stages never
  decode a geometry; or, for a GeoParquet slice of 2D points in degrees (prepared from its WKB
  bytes alone), ``prepared/<slice>.reread.json``: the input slice, which scatter reads again
  instead of a staged copy;
- ``samples/<slice>.arrow``: an evenly spaced sample of the slice's centroids (``x, y, w, id``;
  ``w`` scaled so the sample weighs what the slice weighs);
- ``plan.npz``: the kd split tree (planned on the pooled samples) and the maxima;
- ``scattered/<slice>.arrow``: the slice's rows routed to their files, one record batch per file,
  sorted by chunk (:data:`CHUNK`);
- ``route.json``: the write tasks, each a list of ``[file_index, [[slice_id, batch], ...]]``.

Work files are uncompressed Arrow IPC files, written atomically but not fsynced
(:func:`write_arrow`, :func:`write_batches`), read memory-mapped when local (:func:`read_arrow`,
:class:`BatchReader`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fused_celery import storage
from fused_celery.errors import IngestInputError

if TYPE_CHECKING:
    import geopandas as gpd
    import pyarrow as pa

    from fused_celery.table import RowFacts

X, Y, M, ID, CHUNK = "__fc_x", "__fc_y", "__fc_m", "__fc_id", "__fc_chunk"
BOUNDS = ("__fc_minx", "__fc_miny", "__fc_maxx", "__fc_maxy")
AREA, LENGTH, NCOORDS, TYPE, HAS_Z = "__fc_area", "__fc_len", "__fc_nc", "__fc_type", "__fc_z"
FACT_COLUMNS = (*BOUNDS, AREA, LENGTH, NCOORDS, TYPE, HAS_Z)
HELPER_COLUMNS = (X, Y, M, ID, CHUNK, *FACT_COLUMNS)
GEOMETRY_KEY = b"fc:geometry"
"""Schema metadata of work files: the name of the (WKB) geometry column."""
ROW_ID_STRIDE = 2**32
"""Row ids are ``slice_id * ROW_ID_STRIDE + position``: unique without knowing slice sizes."""
REREAD_SUFFIX = ".reread.json"
"""A prepared slice of 2D points is not staged: ``prepared/<slice>.reread.json`` holds its
:class:`~.read.InputSlice`, which scatter reads again (cheaper than writing and reading a copy)."""


# --- paths --------------------------------------------------------------------------------------


def input_url(work: str) -> str:
    """Where an in-memory input is written (GeoParquet) in work folder ``work``."""
    return storage.join(work, "input.parquet")


def prepared_url(work: str, slice_id: int) -> str:
    """The prepared rows of slice ``slice_id``."""
    return storage.join(work, "prepared", f"{slice_id}.arrow")


def reread_url(work: str, slice_id: int) -> str:
    """The input slice to read again, for a slice of points prepared without staging."""
    return storage.join(work, "prepared", f"{slice_id}{REREAD_SUFFIX}")


def sample_url(work: str, slice_id: int) -> str:
    """The planning sample of slice ``slice_id``."""
    return storage.join(work, "samples", f"{slice_id}.arrow")


def plan_url(work: str) -> str:
    """The kd split tree and maxima."""
    return storage.join(work, "plan.npz")


def scattered_url(work: str, slice_id: int) -> str:
    """The rows of slice ``slice_id`` routed to their files."""
    return storage.join(work, "scattered", f"{slice_id}.arrow")


def route_url(work: str) -> str:
    """The write tasks (JSON)."""
    return storage.join(work, "route.json")


# --- rows -------------------------------------------------------------------------------------


def row_ids(slice_id: int, n: int) -> np.ndarray:
    """The row ids of a prepared slice of ``n`` rows (see :data:`ROW_ID_STRIDE`)."""
    return slice_id * ROW_ID_STRIDE + np.arange(n, dtype=np.int64)


def encode_frame(frame: gpd.GeoDataFrame, wkb: pa.Array | None = None) -> pa.Table:
    """A prepared frame as Arrow: attributes, then every geometry column as ISO WKB (``wkb``:
    the active one's, already encoded; default None: encode it); the active geometry's name in
    the schema metadata. Reserved helper column names are refused."""
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


def geometry_name(table: pa.Table) -> str:
    """The name of a work table's geometry column (from :data:`GEOMETRY_KEY`)."""
    return (table.schema.metadata or {}).get(GEOMETRY_KEY, b"geometry").decode()


def facts_of(table: pa.Table) -> RowFacts:
    """The :class:`~fused_celery.table.RowFacts` of a work table: its fact columns, or for 2D
    points prepared without them, facts from the centroid columns."""
    from fused_celery.table import RowFacts
    from fused_celery.table.facts import bounds_of

    if BOUNDS[0] not in table.column_names:
        return RowFacts.of_points(table.column(X).to_numpy(), table.column(Y).to_numpy())
    return RowFacts(
        bounds=bounds_of(*(table.column(c).to_numpy() for c in BOUNDS)),
        area=table.column(AREA).to_numpy(),
        length=table.column(LENGTH).to_numpy(),
        num_coords=table.column(NCOORDS).to_numpy(),
        type_id=table.column(TYPE).to_numpy(),
        has_z=table.column(HAS_Z).to_numpy(zero_copy_only=False),
    )


# --- files --------------------------------------------------------------------------------------


def write_arrow(url: str, table: pa.Table) -> None:
    """Scratch data between stages: an uncompressed Arrow IPC file, not fsynced."""
    import pyarrow as pa

    options = pa.ipc.IpcWriteOptions(compression=None)
    with (
        storage.atomic_output(url, durable=False) as out,
        pa.ipc.new_file(out, table.schema, options=options) as writer,
    ):
        writer.write_table(table)


def read_arrow(url: str, columns: list[str] | None = None) -> pa.Table:
    """A file written by :func:`write_arrow` (only ``columns`` when given; default None: all);
    local files are memory-mapped, so the table stays valid after the file is closed but reads
    the mapping."""
    import pyarrow as pa

    with storage.open_input_file(url, memory_map=True) as f:
        table = pa.ipc.open_file(f).read_all()
    return table.select(columns) if columns is not None else table


def write_batches(url: str, schema: pa.Schema, batches: list[pa.RecordBatch]) -> None:
    """An uncompressed Arrow IPC file of ``batches``, not fsynced; batch i is readable alone."""
    import pyarrow as pa

    options = pa.ipc.IpcWriteOptions(compression=None)
    with (
        storage.atomic_output(url, durable=False) as out,
        pa.ipc.new_file(out, schema, options=options) as writer,
    ):
        for batch in batches:
            writer.write_batch(batch)


class BatchReader:
    """Record batches of the scattered files of work folder ``work``, each file opened once
    (memory-mapped when local). Close it when done."""

    def __init__(self, work: str) -> None:
        self._work = work
        self._open: dict[int, tuple[Any, Any]] = {}

    def batch(self, slice_id: int, index: int) -> pa.RecordBatch:
        """Batch ``index`` of slice ``slice_id``'s scattered file."""
        import pyarrow as pa

        if slice_id not in self._open:
            source = storage.open_input_file(scattered_url(self._work, slice_id), memory_map=True)
            self._open[slice_id] = (source, pa.ipc.open_file(source))
        return self._open[slice_id][1].get_batch(index)

    def close(self) -> None:
        """Close every file opened."""
        for source, _ in self._open.values():
            source.close()
        self._open.clear()
