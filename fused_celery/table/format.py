"""The on-disk table format: names, layout constants, ``geo`` and ``fused:*`` metadata, and
frames <-> Arrow.

A table is a folder (local path or ``s3://bucket/prefix``)::

    <table>/0.parquet      data files, one per file_id; each chunk is one Parquet row group
    <table>/1.parquet
    <table>/_sample        the commit: a few rows, and the metadata of every chunk
    <table>/_staging/      only while a writer works: staged data files and per-file samples,
                           and ``_writing`` (JSON naming fused-celery and the run)

Data files are GeoParquet 1.1: ``geo`` key-value metadata (version, primary column, WKB
encoding, geometry types, CRS as PROJJSON, bbox) and a ``bbox`` covering column
(``struct<xmin, ymin, xmax, ymax>``) whose row-group statistics let readers skip row groups.
``_sample`` is a GeoParquet file of up to 1000 rows whose key-value metadata holds
``fused:format_version = "5"`` and ``fused:_metadata``: base64 of a Parquet table with one row per
chunk (``file_id, chunk_id, bbox_minx, bbox_miny, bbox_maxx, bbox_maxy, sum_area, sum_length,
num_coords, num_rows``, bboxes and measures in EPSG:4326), and ``fused-celery:writer`` (JSON
``{"name": "fused-celery", "version": ...}``: the mark of a table this project committed, the only
kind ``overwrite=True`` replaces), and for a table an ingest made, ``fused-celery:ingest_report``
(JSON: rows in and out, dropped by reason, repaired). This is the reference SDK's layout, so
``fused.get_chunks_metadata`` / ``fused.get_chunk_from_table`` open these tables, and DuckDB,
GDAL and geopandas read the data files as plain GeoParquet.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fused_celery import storage
from fused_celery.errors import InvalidNameError, TableFormatError
from fused_celery.options import options
from fused_celery.table.facts import ChunkMetadata, RowFacts, geometry_types

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd

FORMAT_VERSION = "5"
"""The ``fused:format_version`` written and read (the reference SDK's current one)."""
SAMPLE_FILE = "_sample"
STAGING_DIR = "_staging"
WRITING_MARKER = "_writing"
COVERING_COLUMN = "bbox"
GEOPARQUET_VERSION = "1.1.0"
KEY_FORMAT_VERSION = b"fused:format_version"
KEY_METADATA = b"fused:_metadata"
KEY_WRITER = b"fused-celery:writer"
"""``_sample`` key naming the writer: JSON ``{"name": "fused-celery", "version": ...}``. Only a
table whose ``_sample`` carries it is replaced by ``overwrite=True`` (the ``fused:*`` keys are the
reference SDK's layout, written by other tools too)."""
KEY_INGEST_REPORT = b"fused-celery:ingest_report"
"""``_sample`` key of a table an ingest made: JSON of what the ingest did to the rows (rows in
and out, dropped by reason, repaired; ``Table.ingest_report``)."""
SAMPLE_ROWS = 1000
"""Rows kept in ``_sample`` (at most), spread evenly over the table."""
SAMPLE_ROWS_PER_FILE = 100
"""Rows each data file contributes to the pool the sample is drawn from (at most)."""
COMPRESSION = "snappy"

METADATA_SCHEMA = pa.schema(
    [
        ("file_id", pa.string()),
        ("chunk_id", pa.int64()),
        ("bbox_minx", pa.float64()),
        ("bbox_miny", pa.float64()),
        ("bbox_maxx", pa.float64()),
        ("bbox_maxy", pa.float64()),
        ("sum_area", pa.float64()),
        ("sum_length", pa.float64()),
        ("num_coords", pa.int64()),
        ("num_rows", pa.int64()),
    ]
)
"""Columns of the per-chunk table inside ``fused:_metadata``, in order."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")


# --- names and layout --------------------------------------------------------------------------


def validate_name(name: object, what: str = "table name") -> str:
    """``name`` as a string, if it is a safe single path component.

    Allowed: ``[A-Za-z0-9][A-Za-z0-9_.=-]*`` without ``..``. ``what`` names the thing in the
    error (default ``"table name"``). Raises :class:`InvalidNameError`.
    """
    text = str(name) if isinstance(name, (int, np.integer)) else name
    if not isinstance(text, str) or not text:
        raise InvalidNameError(f"{what} must be a non-empty string, got {name!r}")
    if "/" in text or "\\" in text:
        raise InvalidNameError(
            f"{what} {text!r} contains a path separator; a {what} is a single name "
            "(pass a URL or absolute path where a location is meant)"
        )
    if ".." in text:
        raise InvalidNameError(f"{what} {text!r} contains '..'; use a plain name")
    if not _NAME_RE.match(text):
        raise InvalidNameError(
            f"{what} {text!r} has characters outside [A-Za-z0-9_.=-] or does not start with a "
            "letter or digit; use letters, digits, '_', '.', '=', '-'"
        )
    return text


def resolve_table_url(table: str | os.PathLike[str]) -> str:
    """The normalised URL of a table given as a URL, a path or a bare name.

    URLs (``s3://``, ``file://``) and paths that start with ``/``, ``~``, ``./`` or ``../`` are
    locations. Anything else is a table name, checked by :func:`validate_name` and placed at
    ``<options.storage_root>/tables/<name>``.
    """
    text = os.fspath(table)
    if not isinstance(text, str):
        raise InvalidNameError(f"table must be a URL, path or name, got {table!r}")
    if "://" in text or text.startswith(("/", "~", "./", "../")) or text in (".", ".."):
        return storage.normalize(text)
    name = validate_name(text, "table name")
    return storage.join(options.storage_root, "tables", name)


def _sample_url(url: str) -> str:
    return storage.join(url, SAMPLE_FILE)


def _file_url(url: str, file_id: str) -> str:
    return storage.join(url, f"{file_id}.parquet")


# --- geo and fused:* metadata ------------------------------------------------------------------


def geo_metadata(
    columns: Mapping[str, Mapping[str, Any]], primary_column: str, *, covering: bool = True
) -> dict[str, Any]:
    """The GeoParquet 1.1 ``geo`` metadata.

    columns: per geometry column, ``{"geometry_types": [...], "crs": <PROJJSON dict>, "bbox":
    [minx, miny, maxx, maxy] or None}``. primary_column: the main geometry column. covering:
    declare the ``bbox`` struct column as the primary column's covering (default True).
    """
    out: dict[str, Any] = {}
    for name, info in columns.items():
        col: dict[str, Any] = {
            "encoding": "WKB",
            "geometry_types": list(info.get("geometry_types", [])),
            "crs": info.get("crs"),
        }
        bbox = info.get("bbox")
        if bbox is not None and all(math.isfinite(v) for v in bbox):
            col["bbox"] = [float(v) for v in bbox]
        if covering and name == primary_column:
            col["covering"] = {
                "bbox": {k: [COVERING_COLUMN, k] for k in ("xmin", "ymin", "xmax", "ymax")}
            }
        out[name] = col
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": primary_column,
        "columns": out,
        "creator": {"library": "fused-celery", "version": _version()},
    }


def _is_covering(geo: Mapping[str, Any] | None) -> bool:
    if not geo:
        return False
    for col in geo.get("columns", {}).values():
        cov = (col.get("covering") or {}).get("bbox") or {}
        if cov.get("xmin", [None])[0] == COVERING_COLUMN:
            return True
    return False


def encode_chunk_metadata(chunks: Iterable[ChunkMetadata]) -> bytes:
    """``fused:_metadata``: base64 of a Parquet table with one row per chunk."""
    rows = [c.model_dump() for c in chunks]
    table = pa.Table.from_pylist(rows, schema=METADATA_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=COMPRESSION)
    return base64.b64encode(sink.getvalue())


def decode_chunk_metadata(value: bytes) -> list[ChunkMetadata]:
    """The chunks in a ``fused:_metadata`` value (inverse of :func:`encode_chunk_metadata`)."""
    table = pq.read_table(io.BytesIO(base64.b64decode(value)))
    missing = [n for n in METADATA_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"chunk metadata lacks columns {missing}")
    return [
        ChunkMetadata(**{**row, "file_id": str(row["file_id"])})
        for row in table.select(METADATA_SCHEMA.names).to_pylist()
    ]


def _check_format(kv: Mapping[bytes, bytes], sample_url: str) -> None:
    version = kv.get(KEY_FORMAT_VERSION)
    if version is None or KEY_METADATA not in kv:
        raise TableFormatError(
            f"{sample_url} has no fused metadata ({KEY_FORMAT_VERSION.decode()} / "
            f"{KEY_METADATA.decode()}): it was not written as a fused table. Write the table "
            "with fused-celery (e.g. fused.ingest) or open its files as plain Parquet"
        )
    if version != FORMAT_VERSION.encode():
        raise TableFormatError(
            f"{sample_url} has {KEY_FORMAT_VERSION.decode()} {version.decode(errors='replace')!r}; "
            f"fused-celery reads version {FORMAT_VERSION} only. Rewrite the table with "
            "fused-celery (rerun the job that made it) to convert it"
        )


def written_by_us(kv: Mapping[bytes, bytes]) -> bool:
    """Whether ``_sample`` key-value metadata ``kv`` names fused-celery as its writer
    (:data:`KEY_WRITER` holding ``{"name": "fused-celery", ...}``)."""
    raw = kv.get(KEY_WRITER)
    if not raw:
        return False
    try:
        value = json.loads(raw)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("name") == "fused-celery"


def ingest_report(kv: Mapping[bytes, bytes]) -> dict[str, Any] | None:
    """The :data:`KEY_INGEST_REPORT` of ``_sample`` key-value metadata ``kv`` (None: absent or
    unreadable)."""
    raw = kv.get(KEY_INGEST_REPORT)
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def writer_marker(run_id: str) -> bytes:
    """Content of ``_staging/_writing``: names fused-celery and the run writing the table."""
    return json.dumps({"writer": "fused-celery", "run_id": run_id}).encode()


def _decode(kv: Mapping[bytes, bytes], sample_url: str) -> list[ChunkMetadata]:
    try:
        return decode_chunk_metadata(kv[KEY_METADATA])
    except Exception as exc:
        raise TableFormatError(
            f"the chunk metadata ({KEY_METADATA.decode()}) in {sample_url} cannot be decoded "
            f"({exc}); rewrite the table"
        ) from exc


def _version() -> str:
    from fused_celery.version import __version__

    return __version__


# --- frames <-> Arrow ---------------------------------------------------------------------------


def _crs_json(crs: Any) -> dict[str, Any]:
    from pyproj import CRS

    return CRS.from_user_input(crs if crs is not None else "EPSG:4326").to_json_dict()


@functools.lru_cache(maxsize=1)
def _wgs84_json() -> dict[str, Any]:
    """PROJJSON of EPSG:4326 (computed once)."""
    return _crs_json("EPSG:4326")


def _crs_from_json(value: Any) -> Any:
    """A pyproj CRS from GeoParquet's ``crs`` (PROJJSON, string or None → EPSG:4326), reduced to
    its EPSG code when it has one, so it prints and compares like ``EPSG:xxxx``; made once per
    process for each distinct value (finding the code takes a millisecond, and every chunk read
    asks)."""
    text = value if value is None or isinstance(value, str) else json.dumps(value, sort_keys=True)
    return _crs_from_text(text)


@functools.lru_cache(maxsize=64)
def _crs_from_text(text: str | None) -> Any:
    from pyproj import CRS

    if text is None:
        return CRS.from_epsg(4326)
    crs = CRS.from_user_input(json.loads(text) if text.lstrip().startswith("{") else text)
    code = crs.to_epsg(min_confidence=100)
    return CRS.from_epsg(code) if code else crs


def _is_wgs84(crs: Any) -> bool:
    if crs is None:
        return True
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    return c.to_epsg() == 4326 or c.equals(CRS("OGC:CRS84"))


def frame_to_arrow(frame: gpd.GeoDataFrame) -> tuple[pa.Table, dict[str, Any]]:
    """One chunk as an Arrow table ready for a data file, and facts about it.

    Geometry columns become ISO WKB; the ``bbox`` covering struct is appended (a column named
    ``bbox`` in ``frame`` is replaced by it); the index is dropped. The facts are
    ``{"primary": name, "crs": PROJJSON, "columns": {name: {"geometry_types", "bbox"}},
    "metadata": the chunk's ChunkMetadata fields (bbox and measures in EPSG:4326), as JSON}``;
    all JSON-able. In another CRS than EPSG:4326 the metadata is computed without reprojecting
    the vertices (:meth:`RowFacts.of_projected`). A frame without CRS is taken to be in
    EPSG:4326.
    """
    import geopandas as gpd
    import pandas as pd
    import shapely

    if not isinstance(frame, gpd.GeoDataFrame):
        raise TypeError(
            f"a table chunk must be a geopandas.GeoDataFrame, got {type(frame).__name__}"
        )
    try:
        primary = frame.geometry.name
    except AttributeError as exc:
        raise TypeError(
            "a table chunk needs an active geometry column; call set_geometry() first"
        ) from exc
    geo_cols = [c for c in frame.columns if isinstance(frame[c].dtype, gpd.array.GeometryDtype)]
    plain = frame.drop(
        columns=[*geo_cols, *([COVERING_COLUMN] if COVERING_COLUMN in frame.columns else [])]
    )
    n = len(frame)
    attrs = pa.Table.from_pandas(pd.DataFrame(plain), preserve_index=False)
    attrs = attrs.replace_schema_metadata(None)
    facts: dict[str, Any] = {"primary": primary, "columns": {}}
    crs = frame.crs
    facts["crs"] = _crs_json(crs)
    arrays: dict[str, pa.Array] = {}
    for col in geo_cols:
        geoms = np.asarray(frame[col].array, dtype=object)
        wkb = shapely.to_wkb(geoms, flavor="iso") if n else np.empty(0, dtype=object)
        arrays[col] = pa.array(wkb, type=pa.binary())
        rows = RowFacts.of(geoms) if col == primary else None
        bounds = (
            rows.bounds if rows is not None else shapely.bounds(geoms) if n else np.empty((0, 4))
        )
        ok = ~np.isnan(bounds).any(axis=1)
        bbox = (
            [bounds[ok, 0].min(), bounds[ok, 1].min(), bounds[ok, 2].max(), bounds[ok, 3].max()]
            if ok.any()
            else None
        )
        types = rows.geometry_types() if rows is not None else geometry_types(geoms)
        facts["columns"][col] = {"geometry_types": types, "bbox": bbox}
        if rows is not None:
            covering = pa.StructArray.from_arrays(
                [pa.array(bounds[:, i], type=pa.float64()) for i in range(4)],
                names=["xmin", "ymin", "xmax", "ymax"],
                mask=pa.array(~ok, type=pa.bool_()),
            )
            wgs84 = rows if _is_wgs84(crs) else rows.projected_to_wgs84(crs)
            facts["metadata"] = wgs84.chunk_metadata("0", 0).model_dump(mode="json")
    # Keep the frame's column order; the covering goes last.
    columns, names = [], []
    for col in frame.columns:
        if col == COVERING_COLUMN and col not in geo_cols:
            continue
        columns.append(arrays[col] if col in arrays else attrs.column(str(col)))
        names.append(str(col))
    columns.append(covering)
    names.append(COVERING_COLUMN)
    table = pa.Table.from_arrays(columns, names=names) if columns else pa.table({})
    assert table.num_rows == n
    return table, facts


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in its order and types (missing ones all null)."""
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            arrays.append(col if col.type == field.type else col.cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _unify(tables: Sequence[pa.Table]) -> pa.Schema:
    """One schema for ``tables`` (permissive: a column null in one chunk and typed in another
    takes the type; int and float widen), without metadata."""
    schema = pa.unify_schemas([t.schema for t in tables], promote_options="permissive")
    return schema.remove_metadata()


def _geo_from_schema(schema: pa.Schema) -> dict[str, Any] | None:
    raw = (schema.metadata or {}).get(b"geo")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def arrow_to_frame(table: pa.Table, geo: Mapping[str, Any] | None) -> pd.DataFrame:
    """A GeoDataFrame from an Arrow table read from a data file (``geo`` = its GeoParquet
    metadata); a plain DataFrame when no geometry column is in ``table``. Null CRS → EPSG:4326.
    """
    import geopandas as gpd

    df = table.to_pandas()
    if not geo:
        return df
    present = [c for c in geo.get("columns", {}) if c in df.columns]
    if not present:
        return df
    for col in present:
        crs = _crs_from_json(geo["columns"][col].get("crs"))
        df[col] = gpd.GeoSeries.from_wkb(df[col].to_numpy(dtype=object), crs=crs, index=df.index)
    primary = geo.get("primary_column")
    active = primary if primary in present else present[0]
    return gpd.GeoDataFrame(df, geometry=active)
