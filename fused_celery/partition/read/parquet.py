"""Parquet and GeoParquet inputs (``.parquet``, ``.geoparquet``, ``.pq``) in slices of row groups.

A slice is row groups ``[start, stop)``, consecutive groups gathered up to ``target_rows`` and
``target_bytes`` (the groups' uncompressed sizes in the file's metadata). A row group over either
is cut into equal row ranges ``[row_start, row_stop)`` of that one group (``start``); a task
reading such a slice streams the group in batches and decodes the rows before its range too (its
memory stays within one batch, but the bytes of the whole group are fetched). The geometry comes
from the GeoParquet ``geo`` metadata (WKB and GeoArrow encodings; no ``crs`` key means
OGC:CRS84), or from ``lonlat_cols``. Only the columns needed are read; on S3 only the column
chunks of the slice's row groups are fetched.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from fused_celery import storage
from fused_celery.errors import IngestInputError, StorageError
from fused_celery.partition.prepare import frame_from_lonlat
from fused_celery.partition.read.base import InputSlice, check_columns, reading, wanted_columns

if TYPE_CHECKING:
    import geopandas as gpd
    import pyarrow as pa
    import pyarrow.parquet as pq

PARQUET_SUFFIXES = (".parquet", ".geoparquet", ".pq")
_INDEX_COLUMN = re.compile(r"__index_level_\d+__")


@contextlib.contextmanager
def _parquet_file(url: str) -> Iterator[pq.ParquetFile]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with storage.open_input_file(url) as source:
        try:
            pf = pq.ParquetFile(source, pre_buffer=True)
        except (pa.ArrowInvalid, OSError) as exc:
            if isinstance(exc, (FileNotFoundError, StorageError)):
                raise
            raise IngestInputError(
                f"ingest input {url} is not a valid Parquet file (corrupt or truncated?): {exc}"
            ) from exc
        try:
            yield pf
        finally:
            pf.close()


def _parquet_geo(url: str, schema: pa.Schema) -> dict[str, Any] | None:
    """The GeoParquet ``geo`` metadata of ``schema`` (None when absent)."""
    raw = (schema.metadata or {}).get(b"geo")
    if raw is None:
        return None
    try:
        geo = json.loads(raw)
        if not isinstance(geo, dict) or not geo.get("columns"):
            raise ValueError("no 'columns'")
    except ValueError as exc:
        raise IngestInputError(
            f"ingest input {url} has invalid GeoParquet metadata: {exc}"
        ) from exc
    return geo


def _parquet_plan(
    url: str,
    pf: pq.ParquetFile,
    lonlat_cols: Sequence[str] | None,
    load_columns: Sequence[str] | None,
) -> tuple[list[str], dict[str, Any] | None]:
    """The columns to read and the geo metadata (None with ``lonlat_cols``); checks columns."""
    schema = pf.schema_arrow
    index_cols = {
        c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)
    }
    names = [n for n in schema.names if n not in index_cols and not _INDEX_COLUMN.fullmatch(n)]
    cols = {"lonlat_cols": lonlat_cols, "load_columns": load_columns}
    check_columns(url, names, **cols)
    geo = _parquet_geo(url, schema)
    if lonlat_cols is not None:
        geometry_cols = set(geo["columns"]) if geo else set()
        return [c for c in wanted_columns(names, **cols) if c not in geometry_cols], None
    geometry_cols = [c for c in (geo or {}).get("columns", {}) if c in names]
    if not geometry_cols:
        raise IngestInputError(
            f"ingest input {url} is a Parquet file without geometry (no GeoParquet 'geo' "
            f"metadata); pass lonlat_cols=(lon_column, lat_column) to make points; its columns "
            f"are {names}"
        )
    primary = geo.get("primary_column") if geo else None
    primary = primary if primary in geometry_cols else geometry_cols[0]
    return wanted_columns(names, primary, **cols), geo


def parquet_slices(
    url: str,
    *,
    target_rows: int,
    target_bytes: int,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The slices of the Parquet file at ``url`` as :class:`InputSlice` fields without
    ``slice_id`` (see the module docstring). target_rows / target_bytes: the slice size.
    lonlat_cols / load_columns (defaults None) are checked against the file's columns."""
    with _parquet_file(url) as pf:
        _parquet_plan(url, pf, lonlat_cols, load_columns)
        meta = pf.metadata
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        sizes = [(g.num_rows, max(0, g.total_byte_size)) for g in groups]
    out: list[dict[str, Any]] = []
    base = {"url": url, "format": "parquet"}
    first, rows, size = 0, 0, 0
    target = target_rows

    def flush(stop: int) -> None:
        if rows:
            out.append({**base, "start": first, "stop": stop, "num_rows": rows})

    for g, (n, b) in enumerate(sizes):
        cap = min(target, max(1, target_bytes * n // b)) if b else target  # rows of this group
        if n > cap:
            flush(g)
            parts = -(-n // cap)
            step = -(-n // parts)
            for r0 in range(0, n, step):
                r1 = min(n, r0 + step)
                rows_part = {"num_rows": r1 - r0, "row_start": r0, "row_stop": r1}
                out.append({**base, "start": g, "stop": g + 1, **rows_part})
            first, rows, size = g + 1, 0, 0
        elif rows + n > target or size + b > target_bytes:
            flush(g)
            first, rows, size = g, n, b
        else:
            rows, size = rows + n, size + b
    flush(len(sizes))
    return out


def read_parquet_table(
    sl: InputSlice,
    *,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
) -> tuple[pa.Table, dict[str, Any] | None]:
    """The rows of a Parquet slice as Arrow, undecoded, and the file's GeoParquet ``geo``
    metadata (None for plain Parquet read through ``lonlat_cols``). lonlat_cols: the point
    columns (default None: the GeoParquet geometry). load_columns: the columns to read besides
    the geometry (default None: all). Errors as in :func:`~.slices.read_slice`."""
    if sl.error is not None:
        raise IngestInputError(sl.error)
    if sl.format != "parquet":
        raise ValueError(f"read_parquet_table needs a Parquet slice, got {sl.format!r}")
    with reading(sl.url, sl.describe()):
        return _read_parquet_table(sl, lonlat_cols, load_columns)


def parquet_geo(sl: InputSlice) -> dict[str, Any] | None:
    """The GeoParquet ``geo`` metadata of a Parquet slice's file (None when it has none), from
    the file's footer alone."""
    with reading(sl.url, sl.describe()), _parquet_file(sl.url) as pf:
        return _parquet_geo(sl.url, pf.schema_arrow)


def _read_parquet_table(
    sl: InputSlice, lonlat_cols: Sequence[str] | None, load_columns: Sequence[str] | None
) -> tuple[pa.Table, dict[str, Any] | None]:
    import pyarrow as pa

    with _parquet_file(sl.url) as pf:
        columns, geo = _parquet_plan(sl.url, pf, lonlat_cols, load_columns)
        if sl.row_start is None:
            table = pf.read_row_groups(range(sl.start, sl.stop), columns=columns)
        else:
            assert sl.row_stop is not None
            n = sl.row_stop - sl.row_start
            batches, seen = [], 0
            for batch in pf.iter_batches(batch_size=n, row_groups=[sl.start], columns=columns):
                lo, hi = max(sl.row_start - seen, 0), min(sl.row_stop - seen, len(batch))
                if hi > lo:
                    batches.append(batch.slice(lo, hi - lo))
                seen += len(batch)
                if seen >= sl.row_stop:
                    break
            schema = pf.schema_arrow
            schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
            table = pa.Table.from_batches(batches, schema=schema)
    return table, geo


def read_parquet_slice(
    sl: InputSlice,
    *,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
) -> gpd.GeoDataFrame:
    """The rows of a Parquet slice as a GeoDataFrame (options as in
    :func:`read_parquet_table`); library errors are left to the caller's :func:`reading`."""
    table, geo = _read_parquet_table(sl, lonlat_cols, load_columns)
    return _parquet_frame(table, geo, lonlat_cols)


def parquet_frame(
    sl: InputSlice,
    table: pa.Table,
    geo: dict[str, Any] | None,
    *,
    lonlat_cols: Sequence[str] | None = None,
) -> gpd.GeoDataFrame:
    """What :func:`~.slices.read_slice` gives for a Parquet slice, from
    :func:`read_parquet_table`'s result (so a caller that looked at the table does not read it
    twice). lonlat_cols: as given to :func:`read_parquet_table` (default None)."""
    with reading(sl.url, sl.describe()):
        return _parquet_frame(table, geo, lonlat_cols)


def _parquet_frame(
    table: pa.Table, geo: dict[str, Any] | None, lonlat_cols: Sequence[str] | None
) -> gpd.GeoDataFrame:
    if geo is None:
        assert lonlat_cols is not None
        frame = table.to_pandas().reset_index(drop=True)
        return frame_from_lonlat(frame, *lonlat_cols)
    return _geoparquet_frame(table, geo)


def _geoparquet_frame(table: pa.Table, geo: dict[str, Any]) -> gpd.GeoDataFrame:
    """A GeoDataFrame from a table read from GeoParquet: the geometry columns are tagged as
    GeoArrow (``geoarrow.wkb`` or the native encoding, with their CRS) for
    ``GeoDataFrame.from_arrow``, which decodes them in bulk."""
    import geopandas as gpd
    import pyarrow as pa

    fields = []
    geometry_cols = []
    for field in table.schema:
        meta = geo["columns"].get(field.name)
        if meta is not None:
            encoding = str(meta.get("encoding", "WKB")).lower()
            crs = meta.get("crs", "OGC:CRS84")  # GeoParquet: no key means OGC:CRS84
            ext = {"crs": crs} if crs is not None else {}
            if meta.get("edges") == "spherical":
                ext["edges"] = "spherical"
            field = field.with_metadata(
                {
                    b"ARROW:extension:name": f"geoarrow.{encoding}".encode(),
                    b"ARROW:extension:metadata": json.dumps(ext).encode(),
                }
            )
            geometry_cols.append(field.name)
        fields.append(field)
    table = pa.Table.from_arrays(
        table.columns, schema=pa.schema(fields, metadata=table.schema.metadata)
    )
    primary = geo.get("primary_column")
    primary = primary if primary in geometry_cols else geometry_cols[0]
    frame = gpd.GeoDataFrame.from_arrow(table, geometry=primary)
    return frame.reset_index(drop=True)
