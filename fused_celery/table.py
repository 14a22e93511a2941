"""Partitioned tables: the on-disk format, the writer every job uses, and the readers.

A table is a folder (local path or ``s3://bucket/prefix``)::

    <table>/0.parquet      data files, one per file_id; each chunk is one Parquet row group
    <table>/1.parquet
    <table>/_sample        the commit: a few rows, and the metadata of every chunk
    <table>/_staging/      only while a writer works: staged data files and per-file samples

Data files are GeoParquet 1.1: ``geo`` key-value metadata (version, primary column, WKB
encoding, geometry types, CRS as PROJJSON, bbox) and a ``bbox`` covering column
(``struct<xmin, ymin, xmax, ymax>``) whose row-group statistics let readers skip row groups.
``_sample`` is a GeoParquet file of up to 1000 rows whose key-value metadata holds
``fused:format_version = "5"`` and ``fused:_metadata``: base64 of a Parquet table with one row per
chunk (``file_id, chunk_id, bbox_minx, bbox_miny, bbox_maxx, bbox_maxy, sum_area, sum_length,
num_coords, num_rows``, bboxes and measures in EPSG:4326). This is the reference SDK's layout, so
``fused.get_chunks_metadata`` / ``fused.get_chunk_from_table`` open these tables, and DuckDB,
GDAL and geopandas read the data files as plain GeoParquet.

Commit protocol (:class:`TableWriter`): data files are written under deterministic names in
``_staging/<run_id>/``; :meth:`TableWriter.commit` moves them into place and writes ``_sample``
last. A folder without ``_sample`` is not a table: readers raise :class:`IncompleteTableError`.
Rerunning a crashed job rewrites the same names, and commit deletes data files it did not
list, so rows are never duplicated. One writer per table at a time.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from fused_celery import storage
from fused_celery.errors import (
    ChunkNotFoundError,
    ColumnNotFoundError,
    CorruptFileError,
    IncompleteTableError,
    InvalidNameError,
    StorageError,
    TableExistsError,
    TableFormatError,
    TableNotFoundError,
)
from fused_celery.options import options

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


# --- names -------------------------------------------------------------------------------------


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


# --- chunk metadata (pure) ---------------------------------------------------------------------


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

    bounds: (n, 4) minx, miny, maxx, maxy (NaN for null/empty). area / length: shapely's, in
    degrees. num_coords: coordinate counts. type_id: shapely type ids (-1 null). has_z: 3D rows.
    """

    bounds: np.ndarray
    area: np.ndarray
    length: np.ndarray
    num_coords: np.ndarray
    type_id: np.ndarray
    has_z: np.ndarray

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
        if (types == 0).all():  # points: no area, no length, one coordinate
            xy = shapely.get_coordinates(geoms)
            n = len(geoms)
            return cls(
                np.column_stack([xy, xy]), np.zeros(n), np.zeros(n), np.ones(n, np.int64),
                types, shapely.has_z(geoms),
            )  # fmt: skip
        return cls(
            shapely.bounds(geoms),
            shapely.area(geoms).astype(np.float64),
            shapely.length(geoms).astype(np.float64),
            shapely.get_num_coordinates(geoms).astype(np.int64),
            types,
            shapely.has_z(geoms),
        )

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
        return cls(
            np.concatenate([p.bounds for p in parts]),
            np.concatenate([p.area for p in parts]),
            np.concatenate([p.length for p in parts]),
            np.concatenate([p.num_coords for p in parts]),
            np.concatenate([p.type_id for p in parts]),
            np.concatenate([p.has_z for p in parts]),
        )

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


def _metadata_key(chunks: Iterable[ChunkMetadata]) -> str:
    return json.dumps([c.model_dump() for c in chunks], sort_keys=True)


def _version() -> str:
    try:
        from fused_celery import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


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
    its EPSG code when it has one, so it prints and compares like ``EPSG:xxxx``."""
    from pyproj import CRS

    if value is None:
        return CRS.from_epsg(4326)
    crs = CRS.from_user_input(value)
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
    "wgs84": shapely geometries of the primary column in EPSG:4326}``. A frame without CRS is
    taken to be in EPSG:4326.
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
        bounds = shapely.bounds(geoms) if n else np.empty((0, 4))
        ok = ~np.isnan(bounds).any(axis=1)
        bbox = (
            [bounds[ok, 0].min(), bounds[ok, 1].min(), bounds[ok, 2].max(), bounds[ok, 3].max()]
            if ok.any()
            else None
        )
        facts["columns"][col] = {"geometry_types": geometry_types(geoms), "bbox": bbox}
        if col == primary:
            covering = pa.StructArray.from_arrays(
                [pa.array(bounds[:, i], type=pa.float64()) for i in range(4)],
                names=["xmin", "ymin", "xmax", "ymax"],
                mask=pa.array(~ok, type=pa.bool_()),
            )
            wgs84 = (
                geoms
                if _is_wgs84(crs)
                else np.asarray(gpd.GeoSeries(geoms, crs=crs).to_crs(4326).array, dtype=object)
            )
            facts["wgs84"] = wgs84
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


# --- reading -----------------------------------------------------------------------------------


class Table(BaseModel):
    """An opened, committed table.

    url: normalised table URL; name: its last path component; table_schema: the Arrow schema of
    its rows (``_sample``'s, with the ``bbox`` covering column, without fused keys);
    column_names: the columns readers return (the covering column left out); num_rows /
    num_files / num_chunks: totals over non-empty chunks; sample: up to 1000 rows; chunk_metadata:
    one :class:`ChunkMetadata` per chunk; files: the file ids, sorted.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    url: str
    name: str
    table_schema: pa.Schema
    column_names: list[str]
    num_rows: int
    num_files: int
    num_chunks: int
    sample: Any = None
    chunk_metadata: list[ChunkMetadata]
    files: list[str]

    @property
    def columns(self) -> list[str]:
        """Same as ``column_names``."""
        return self.column_names

    @property
    def file_urls(self) -> list[str]:
        """URLs of the data files, in ``files`` order."""
        return [self.file_url(f) for f in self.files]

    def file_url(self, file_id: str | int) -> str:
        """URL of the data file of ``file_id``."""
        return storage.join(self.url, f"{validate_name(file_id, 'file_id')}.parquet")

    @property
    def metadata_gdf(self) -> gpd.GeoDataFrame:
        """The chunk metadata as a GeoDataFrame of bbox polygons (EPSG:4326)."""
        return _metadata_frame(self.chunk_metadata)

    def get_chunk(
        self,
        file_id: str | int | None = None,
        chunk_id: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """One chunk (or a whole file when ``chunk_id`` is None, the whole table when
        ``file_id`` is None); see :func:`get_chunk_from_table`."""
        return get_chunk_from_table(
            self.url, file_id, chunk_id, columns=columns, _metadata=self.chunk_metadata
        )

    def get_dataframe(
        self, file_id: str | int | None = None, chunk_id: int | None = None
    ) -> pd.DataFrame:
        """The whole table (default), one file, or one chunk, as one frame."""
        return get_chunk_from_table(self.url, file_id, chunk_id, _metadata=self.chunk_metadata)

    def get_dataframe_bbox(
        self,
        minx: float,
        miny: float,
        maxx: float,
        maxy: float,
        n_rows: int | None = None,
        columns: Sequence[str] | None = None,
        clip: bool = True,
        buffer: float | None = None,
    ) -> gpd.GeoDataFrame:
        """Rows in a bbox (EPSG:4326), reading only the chunks that intersect it.

        n_rows: at most this many rows (default all); columns: besides geometry (default all);
        clip: keep only rows whose geometry intersects the box (default True); buffer: widen
        the box by this many degrees on each side (default None).
        """
        b = float(buffer or 0.0)
        return read_bbox(
            self.url,
            (minx - b, miny - b, maxx + b, maxy + b),
            columns=columns,
            clip=clip,
            n_rows=n_rows,
            _metadata=self.chunk_metadata,
        )

    def __repr__(self) -> str:
        return (
            f"Table(url={self.url!r}, num_files={self.num_files}, num_chunks={self.num_chunks}, "
            f"num_rows={self.num_rows}, columns={self.column_names!r})"
        )

    __str__ = __repr__


def _sample_url(url: str) -> str:
    return storage.join(url, SAMPLE_FILE)


def _absent_table_error(url: str) -> TableNotFoundError:
    """The error for a table URL without ``_sample``: incomplete, missing or not a folder."""
    storage.check_bucket(url)
    if storage.is_file(url):
        return TableNotFoundError(f"{url} is a file, not a table folder; pass the folder")
    files = storage.list_files(url, recursive=True)
    if files:
        preview = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
        return IncompleteTableError(
            f"table {url} is incomplete: it has {len(files)} file(s) ({preview}) but no "
            f"{SAMPLE_FILE}, so its writer never committed (still running, or crashed). It is "
            "not read as a whole table; rerun the job that writes it to complete it"
        )
    return TableNotFoundError(f"no table at {url} (nothing is stored there); check the URL")


def _corrupt(url: str, exc: BaseException) -> StorageError:
    """The error for a failed Parquet read of ``url``: a storage failure stays one, anything
    else means the bytes are not valid Parquet."""
    if isinstance(exc, StorageError):
        return exc
    if "AWS Error" in str(exc):
        return StorageError(f"cannot read {url}: {exc}")
    return CorruptFileError(
        f"Parquet file {url} is corrupt or not Parquet ({exc}); rewrite the table "
        "(rerun its job with overwrite=True) or delete the file"
    )


@contextmanager
def _parquet_file(url: str) -> Iterator[pq.ParquetFile]:
    """The Parquet file at ``url``, footer read; closed (with its source) on exit.
    ``FileNotFoundError`` when absent, :class:`CorruptFileError` when not Parquet."""
    source = storage.open_input_file(url)
    try:
        try:
            pf = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as exc:
            raise _corrupt(url, exc) from exc
        with pf:
            yield pf
    finally:
        source.close()


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


def _decode(kv: Mapping[bytes, bytes], sample_url: str) -> list[ChunkMetadata]:
    try:
        return decode_chunk_metadata(kv[KEY_METADATA])
    except Exception as exc:
        raise TableFormatError(
            f"the chunk metadata ({KEY_METADATA.decode()}) in {sample_url} cannot be decoded "
            f"({exc}); rewrite the table"
        ) from exc


def read_chunk_metadata(url: str) -> list[ChunkMetadata]:
    """The chunks of the committed table at ``url`` (reads only ``_sample``'s footer)."""
    url = resolve_table_url(url)
    sample_url = _sample_url(url)
    try:
        with _parquet_file(sample_url) as pf:
            kv = pf.schema_arrow.metadata or {}
    except FileNotFoundError:
        raise _absent_table_error(url) from None
    _check_format(kv, sample_url)
    return _decode(kv, sample_url)


def _metadata_frame(chunks: Sequence[ChunkMetadata]) -> gpd.GeoDataFrame:
    import geopandas as gpd
    import pandas as pd
    import shapely

    df = pd.DataFrame([c.model_dump() for c in chunks], columns=METADATA_SCHEMA.names)
    df = df.astype({"chunk_id": "int64", "num_coords": "int64", "num_rows": "int64"})
    geoms = shapely.box(df["bbox_minx"], df["bbox_miny"], df["bbox_maxx"], df["bbox_maxy"])
    return gpd.GeoDataFrame(df, geometry=geoms, crs="EPSG:4326")


def get_chunks_metadata(url: str) -> gpd.GeoDataFrame:
    """One row per chunk of the table at ``url``: ``file_id, chunk_id, bbox_*, sum_area,
    sum_length, num_coords, num_rows`` and the bbox polygon as ``geometry`` (EPSG:4326)."""
    return _metadata_frame(read_chunk_metadata(url))


def open_table(url: str) -> Table:
    """Open the committed table at ``url`` (URL, path, or name under ``options.storage_root``).

    Raises :class:`TableNotFoundError`, :class:`IncompleteTableError` (no ``_sample``),
    :class:`TableFormatError` (another format version), :class:`CorruptFileError`,
    :class:`BucketNotFoundError`.
    """
    url = resolve_table_url(url)
    sample_url = _sample_url(url)
    try:
        with _parquet_file(sample_url) as pf:
            kv = pf.schema_arrow.metadata or {}
            _check_format(kv, sample_url)
            chunks = _decode(kv, sample_url)
            try:
                sample_arrow = pf.read()
            except (pa.ArrowException, OSError) as exc:
                raise _corrupt(sample_url, exc) from exc
    except FileNotFoundError:
        raise _absent_table_error(url) from None
    geo = _geo_from_schema(sample_arrow.schema)
    keep = {k: v for k, v in kv.items() if not k.startswith(b"fused:")}
    schema = sample_arrow.schema.with_metadata(keep)
    columns = [c for c in schema.names if c != COVERING_COLUMN or not _is_covering(geo)]
    sample = arrow_to_frame(sample_arrow.select(columns), geo)
    files = sorted({c.file_id for c in chunks})
    return Table(
        url=url,
        name=url.rstrip("/").rsplit("/", 1)[-1],
        table_schema=schema,
        column_names=columns,
        num_rows=sum(c.num_rows for c in chunks),
        num_files=len(files),
        num_chunks=len(chunks),
        sample=sample,
        chunk_metadata=chunks,
        files=files,
    )


def _is_covering(geo: Mapping[str, Any] | None) -> bool:
    if not geo:
        return False
    for col in geo.get("columns", {}).values():
        cov = (col.get("covering") or {}).get("bbox") or {}
        if cov.get("xmin", [None])[0] == COVERING_COLUMN:
            return True
    return False


def _preview(values: Sequence[Any], limit: int = 20) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _read_row_groups(
    url: str,
    chunk_ids: Sequence[int] | None,
    columns: Sequence[str] | None,
    *,
    keep_covering: bool = False,
) -> tuple[pa.Table, dict[str, Any] | None]:
    """Row groups ``chunk_ids`` (all when None) of the data file at ``url``, with only
    ``columns`` (all when None; the covering column dropped unless asked for)."""
    with _parquet_file(url) as pf:
        schema = pf.schema_arrow
        geo = _geo_from_schema(schema)
        names = schema.names
        if columns is not None:
            bad = [c for c in columns if c not in names]
            if bad:
                raise ColumnNotFoundError(
                    f"columns {bad} are not in {url}; its columns are {names}"
                )
            wanted = list(dict.fromkeys(columns))
        else:
            wanted = [
                c for c in names if keep_covering or c != COVERING_COLUMN or not _is_covering(geo)
            ]
        try:
            if chunk_ids is None:
                table = pf.read(columns=wanted)
            else:
                table = pf.read_row_groups(list(chunk_ids), columns=wanted)
        except (pa.ArrowException, OSError) as exc:
            raise _corrupt(url, exc) from exc
    return table, geo


def _file_url(url: str, file_id: str) -> str:
    return storage.join(url, f"{file_id}.parquet")


def get_chunk_from_table(
    url: str,
    file_id: str | int | None,
    chunk_id: int | None,
    columns: Sequence[str] | None = None,
    _metadata: Sequence[ChunkMetadata] | None = None,
) -> pd.DataFrame:
    """One chunk of the table at ``url``, reading only its row group.

    file_id / chunk_id: from :func:`get_chunks_metadata`; ``chunk_id=None`` reads the whole
    file, ``file_id=None`` the whole table. columns: read only these (default all but the
    ``bbox`` covering column). Returns a GeoDataFrame (a DataFrame when no geometry column is
    read). Raises :class:`ChunkNotFoundError` listing what exists.
    """
    url = resolve_table_url(url)
    chunks = list(_metadata) if _metadata is not None else read_chunk_metadata(url)
    if file_id is None:
        if chunk_id is not None:
            raise ChunkNotFoundError("chunk_id needs a file_id; pass both, or neither")
        return _read_chunks(url, chunks, columns)
    fid = str(file_id)
    in_file = [c for c in chunks if c.file_id == fid]
    if not in_file:
        files = sorted({c.file_id for c in chunks})
        raise ChunkNotFoundError(
            f"file_id {fid!r} is not in table {url}; its file_ids are {_preview(files)}"
        )
    if chunk_id is None:
        return _read_chunks(url, in_file, columns)
    ids = sorted(c.chunk_id for c in in_file)
    if not isinstance(chunk_id, (int, np.integer)) or int(chunk_id) not in ids:
        raise ChunkNotFoundError(
            f"chunk_id {chunk_id!r} is not in file {fid!r} of table {url}; its chunk_ids are "
            f"{_preview(ids)}"
        )
    table, geo = _read_row_groups(_file_url(url, fid), [int(chunk_id)], columns)
    return arrow_to_frame(table, geo)


def _read_chunks(
    url: str, chunks: Sequence[ChunkMetadata], columns: Sequence[str] | None
) -> pd.DataFrame:
    """The rows of ``chunks`` (grouped per file, one read per file), concatenated in
    (file_id, chunk_id) order."""
    import pandas as pd

    by_file: dict[str, list[int]] = {}
    for c in sorted(chunks, key=lambda c: (c.file_id, c.chunk_id)):
        by_file.setdefault(c.file_id, []).append(c.chunk_id)
    if not by_file:
        return _empty_like(url, columns)

    def read(item: tuple[str, list[int]]) -> pa.Table:
        fid, ids = item
        return _read_row_groups(_file_url(url, fid), ids, columns)

    with ThreadPoolExecutor(max_workers=min(8, len(by_file))) as pool:
        parts = list(pool.map(read, by_file.items()))
    tables = [t for t, _ in parts]
    geo = parts[0][1]
    if len(tables) > 1:
        schema = _unify(tables).with_metadata(tables[0].schema.metadata)
        tables = [_conform(t, schema) for t in tables]
    frame = arrow_to_frame(pa.concat_tables(tables), geo)
    return frame.reset_index(drop=True) if isinstance(frame, pd.DataFrame) else frame


def _empty_like(url: str, columns: Sequence[str] | None) -> pd.DataFrame:
    table = open_table(url)
    sample = table.sample
    frame = sample.iloc[0:0]
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    return frame


def read_bbox(
    url: str,
    bbox: Sequence[float] | Any,
    *,
    columns: Sequence[str] | None = None,
    clip: bool = True,
    n_rows: int | None = None,
    _metadata: Sequence[ChunkMetadata] | None = None,
) -> gpd.GeoDataFrame:
    """Rows of the table at ``url`` in ``bbox`` (minx, miny, maxx, maxy in EPSG:4326, or a
    shapely geometry whose bounds are used), opening only the row groups whose chunk bbox
    intersects it.

    columns: besides the geometry (default all); clip: keep only rows whose geometry intersects
    the box (default True; False returns whole chunks); n_rows: at most this many rows (default
    all). The chunks read are in ``result.attrs["fused:chunks_read"]`` as (file_id, chunk_id).
    """
    import geopandas as gpd
    import shapely

    if hasattr(bbox, "bounds") and not isinstance(bbox, (tuple, list)):
        bbox = tuple(bbox.bounds)
    bbox = tuple(float(v) for v in bbox)
    if len(bbox) != 4:
        raise ValueError(f"bbox must be (minx, miny, maxx, maxy), got {bbox!r}")
    url = resolve_table_url(url)
    chunks = list(_metadata) if _metadata is not None else read_chunk_metadata(url)
    mask = (
        chunks_intersecting(
            np.array([c.bbox_minx for c in chunks]),
            np.array([c.bbox_miny for c in chunks]),
            np.array([c.bbox_maxx for c in chunks]),
            np.array([c.bbox_maxy for c in chunks]),
            bbox,
        )
        if chunks
        else np.zeros(0, bool)
    )
    selected = [c for c, m in zip(chunks, mask) if m]
    read_columns = None
    if columns is not None:
        geo_cols = _geometry_columns(url, chunks)
        read_columns = list(dict.fromkeys([*columns, *geo_cols[:1]]))
    frame = _read_chunks(url, selected, read_columns)
    if not isinstance(frame, gpd.GeoDataFrame):  # pragma: no cover - geometry always read
        frame = gpd.GeoDataFrame(frame)
    if clip and len(frame):
        box = shapely.box(*bbox)
        if not _is_wgs84(frame.crs):
            box = gpd.GeoSeries([box], crs=4326).to_crs(frame.crs).iloc[0]
        frame = frame[shapely.intersects(np.asarray(frame.geometry.array, dtype=object), box)]
        frame = frame.reset_index(drop=True)
    if n_rows is not None:
        frame = frame.iloc[: int(n_rows)]
    frame.attrs["fused:chunks_read"] = [(c.file_id, c.chunk_id) for c in selected]
    return frame


def _geometry_columns(url: str, chunks: Sequence[ChunkMetadata]) -> list[str]:
    if not chunks:
        return []
    with _parquet_file(_file_url(url, chunks[0].file_id)) as pf:
        geo = _geo_from_schema(pf.schema_arrow) or {}
    primary = geo.get("primary_column")
    cols = list(geo.get("columns", {}))
    return [primary, *[c for c in cols if c != primary]] if primary else cols


# --- writing -----------------------------------------------------------------------------------


class TableWriter:
    """Writes one table: data files into a staging area, then a commit that moves them into
    place and writes ``_sample`` last.

    url: the table (URL, path or name, see :func:`resolve_table_url`). overwrite: replace an
    existing table, at commit time only (default False: an existing table is an error, raised
    here before any work). run_id: names this run's staging folder ``_staging/<run_id>``
    (default ``"default"``; give a job id so reruns of one job share it). check: run
    :meth:`prepare` now (default True; workers rebuilt with :meth:`from_dict` skip it).
    sample_rows: rows kept in ``_sample`` (default 1000).

    Usage, on one machine or across Celery tasks::

        writer = TableWriter(url, overwrite=False)          # checks, before any work
        meta = writer.write_file("0", [chunk0, chunk1])     # any process, any order, idempotent
        table = writer.commit(meta)                          # once, after every file
    """

    def __init__(
        self,
        url: str,
        *,
        overwrite: bool = False,
        run_id: str = "default",
        check: bool = True,
        sample_rows: int = SAMPLE_ROWS,
    ) -> None:
        self.url = resolve_table_url(url)
        self.overwrite = bool(overwrite)
        self.run_id = validate_name(run_id, "run_id")
        self.sample_rows = int(sample_rows)
        if check:
            self.prepare()

    # locations
    @property
    def staging_url(self) -> str:
        """This run's staging folder."""
        return storage.join(self.url, STAGING_DIR, self.run_id)

    def staged_file_url(self, file_id: str | int) -> str:
        """Where :meth:`write_file` puts ``file_id`` before commit."""
        return storage.join(self.staging_url, f"{validate_name(file_id, 'file_id')}.parquet")

    def _sidecar_url(self, file_id: str) -> str:
        return storage.join(self.staging_url, "_samples", f"{file_id}.parquet")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, to rebuild the writer in a worker with :meth:`from_dict`."""
        return {
            "url": self.url,
            "overwrite": self.overwrite,
            "run_id": self.run_id,
            "sample_rows": self.sample_rows,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableWriter:
        """The writer described by :meth:`to_dict` (without re-running :meth:`prepare`)."""
        return cls(**dict(data), check=False)

    # phases
    def prepare(self) -> None:
        """Check the target before any work, and mark the folder as a table being written.

        Raises :class:`BucketNotFoundError`, or :class:`TableExistsError` when
        ``overwrite=False`` and a table (or a non-empty folder that is not an unfinished
        fused table) is there. An unfinished table from a crashed run is resumed.
        """
        storage.check_bucket(self.url)
        if storage.is_file(self.url):
            raise TableExistsError(f"{self.url} is a file; a table is a folder. Choose another URL")
        if not self.overwrite:
            if storage.is_file(_sample_url(self.url)):
                raise TableExistsError(
                    f"table {self.url} already exists; pass overwrite=True to replace it (the "
                    "old table stays readable until the new one commits) or choose another URL"
                )
            entries = storage.list_files(self.url, recursive=True)
            ours = any(e.startswith(STAGING_DIR + "/") for e in entries)
            if entries and not ours:
                raise TableExistsError(
                    f"{self.url} is not empty ({len(entries)} file(s), e.g. {entries[:3]}) and "
                    "is not a fused table; choose an empty location or pass overwrite=True"
                )
        marker = storage.join(self.url, STAGING_DIR, WRITING_MARKER)
        storage.write_bytes(marker, json.dumps({"run_id": self.run_id}).encode())

    def write_file(
        self, file_id: str | int, chunks: Iterable[gpd.GeoDataFrame] | gpd.GeoDataFrame
    ) -> list[ChunkMetadata]:
        """Write one data file (one row group per non-empty chunk, in order) to staging.

        Idempotent: the same input gives the same object under the same name. Empty chunks are
        skipped, so chunk_ids are 0..n-1 over the non-empty ones. All chunks of a file must
        share a CRS. Returns the chunks' metadata for :meth:`commit`.
        """
        import geopandas as gpd

        fid = validate_name(file_id, "file_id")
        if isinstance(chunks, gpd.GeoDataFrame):
            chunks = [chunks]
        converted = [frame_to_arrow(c) for c in chunks]
        if not converted:
            raise ValueError(f"write_file({fid!r}) got no chunks; pass at least one GeoDataFrame")
        crs = {json.dumps(f["crs"], sort_keys=True) for _, f in converted}
        if len(crs) > 1:
            raise ValueError(
                f"the chunks of file {fid!r} have different CRSs; reproject them to one "
                "(e.g. to_crs(4326)) before writing"
            )
        schema = _unify([t for t, _ in converted])
        primary = converted[0][1]["primary"]
        nonempty = [(t, f) for t, f in converted if t.num_rows]
        metas = [compute_chunk_metadata(fid, i, f["wgs84"]) for i, (_, f) in enumerate(nonempty)]
        facts = [f for _, f in (nonempty or converted)]
        geo = geo_metadata(_merge_geo_columns(facts), primary)
        schema = schema.with_metadata({b"geo": json.dumps(geo).encode()})
        tables = [_conform(t, schema) for t, _ in nonempty]
        staged = self.staged_file_url(fid)
        if tables:
            with (
                storage.atomic_output(staged) as out,
                pq.ParquetWriter(out, schema, **writer_options(schema)) as writer,
            ):
                for t in tables:
                    writer.write_table(t, row_group_size=max(1, t.num_rows))
        else:
            storage.delete_file(staged)
        sample = _sample_rows(tables, SAMPLE_ROWS_PER_FILE) if tables else schema.empty_table()
        storage.write_bytes(self._sidecar_url(fid), _parquet_bytes(sample), durable=False)
        return metas

    def write_arrow_file(
        self,
        file_id: str | int,
        table: pa.Table,
        chunk_offsets: Sequence[int],
        facts: RowFacts,
        *,
        geometry: str = "geometry",
    ) -> list[ChunkMetadata]:
        """:meth:`write_file` for rows already encoded: ``table`` holds the attributes and the
        ISO WKB ``geometry`` column in EPSG:4326, rows in chunk order; chunk k is rows
        ``chunk_offsets[k]:chunk_offsets[k + 1]`` (empty chunks skipped); ``facts`` are the
        rows' :class:`RowFacts`. No geometry is decoded. Idempotent, like :meth:`write_file`.
        """
        fid = validate_name(file_id, "file_id")
        if geometry not in table.column_names:
            raise ValueError(f"write_arrow_file({fid!r}): no geometry column {geometry!r}")
        if table.num_rows != len(facts.type_id):
            raise ValueError(f"write_arrow_file({fid!r}): facts do not match the rows")
        b = facts.bounds
        null = np.isnan(b[:, 0])  # null and empty geometries: NaN bounds
        covering = pa.StructArray.from_arrays(
            [pa.array(b[:, i], type=pa.float64()) for i in range(4)],
            names=["xmin", "ymin", "xmax", "ymax"],
            mask=pa.array(null, type=pa.bool_()) if null.any() else None,
        )
        if COVERING_COLUMN in table.column_names:
            table = table.drop_columns([COVERING_COLUMN])
        table = table.append_column(COVERING_COLUMN, covering)
        bbox = facts.bbox()
        columns = {
            geometry: {
                "geometry_types": facts.geometry_types(),
                "crs": _wgs84_json(),
                "bbox": None if math.isnan(bbox[0]) else list(bbox),
            }
        }
        geo = geo_metadata(columns, geometry)
        table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
        bounds = [(int(a), int(z)) for a, z in zip(chunk_offsets[:-1], chunk_offsets[1:]) if z > a]
        metas = facts.chunks_metadata(
            fid, [a for a, _ in bounds] + [bounds[-1][1]] if bounds else []
        )
        staged = self.staged_file_url(fid)
        if bounds:
            with (
                storage.atomic_output(staged) as out,
                pq.ParquetWriter(out, table.schema, **writer_options(table.schema)) as writer,
            ):
                for a, z in bounds:
                    writer.write_table(table.slice(a, z - a), row_group_size=z - a)
        else:
            storage.delete_file(staged)
        sample = table.take(evenly_spaced(table.num_rows, SAMPLE_ROWS_PER_FILE))
        storage.write_bytes(self._sidecar_url(fid), _parquet_bytes(sample), durable=False)
        return metas

    def commit(self, chunks: Iterable[ChunkMetadata | Mapping[str, Any]]) -> Table:
        """Make the table whole: move the staged files listed in ``chunks`` into place, delete
        data files not listed, write ``_sample`` last, drop the staging area.

        chunks: every chunk :meth:`write_file` returned, for all files (dicts accepted).
        Idempotent: a commit that ran before (fully or partly) completes or does nothing.
        Returns the opened :class:`Table`.
        """
        metas = sorted(
            (c if isinstance(c, ChunkMetadata) else ChunkMetadata(**dict(c)) for c in chunks),
            key=lambda c: (c.file_id, c.chunk_id),
        )
        file_ids = _check_layout(metas)
        sample_url = _sample_url(self.url)
        old_exists = storage.is_file(sample_url)
        if old_exists:
            try:
                committed = read_chunk_metadata(self.url)
            except (TableFormatError, CorruptFileError):
                committed = None
            if committed is not None and _metadata_key(committed) == _metadata_key(metas):
                staged_now = storage.list_files(self.staging_url)
                if not any(f"{f}.parquet" in staged_now for f in file_ids):
                    storage.delete_prefix(storage.join(self.url, STAGING_DIR))
                    return open_table(self.url)
        staged = set(storage.list_files(self.staging_url, recursive=True))
        final = set(storage.list_files(self.url))
        missing = [
            f
            for f in file_ids
            if f"{f}.parquet" not in staged and (old_exists or f"{f}.parquet" not in final)
        ]
        if missing:
            raise IncompleteTableError(
                f"cannot commit {self.url}: data files of file_ids {_preview(missing)} were "
                f"never written to {self.staging_url}; write them (write_file) or rerun the job"
            )
        sample = self._build_sample(file_ids, staged)
        # From here the old table (if any) stops being readable until _sample is written.
        storage.delete_file(sample_url)
        moves = [f for f in file_ids if f"{f}.parquet" in staged]
        _parallel(lambda f: storage.move(self.staged_file_url(f), _file_url(self.url, f)), moves)
        keep = {f"{f}.parquet" for f in file_ids}
        stale = [n for n in final if n.endswith(".parquet") and n not in keep]
        _parallel(lambda n: storage.delete_file(storage.join(self.url, n)), stale)
        kv = {
            KEY_FORMAT_VERSION: FORMAT_VERSION.encode(),
            KEY_METADATA: encode_chunk_metadata(metas),
        }
        sample = sample.replace_schema_metadata({**(sample.schema.metadata or {}), **kv})
        storage.write_bytes(sample_url, _parquet_bytes(sample))
        storage.delete_prefix(storage.join(self.url, STAGING_DIR))
        return open_table(self.url)

    def abort(self) -> None:
        """Delete this run's staging folder (the committed table, if any, is untouched)."""
        storage.delete_prefix(self.staging_url)

    def _build_sample(self, file_ids: Sequence[str], staged: set[str]) -> pa.Table:
        """``_sample``'s rows: the per-file samples pooled in file order, thinned evenly to
        ``sample_rows``; the schema comes from them (geometry only when there is none)."""
        names = [f for f in file_ids if f"_samples/{f}.parquet" in staged]
        if not names:  # empty table: any sidecar gives the schema
            names = sorted(
                n[len("_samples/") : -len(".parquet")] for n in staged if n.startswith("_samples/")
            )[:1]
        tables = _parallel(
            lambda f: pq.read_table(io.BytesIO(storage.read_bytes(self._sidecar_url(f)))), names
        )
        if not tables:
            return _geometry_only_table()
        geo = _geo_from_schema(tables[0].schema)
        crss = {_primary_crs_key(t.schema): f for f, t in zip(names, tables)}
        if len(crss) > 1 and not _same_crs(list(crss)):
            seen = ", ".join(f"file {f}" for f in list(crss.values())[:3])
            raise ValueError(
                f"the files of table {self.url} have different CRSs ({seen}, ...); write every "
                "file in one CRS (e.g. to_crs(4326)) and rerun"
            )
        if len(tables) > 1:
            schema = _unify(tables)
            tables = [_conform(t, schema) for t in tables]
        pooled = pa.concat_tables(tables)
        pooled = pooled.take(evenly_spaced(pooled.num_rows, self.sample_rows))
        if geo:
            geo = _sample_geo(pooled, geo)
        return pooled.replace_schema_metadata({b"geo": json.dumps(geo).encode()} if geo else None)


def _same_crs(keys: Sequence[str]) -> bool:
    """Whether PROJJSON texts (from :func:`_primary_crs_key`) name one CRS. Texts can differ for
    one CRS: PROJ versions write EPSG:4326's datum as ``datum`` or ``datum_ensemble``."""
    crss = [_crs_from_json(json.loads(k)) for k in keys]
    return all(c == crss[0] or (c is not None and c.equals(crss[0], ignore_axis_order=True))
               for c in crss)  # fmt: skip


def _primary_crs_key(schema: pa.Schema) -> str:
    geo = _geo_from_schema(schema) or {}
    col = geo.get("columns", {}).get(geo.get("primary_column"), {})
    return json.dumps(col.get("crs"), sort_keys=True)


def _check_layout(metas: Sequence[ChunkMetadata]) -> list[str]:
    """The file ids of ``metas``; each file's chunk_ids must be 0..n-1 without repeats."""
    by_file: dict[str, list[int]] = {}
    for c in metas:
        validate_name(c.file_id, "file_id")
        by_file.setdefault(c.file_id, []).append(c.chunk_id)
    for fid, ids in by_file.items():
        if sorted(ids) != list(range(len(ids))):
            raise ValueError(
                f"chunk metadata of file {fid!r} has chunk_ids {ids}; expected 0..{len(ids) - 1} "
                "once each (pass each file's write_file result exactly once)"
            )
    return sorted(by_file)


def _merge_geo_columns(facts: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for f in facts:
        for name, info in f["columns"].items():
            m = merged.setdefault(name, {"geometry_types": set(), "bbox": None, "crs": f["crs"]})
            m["geometry_types"].update(info["geometry_types"])
            b = info["bbox"]
            if b is not None:
                m["bbox"] = (
                    list(b)
                    if m["bbox"] is None
                    else [
                        min(m["bbox"][0], b[0]),
                        min(m["bbox"][1], b[1]),
                        max(m["bbox"][2], b[2]),
                        max(m["bbox"][3], b[3]),
                    ]
                )
    for m in merged.values():
        m["geometry_types"] = sorted(m["geometry_types"])
    return merged


def _sample_geo(table: pa.Table, geo: Mapping[str, Any]) -> dict[str, Any]:
    """``geo`` recomputed for the rows of ``table`` (types and bbox of the sample)."""
    import shapely

    columns: dict[str, dict[str, Any]] = {}
    for name, info in geo.get("columns", {}).items():
        if name not in table.column_names:
            continue
        geoms = shapely.from_wkb(table.column(name).to_numpy(zero_copy_only=False))
        bounds = shapely.bounds(geoms) if len(geoms) else np.empty((0, 4))
        ok = ~np.isnan(bounds).any(axis=1)
        columns[name] = {
            "geometry_types": geometry_types(geoms),
            "crs": info.get("crs"),
            "bbox": [
                bounds[ok, 0].min(),
                bounds[ok, 1].min(),
                bounds[ok, 2].max(),
                bounds[ok, 3].max(),
            ]
            if ok.any()
            else None,
        }
    return geo_metadata(
        columns,
        geo.get("primary_column", "geometry"),
        covering=COVERING_COLUMN in table.column_names,
    )


def _geometry_only_table() -> pa.Table:
    covering = pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])
    schema = pa.schema([("geometry", pa.binary()), (COVERING_COLUMN, covering)])
    geo = geo_metadata(
        {"geometry": {"geometry_types": [], "crs": _crs_json(None), "bbox": None}}, "geometry"
    )
    return schema.with_metadata({b"geo": json.dumps(geo).encode()}).empty_table()


def _sample_rows(tables: Sequence[pa.Table], k: int) -> pa.Table:
    pooled = pa.concat_tables(tables)
    return pooled.take(evenly_spaced(pooled.num_rows, k))


def writer_options(schema: pa.Schema) -> dict[str, Any]:
    """ParquetWriter options of data files: snappy (pyarrow's default, twice as fast as zstd);
    dictionary encoding for string columns only (WKB and floats gain nothing from it and it
    doubles the write time); statistics for every column but the WKB geometries (the ``bbox``
    covering's min/max drive row-group pruning)."""
    geo = _geo_from_schema(schema) or {}
    wkb = set(geo.get("columns", {}))
    strings = [
        f.name
        for f in schema
        if pa.types.is_string(f.type)
        or pa.types.is_large_string(f.type)
        or pa.types.is_dictionary(f.type)
    ]
    stats = [path for f in schema if f.name not in wkb for path in _leaf_paths(f)]
    return {"compression": COMPRESSION, "use_dictionary": strings, "write_statistics": stats}


def _leaf_paths(field: pa.Field, prefix: str = "") -> list[str]:
    name = f"{prefix}{field.name}"
    if pa.types.is_struct(field.type):
        return [p for i in range(field.type.num_fields)
                for p in _leaf_paths(field.type.field(i), f"{name}.")]  # fmt: skip
    return [name]


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=COMPRESSION)
    return sink.getvalue()


def _parallel(fn: Any, items: Sequence[Any]) -> list[Any]:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(fn, items))


def _as_files(data: Any) -> dict[str, list[gpd.GeoDataFrame]]:
    import geopandas as gpd

    if isinstance(data, gpd.GeoDataFrame):
        return {"0": [data]}
    if isinstance(data, Mapping):
        return {
            str(k): ([v] if isinstance(v, gpd.GeoDataFrame) else list(v)) for k, v in data.items()
        }
    return {
        str(i): ([v] if isinstance(v, gpd.GeoDataFrame) else list(v)) for i, v in enumerate(data)
    }


def write_table(
    url: str,
    data: gpd.GeoDataFrame
    | Mapping[str | int, gpd.GeoDataFrame | Sequence[gpd.GeoDataFrame]]
    | Sequence[gpd.GeoDataFrame | Sequence[gpd.GeoDataFrame]],
    *,
    overwrite: bool = False,
    run_id: str = "default",
) -> Table:
    """Write a whole table from this process and commit it.

    data: one GeoDataFrame (file ``"0"``, one chunk); a mapping ``file_id -> chunks`` (a
    GeoDataFrame or a list, one row group each); or a list of files (ids ``"0"``, ``"1"``, ...).
    overwrite / run_id: as for :class:`TableWriter`. Returns the opened :class:`Table`.
    """
    writer = TableWriter(url, overwrite=overwrite, run_id=run_id)
    files = _as_files(data)
    metas: list[ChunkMetadata] = []
    for fid, chunks in files.items():
        metas.extend(writer.write_file(fid, chunks))
    return writer.commit(metas)
