"""Reading ingest inputs in slices, so that no process reads a large input whole.

:func:`list_slices` (on the client) cuts the input of a config into :class:`InputSlice` s, small
JSON-able descriptions of a part of one file; :func:`read_slice` (in a task) reads one of them as
a GeoDataFrame; :func:`read_input` reads every slice into one frame (the single-process path).

Inputs: a path or URL (local path, ``file://``, ``s3://``), a list of them, or a folder (every
file under it, recursively, sorted, whose name ends with ``config.file_suffix`` when set; names
starting with ``.`` or ``_`` are skipped, and so are the sidecars of a listed Shapefile).
Every slice holds at most ``target_rows`` rows and about ``target_bytes`` uncompressed bytes.
What a slice covers, per format:

- ``parquet`` (``.parquet``, ``.geoparquet``, ``.pq``): row groups ``[start, stop)``, consecutive
  groups gathered up to ``target_rows`` and ``target_bytes`` (the groups' uncompressed sizes in
  the file's metadata). A row group over either is cut into equal row ranges ``[row_start,
  row_stop)`` of that one group (``start``); a task reading such a slice streams the group in
  batches and decodes the rows before its range too (its memory stays within one batch, but the
  bytes of the whole group are fetched). The geometry comes from the
  GeoParquet ``geo`` metadata (WKB and GeoArrow encodings; no ``crs`` key means OGC:CRS84), or
  from ``lonlat_cols``. Only the columns needed are read; on S3 only the column chunks of the
  slice's row groups are fetched.
- ``csv`` (``.csv``): byte ranges ``[start, stop)`` of whole records, ``target_rows`` records
  each (fewer when the first block's records say that many would pass ``target_bytes``); the
  first line is the header (``header_bytes`` long) and is read with every slice. Record ends are
  found by one streaming pass over the file in :func:`list_slices`, honouring RFC 4180 quoting
  (newlines inside quoted fields); blank lines are not counted. A file whose quotes do not
  balance is one slice (``num_rows`` None). Points come from ``lonlat_cols`` (read with pandas),
  else from GDAL's CSV driver with ``gdal_config.open_options`` (``X_POSSIBLE_NAMES`` /
  ``Y_POSSIBLE_NAMES``, ``GEOM_POSSIBLE_NAMES`` for WKT, ...); a CSV without CRS is EPSG:4326. A
  task reads only its bytes (a ranged read on S3, no download).
- ``gdal`` (``.geojson``, ``.json``, ``.gpkg``, ``.shp``, ``.fgb``, ``.zip``, ``.gml``, ``.kml``):
  features ``[start, stop)`` of ``layer`` (``gdal_config.layer``, default the first; as many
  as ``target_bytes`` of the file's average bytes per feature, at most ``target_rows``), read with
  pyogrio's ``skip_features`` / ``max_features``; the feature count comes from
  ``pyogrio.read_info(force_feature_count=True)``. A FlatGeobuf with a spatial index lists its
  features in index order. GDAL reads local files, so a file on S3 is downloaded once per machine
  into :data:`INPUT_CACHE_DIR` (keyed by URL, size and modification time, renamed into place when
  complete; a Shapefile with its ``.shx``/``.dbf``/``.prj``/``.cpg``), by the client to count its
  features and by each worker that reads one of its slices. GeoJSON, GML and KML are parsed whole
  by GDAL when opened, so their slices bound the frame's size, not the parsing.

Errors: a missing input is :class:`~fused_celery.errors.InputNotFoundError`, an unknown suffix or
URL scheme :class:`~fused_celery.errors.UnsupportedInputError`, anything else wrong with the input
(no files, no rows, corrupt or truncated, no geometry, missing columns)
:class:`~fused_celery.errors.IngestInputError` naming the file (and the slice).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from fused_celery import storage
from fused_celery.errors import (
    IngestInputError,
    InputNotFoundError,
    StorageError,
    UnsupportedInputError,
    UnsupportedURLError,
)
from fused_celery.options import options
from fused_celery.partition.config import GeospatialPartitionJobStepConfig
from fused_celery.partition.prepare import ensure_geodataframe, frame_from_lonlat

if TYPE_CHECKING:
    import geopandas as gpd
    import pyarrow as pa
    import pyarrow.parquet as pq

PARQUET_SUFFIXES = (".parquet", ".geoparquet", ".pq")
CSV_SUFFIXES = (".csv",)
GDAL_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".zip", ".gml", ".kml")
SUPPORTED_SUFFIXES = (*PARQUET_SUFFIXES, *CSV_SUFFIXES, *GDAL_SUFFIXES)
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
"""Files a Shapefile is read with (same stem); downloaded with it from S3."""
_OTHER_SHAPEFILE_FILES = (*SHAPEFILE_SIDECARS, ".qix", ".sbn", ".sbx", ".shp.xml", ".aih", ".ain")

INPUT_CACHE_DIR = os.path.join(
    tempfile.gettempdir(), f"fused-celery-inputs-{getattr(os, 'getuid', lambda: 'user')()}"
)
"""Where GDAL-format files on S3 are downloaded to (one folder per URL, size and mtime)."""

_CSV_BLOCK = 8 << 20
_READ_INTO_ALL = 1 << 62  # target_rows of read_input: each file as one slice
_INDEX_COLUMN = re.compile(r"__index_level_\d+__")


def _library_errors() -> tuple[type[BaseException], ...]:
    """Errors of the readers (pyarrow, pyogrio/GDAL, pandas, shapely) that become
    IngestInputError. Not ``Exception``: Celery's SoftTimeLimitExceeded and the like must go
    through untouched."""
    from shapely.errors import ShapelyError

    return (OSError, ValueError, TypeError, RuntimeError, LookupError, ShapelyError)


Format = Literal["parquet", "csv", "gdal"]


class InputSlice(BaseModel):
    """One part of one input file; JSON-able (``model_dump(mode="json")`` / ``model_validate``).

    slice_id: 0..n-1 in input order (files in order, then position in the file). url: the
    normalised local path or ``s3://`` URL of the file. format: ``"parquet"``, ``"csv"`` or
    ``"gdal"``. start / stop (exclusive): row groups (parquet), bytes (csv, whole records) or
    features (gdal). num_rows: rows of the slice when known (None for a CSV whose quotes do not
    balance). layer: the GDAL layer (None: the first). row_start / row_stop: parquet only, a row
    range within the single row group ``start`` (a group larger than the target cut in parts).
    header_bytes: csv only, the length of the header line at the start of the file. size /
    mtime_ns: of the file on S3 when listed (GDAL formats: the download cache key). sidecars: the
    URLs downloaded with a Shapefile on S3. error: set when the file could not be listed and
    ``config.ignore_chunk_error`` is on: the slice stands for the whole file and reading it
    raises this error (so that only this slice fails).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    slice_id: int
    url: str
    format: Format
    start: int
    stop: int
    num_rows: int | None
    layer: str | None = None
    row_start: int | None = None
    row_stop: int | None = None
    header_bytes: int = 0
    size: int | None = None
    mtime_ns: int | None = None
    sidecars: tuple[str, ...] = ()
    error: str | None = None

    def describe(self) -> str:
        """``slice <id> (<what it covers>) of <url>``, for messages."""
        if self.format == "parquet":
            if self.row_start is not None:
                what = f"rows {self.row_start}-{self.row_stop} of row group {self.start}"
            else:
                what = f"row groups {self.start}-{self.stop - 1}"
        elif self.format == "csv":
            what = f"bytes {self.start}-{self.stop}"
        else:
            what = f"features {self.start}-{self.stop}"
        return f"slice {self.slice_id} ({what}) of {self.url}"


# --- public API ---------------------------------------------------------------------------------


def list_slices(
    config: GeospatialPartitionJobStepConfig,
    *,
    target_rows: int | None = None,
    target_bytes: int | None = None,
) -> list[InputSlice]:
    """The slices of ``config.input``, in input order (see the module docstring per format).

    target_rows: rows per slice at most (default ``options.ingest_slice_rows``). target_bytes:
    uncompressed bytes per slice, about (default ``options.ingest_slice_bytes``). Parquet slices
    are whole row groups when the groups are within both, so they may hold fewer.

    Raises :class:`TypeError` for an in-memory (Geo)DataFrame input (write it to storage first),
    :class:`InputNotFoundError`, :class:`UnsupportedInputError`, :class:`IngestInputError` (no
    input files, no rows at all, a corrupt or truncated file, no geometry, ``lonlat_cols`` or
    ``load_columns`` naming missing columns). With ``config.ignore_chunk_error``, a file that
    exists but cannot be listed (corrupt, no geometry, missing columns, ...) becomes one slice
    with ``error`` set, whose read raises that error.
    """
    import pandas as pd

    if isinstance(config.input, pd.DataFrame):
        raise TypeError(
            "an in-memory (Geo)DataFrame input cannot be listed in slices; write it to storage "
            "first (e.g. gdf.to_parquet(url)) and ingest the URL"
        )
    target = options.ingest_slice_rows if target_rows is None else int(target_rows)
    if target < 1:
        raise ValueError(f"target_rows must be >= 1, got {target_rows}")
    nbytes = options.ingest_slice_bytes if target_bytes is None else int(target_bytes)
    if nbytes < 1:
        raise ValueError(f"target_bytes must be >= 1, got {target_bytes}")
    parts: list[dict[str, Any]] = []
    files = input_files(config)
    for url in files:
        fmt = file_format(url)
        try:
            with _reading(url):
                if fmt == "parquet":
                    parts.extend(_parquet_slices(url, config, target, nbytes))
                elif fmt == "csv":
                    parts.extend(_csv_slices(url, config, target, nbytes))
                else:
                    parts.extend(_gdal_slices(url, config, target, nbytes))
        except (InputNotFoundError, UnsupportedInputError):
            raise
        except IngestInputError as exc:
            if not config.ignore_chunk_error:
                raise
            failed = {"start": 0, "stop": 0, "num_rows": None, "error": str(exc)}
            parts.append({"url": url, "format": fmt, **failed})
    if not parts:
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        raise IngestInputError(f"the ingest input has no rows (read {shown}); nothing to ingest")
    return [InputSlice(slice_id=i, **p) for i, p in enumerate(parts)]


def read_slice(sl: InputSlice, config: GeospatialPartitionJobStepConfig) -> gpd.GeoDataFrame:
    """The rows of ``sl`` as a GeoDataFrame (index 0..n-1, the file's CRS).

    Reads only ``config.load_columns`` (plus the geometry, or the ``lonlat_cols``, which become
    EPSG:4326 points) when set. Library errors are :class:`IngestInputError` naming the file and
    the slice; ``lonlat_cols`` / ``load_columns`` naming missing columns list the columns there
    are.
    """
    if sl.error is not None:
        raise IngestInputError(sl.error)
    with _reading(sl.url, sl.describe()):
        if sl.format == "parquet":
            return _read_parquet_slice(sl, config)
        if sl.format == "csv":
            return _read_csv_slice(sl, config)
        return _read_gdal_slice(sl, config)


def read_input(config: GeospatialPartitionJobStepConfig) -> gpd.GeoDataFrame:
    """The whole input of ``config`` as one GeoDataFrame (the single-process path).

    An in-memory (Geo)DataFrame goes through :func:`~.prepare.ensure_geodataframe`; files are
    listed with :func:`list_slices` (each file one slice) and read with :func:`read_slice`. When
    the files' CRSs differ, each is reprojected to EPSG:4326.
    """
    import pandas as pd

    if isinstance(config.input, pd.DataFrame):
        return ensure_geodataframe(config.input, config.lonlat_cols)
    whole = list_slices(config, target_rows=_READ_INTO_ALL, target_bytes=_READ_INTO_ALL)
    frames = [read_slice(sl, config) for sl in whole]
    if len(frames) == 1:
        return frames[0]
    crs = {f.crs.to_string() if f.crs is not None else None for f in frames}
    if len(crs) > 1:
        frames = [f.to_crs("EPSG:4326") if f.crs is not None else f for f in frames]
    name = frames[0].geometry.name
    frames = [f if f.geometry.name == name else f.rename_geometry(name) for f in frames]
    return pd.concat(frames, ignore_index=True)


# --- files --------------------------------------------------------------------------------------


def input_files(config: GeospatialPartitionJobStepConfig) -> list[str]:
    """The input files of ``config`` (normalised URLs): each path of ``config.input`` in order, a
    folder expanded into its files (recursively, sorted, filtered by ``file_suffix``)."""
    items = [config.input] if isinstance(config.input, str) else list(config.input)
    files: list[str] = []
    for item in items:
        try:
            url = storage.normalize(item)
        except UnsupportedURLError as exc:
            raise UnsupportedInputError(f"cannot ingest {item!r}: {exc}") from exc
        with _reading(url):
            if storage.is_file(url):
                files.append(url)
                continue
            names = storage.list_files(url, recursive=True)
            if not names and not storage.exists(url):
                raise InputNotFoundError(f"ingest input {url} does not exist")
        kept = _folder_inputs(names, config.file_suffix)
        if not kept:
            found = f"; it holds {names[:10]}" if names else ", it is empty"
            raise IngestInputError(
                f"no input files in folder {url} (file_suffix={config.file_suffix!r}, names "
                f"starting with '.' or '_' skipped){found}"
            )
        files.extend(storage.join(url, n) for n in kept)
    return files


def _folder_inputs(names: list[str], suffix: str | None) -> list[str]:
    """The names (relative, ``/``-separated) of a folder listing that are inputs."""
    visible = [n for n in names if not any(p.startswith((".", "_")) for p in n.split("/"))]
    if suffix:
        return [n for n in visible if n.endswith(suffix)]
    stems = {n[:-4].lower() for n in visible if n.lower().endswith(".shp")}
    return [
        n
        for n in visible
        if not any(
            n.lower().endswith(ext) and n[: -len(ext)].lower() in stems
            for ext in _OTHER_SHAPEFILE_FILES
        )
    ]


def file_format(url: str) -> Format:
    """The format of the file at ``url`` from its suffix (UnsupportedInputError when unknown)."""
    lower = url.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    if lower.endswith(GDAL_SUFFIXES):
        return "gdal"
    raise UnsupportedInputError(
        f"cannot ingest {url}: unknown file type; supported suffixes are "
        f"{list(SUPPORTED_SUFFIXES)} (in a folder, file_suffix picks the files to read)"
    )


@contextlib.contextmanager
def _reading(url: str, what: str | None = None) -> Iterator[None]:
    """Turn the errors of reading ``url`` into typed ones naming it, or ``what`` (a slice)."""
    try:
        yield
    except IngestInputError:
        raise
    except UnsupportedURLError as exc:
        raise UnsupportedInputError(f"cannot ingest {url}: {exc}") from exc
    except FileNotFoundError as exc:  # includes BucketNotFoundError
        detail = f": {exc}" if str(exc) and str(exc) != url else ""
        raise InputNotFoundError(f"ingest input {url} does not exist{detail}") from exc
    except StorageError:
        raise
    except _library_errors() as exc:
        where = what or f"ingest input {url}"
        raise IngestInputError(f"cannot read {where}: {type(exc).__name__}: {exc}") from exc


def _check_columns(url: str, columns: list[str], config: GeospatialPartitionJobStepConfig) -> None:
    """IngestInputError when ``lonlat_cols`` or ``load_columns`` name columns not in ``columns``."""
    for option, names in (
        ("lonlat_cols", config.lonlat_cols),
        ("load_columns", config.load_columns),
    ):
        missing = [c for c in names or () if c not in columns]
        if missing:
            raise IngestInputError(
                f"{option} names missing column(s) {missing}; {url} has columns {columns}"
            )


def _wanted(
    columns: list[str], config: GeospatialPartitionJobStepConfig, *always: str
) -> list[str]:
    """``columns`` (file order) to read: ``load_columns`` + ``lonlat_cols`` + ``always``, or all."""
    if config.load_columns is None:
        return list(columns)
    keep = {*config.load_columns, *(config.lonlat_cols or ()), *always}
    return [c for c in columns if c in keep]


# --- parquet ------------------------------------------------------------------------------------


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
    url: str, pf: pq.ParquetFile, config: GeospatialPartitionJobStepConfig
) -> tuple[list[str], dict[str, Any] | None]:
    """The columns to read and the geo metadata (None with ``lonlat_cols``); checks columns."""
    schema = pf.schema_arrow
    index_cols = {
        c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)
    }
    names = [n for n in schema.names if n not in index_cols and not _INDEX_COLUMN.fullmatch(n)]
    _check_columns(url, names, config)
    geo = _parquet_geo(url, schema)
    if config.lonlat_cols is not None:
        geometry_cols = set(geo["columns"]) if geo else set()
        return [c for c in _wanted(names, config) if c not in geometry_cols], None
    geometry_cols = [c for c in (geo or {}).get("columns", {}) if c in names]
    if not geometry_cols:
        raise IngestInputError(
            f"ingest input {url} is a Parquet file without geometry (no GeoParquet 'geo' "
            f"metadata); pass lonlat_cols=(lon_column, lat_column) to make points; its columns "
            f"are {names}"
        )
    primary = geo.get("primary_column") if geo else None
    primary = primary if primary in geometry_cols else geometry_cols[0]
    return _wanted(names, config, primary), geo


def _parquet_slices(
    url: str, config: GeospatialPartitionJobStepConfig, target: int, target_bytes: int
) -> list[dict[str, Any]]:
    with _parquet_file(url) as pf:
        _parquet_plan(url, pf, config)
        meta = pf.metadata
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        sizes = [(g.num_rows, max(0, g.total_byte_size)) for g in groups]
    out: list[dict[str, Any]] = []
    base = {"url": url, "format": "parquet"}
    first, rows, size = 0, 0, 0

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
    sl: InputSlice, config: GeospatialPartitionJobStepConfig
) -> tuple[pa.Table, dict[str, Any] | None]:
    """The rows of a Parquet slice as Arrow, undecoded, and the file's GeoParquet ``geo``
    metadata (None for plain Parquet read through ``lonlat_cols``); errors as in
    :func:`read_slice`."""
    if sl.error is not None:
        raise IngestInputError(sl.error)
    if sl.format != "parquet":
        raise ValueError(f"read_parquet_table needs a Parquet slice, got {sl.format!r}")
    with _reading(sl.url, sl.describe()):
        return _read_parquet_table(sl, config)


def parquet_geo(sl: InputSlice) -> dict[str, Any] | None:
    """The GeoParquet ``geo`` metadata of a Parquet slice's file (None when it has none), from
    the file's footer alone."""
    with _reading(sl.url, sl.describe()), _parquet_file(sl.url) as pf:
        return _parquet_geo(sl.url, pf.schema_arrow)


def _read_parquet_table(
    sl: InputSlice, config: GeospatialPartitionJobStepConfig
) -> tuple[pa.Table, dict[str, Any] | None]:
    import pyarrow as pa

    with _parquet_file(sl.url) as pf:
        columns, geo = _parquet_plan(sl.url, pf, config)
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


def _read_parquet_slice(
    sl: InputSlice, config: GeospatialPartitionJobStepConfig
) -> gpd.GeoDataFrame:
    table, geo = _read_parquet_table(sl, config)
    return _parquet_frame(table, geo, config)


def parquet_frame(
    sl: InputSlice,
    table: pa.Table,
    geo: dict[str, Any] | None,
    config: GeospatialPartitionJobStepConfig,
) -> gpd.GeoDataFrame:
    """What :func:`read_slice` gives for a Parquet slice, from :func:`read_parquet_table`'s
    result (so a caller that looked at the table does not read it twice)."""
    with _reading(sl.url, sl.describe()):
        return _parquet_frame(table, geo, config)


def _parquet_frame(
    table: pa.Table, geo: dict[str, Any] | None, config: GeospatialPartitionJobStepConfig
) -> gpd.GeoDataFrame:
    if geo is None:
        assert config.lonlat_cols is not None
        frame = table.to_pandas().reset_index(drop=True)
        return frame_from_lonlat(frame, *config.lonlat_cols)
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


# --- csv ----------------------------------------------------------------------------------------


def _csv_slices(
    url: str, config: GeospatialPartitionJobStepConfig, target: int, target_bytes: int
) -> list[dict[str, Any]]:
    with storage.open_input_file(url) as src:
        size = src.size()
        first = src.read_at(min(size, _CSV_BLOCK), 0)
        records = first.count(b"\n")
        if records > 1:  # cap the records per slice by their bytes (the header counts too)
            target = min(target, max(1, target_bytes * records // len(first)))
        src.seek(0)
        header_len, ranges = _scan_csv(src, size, target)
        header = src.read_at(header_len, 0) if header_len else b""
    columns = _csv_header(header)
    _check_columns(url, columns, config)
    if ranges and config.lonlat_cols is None:
        _check_gdal_csv_geometry(url, header, columns, config)
    return [
        {
            "url": url,
            "format": "csv",
            "start": a,
            "stop": b,
            "num_rows": n,
            "header_bytes": header_len,
        }
        for a, b, n in ranges
    ]


def _csv_header(header: bytes) -> list[str]:
    """The column names of a CSV header line."""
    text = header.decode("utf-8-sig", errors="replace")
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0] if rows else []


def _scan_csv(
    src: pa.NativeFile, size: int, target: int
) -> tuple[int, list[tuple[int, int, int | None]]]:
    """One pass over a CSV: ``(header_bytes, [(start, stop, rows)])``, each range ``target``
    records (the last one fewer), cut after a record's newline. A newline between quotes (RFC
    4180: every ``"`` toggles quoting) does not end a record; blank lines are not records."""
    odd = False  # inside quotes at the start of the block
    offset = 0
    prev_end = -1  # position of the last record-ending newline
    prev_byte = -1  # last byte of the previous block
    header_len: int | None = None
    records = 0  # data records so far
    cuts: list[int] = []  # positions after the record ending each full range
    while True:
        buf = src.read(_CSV_BLOCK)
        if not buf:
            break
        arr = np.frombuffer(buf, dtype=np.uint8)
        nl = np.flatnonzero(arr == 10)
        quotes = arr == 34
        if quotes.any():
            parity = (np.cumsum(quotes, dtype=np.uint8) & 1).astype(bool)  # wraps: parity kept
            nl = nl[parity[nl] == odd]
            odd ^= bool(parity[-1])
        elif odd:
            nl = nl[:0]
        if nl.size:
            pos = nl.astype(np.int64) + offset
            prevs = np.concatenate(([prev_end], pos[:-1]))
            length = pos - prevs - 1
            before = np.where(nl > 0, arr[np.maximum(nl - 1, 0)], prev_byte)
            ends = pos[~((length == 0) | ((length == 1) & (before == 13)))]
            prev_end = int(pos[-1])
            if header_len is None and ends.size:
                header_len, ends = int(ends[0]) + 1, ends[1:]
            if ends.size:
                numbers = np.arange(records + 1, records + ends.size + 1)
                cuts.extend((ends[numbers % target == 0] + 1).tolist())
                records += int(ends.size)
        prev_byte = int(arr[-1])
        offset += len(buf)
    if odd:  # unbalanced quotes: the records cannot be told apart; one slice
        head = src.read_at(min(size, 1 << 20), 0)
        cut = head.find(b"\n")
        header_len = size if cut < 0 else cut + 1
        ranges: list[tuple[int, int, int | None]] = []
        if size > header_len and src.read_at(size - header_len, header_len).strip():
            ranges.append((header_len, size, None))
        return header_len, ranges
    tail = size - prev_end - 1
    if tail > 0 and (tail > 1024 or src.read_at(tail, prev_end + 1).strip()):
        if header_len is None:
            header_len = size
        else:
            records += 1
    if header_len is None:
        return 0, []
    ranges = []
    start = header_len
    for cut in cuts:
        ranges.append((start, cut, target))
        start = cut
    left = records - target * len(cuts)
    if left > 0:
        ranges.append((start, size, left))
    return header_len, ranges


def _open_options(config: GeospatialPartitionJobStepConfig) -> dict[str, Any]:
    """``gdal_config.open_options`` as pyogrio keyword arguments."""
    return {k.lower(): v for k, v in config.gdal_config.open_options.items()}


@contextlib.contextmanager
def _temp_csv(data: bytes) -> Iterator[str]:
    """A temporary ``.csv`` file holding ``data`` (GDAL's CSV driver reads files)."""
    fd, path = tempfile.mkstemp(suffix=".csv", prefix="fused-celery-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _check_gdal_csv_geometry(
    url: str, header: bytes, columns: list[str], config: GeospatialPartitionJobStepConfig
) -> None:
    """IngestInputError when GDAL finds no geometry in the CSV (it decides from the header and
    the open options)."""
    import pyogrio

    with _temp_csv(header) as path:
        info = pyogrio.read_info(path, **_open_options(config))
    if info.get("geometry_type") is None:
        raise IngestInputError(
            f"ingest input {url} is a CSV without geometry: pass lonlat_cols=(lon_column, "
            "lat_column), or gdal_config.open_options X_POSSIBLE_NAMES/Y_POSSIBLE_NAMES (point "
            f"coordinates) or GEOM_POSSIBLE_NAMES (a WKT column); its columns are {columns}"
        )


def _read_csv_slice(sl: InputSlice, config: GeospatialPartitionJobStepConfig) -> gpd.GeoDataFrame:
    import pandas as pd

    with storage.open_input_file(sl.url) as src:
        header = src.read_at(sl.header_bytes, 0)
        body = src.read_at(sl.stop - sl.start, sl.start)
    if len(body) != sl.stop - sl.start:
        raise IngestInputError(
            f"{sl.describe()}: the file is shorter than when it was listed (changed or truncated)"
        )
    columns = _csv_header(header)
    _check_columns(sl.url, columns, config)
    if config.lonlat_cols is not None:
        usecols = _wanted(columns, config) if config.load_columns is not None else None
        frame = pd.read_csv(io.BytesIO(header + body), usecols=usecols)
        return frame_from_lonlat(frame, *config.lonlat_cols)
    import pyogrio

    kwargs = _open_options(config)
    if config.load_columns is not None:
        kwargs["columns"] = list(config.load_columns)
    with _temp_csv(header + body) as path:
        # Not use_arrow: GDAL's Arrow stream of a CSV whose WKT column is named "geometry" has
        # two "geometry" columns, which pyogrio mixes up.
        frame = pyogrio.read_dataframe(path, **kwargs)
    if "geometry" not in frame.columns:
        raise IngestInputError(
            f"{sl.describe()}: GDAL found no geometry in the CSV; pass lonlat_cols or the "
            f"gdal_config.open_options that name its geometry columns; its columns are {columns}"
        )
    if frame.crs is None and frame.geometry.notna().any():
        frame = frame.set_crs("EPSG:4326")
    return frame


# --- GDAL formats -------------------------------------------------------------------------------


def _gdal_kwargs(config: GeospatialPartitionJobStepConfig) -> dict[str, Any]:
    kwargs = _open_options(config)
    if config.gdal_config.layer is not None:
        kwargs["layer"] = config.gdal_config.layer
    return kwargs


def _gdal_info(url: str, path: str, config: GeospatialPartitionJobStepConfig) -> dict[str, Any]:
    """``pyogrio.read_info`` of the layer (features counted); a missing layer names the ones
    there are."""
    import pyogrio
    from pyogrio.errors import DataLayerError

    try:
        return pyogrio.read_info(path, force_feature_count=True, **_gdal_kwargs(config))
    except DataLayerError as exc:
        layer = config.gdal_config.layer
        if layer is None:
            raise
        try:
            layers = [str(row[0]) for row in pyogrio.list_layers(path)]
        except Exception:  # only to improve the message
            layers = []
        raise IngestInputError(
            f"ingest input {url} has no layer {layer!r} (gdal_config.layer); its layers are "
            f"{layers}"
        ) from exc


def _gdal_slices(
    url: str, config: GeospatialPartitionJobStepConfig, target: int, target_bytes: int
) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"url": url, "format": "gdal", "layer": config.gdal_config.layer}
    if storage.parse(url).scheme == "s3":
        size, mtime_ns, sidecars = _remote_file(url)
        base |= {"size": size, "mtime_ns": mtime_ns, "sidecars": sidecars}
        path = _local_copy(url, size, mtime_ns, sidecars)
    else:
        path = url
    info = _gdal_info(url, path, config)
    columns = [str(c) for c in info["fields"]]
    _check_columns(url, columns, config)
    if config.lonlat_cols is None and info.get("geometry_type") is None:
        raise IngestInputError(
            f"ingest input {url} has no geometry (layer {info.get('layer_name')!r}); pass "
            f"lonlat_cols=(lon_column, lat_column) to make points; its columns are {columns}"
        )
    n = int(info["features"])
    if n < 0:
        raise IngestInputError(f"GDAL cannot count the features of ingest input {url}")
    file_bytes = _file_bytes(path)
    if n and file_bytes:
        target = min(target, max(1, target_bytes * n // file_bytes))
    return [
        {**base, "start": a, "stop": min(n, a + target), "num_rows": min(n, a + target) - a}
        for a in range(0, n, target)
    ]


def _file_bytes(path: str) -> int:
    """Size of a local GDAL input (0 when unknown, e.g. a ``/vsi`` path)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_gdal_slice(sl: InputSlice, config: GeospatialPartitionJobStepConfig) -> gpd.GeoDataFrame:
    import pyogrio

    path = sl.url
    if sl.size is not None:
        path = _local_copy(sl.url, sl.size, sl.mtime_ns, sl.sidecars)
    kwargs = _gdal_kwargs(config)
    kwargs["layer"] = sl.layer
    wanted: list[str] = []
    if config.load_columns is not None or config.lonlat_cols is not None:
        wanted = [*(config.load_columns or ()), *(config.lonlat_cols or ())]
    if config.load_columns is not None:
        kwargs["columns"] = list(dict.fromkeys(wanted))
    frame = pyogrio.read_dataframe(
        path,
        skip_features=sl.start,
        max_features=sl.stop - sl.start,
        read_geometry=config.lonlat_cols is None,
        use_arrow=True,
        **kwargs,
    )
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        _check_columns(sl.url, [str(c) for c in _gdal_info(sl.url, path, config)["fields"]], config)
    if config.lonlat_cols is not None:
        return frame_from_lonlat(frame, *config.lonlat_cols)
    return frame.reset_index(drop=True)


# --- download cache for GDAL files on S3 --------------------------------------------------------


def _remote_file(url: str) -> tuple[int, int | None, tuple[str, ...]]:
    """``(size, mtime_ns, sidecar URLs)`` of a file on S3 (sidecars: of a Shapefile)."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(url)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(url)
    sidecars: tuple[str, ...] = ()
    if url.lower().endswith(".shp"):
        stem = path[:-4]
        candidates = [stem + e for ext in SHAPEFILE_SIDECARS for e in (ext, ext.upper())]
        found = [i.path for i in fs.get_file_info(candidates) if i.type == pafs.FileType.File]
        sidecars = tuple(f"s3://{p}" for p in found)
    return int(info.size), info.mtime_ns, sidecars


def _local_copy(url: str, size: int, mtime_ns: int | None, sidecars: tuple[str, ...]) -> str:
    """The local copy of the file at ``url`` (downloaded with its ``sidecars`` when absent)."""
    key = hashlib.sha256(f"{url}\n{size}\n{mtime_ns}".encode()).hexdigest()[:32]
    folder = os.path.join(INPUT_CACHE_DIR, key)
    local = os.path.join(folder, posixpath.basename(url))
    if os.path.exists(local):
        return local
    os.makedirs(folder, exist_ok=True)
    for side in sidecars:  # the main file last: when it exists, the copy is complete
        _download(side, os.path.join(folder, posixpath.basename(side)), None)
    _download(url, local, size)
    return local


def _download(url: str, dest: str, size: int | None) -> None:
    """Copy the file at ``url`` to ``dest`` (a temporary name, then renamed)."""
    fs, path = storage.resolve(url)
    tmp = f"{dest}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open_input_stream(path) as src, open(tmp, "wb") as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
        got = os.path.getsize(tmp)
        if size is not None and got != size:
            raise IngestInputError(
                f"ingest input {url} changed since it was listed ({size} bytes then, {got} now); "
                "run the ingest again"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
