"""Reading committed tables: :func:`open_table` and :class:`Table`, :func:`read_chunk_metadata`
and :func:`get_chunks_metadata` (``_sample``'s footer only), :func:`get_chunk_from_table` (one
row group, one file or the whole table) and :func:`read_bbox` (only the row groups whose chunk
bbox intersects the box).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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
    StorageError,
    TableNotFoundError,
)
from fused_celery.table.facts import ChunkMetadata, chunks_intersecting
from fused_celery.table.format import (
    COVERING_COLUMN,
    METADATA_SCHEMA,
    SAMPLE_FILE,
    _check_format,
    _conform,
    _decode,
    _file_url,
    _geo_from_schema,
    _is_covering,
    _is_wgs84,
    _sample_url,
    _unify,
    arrow_to_frame,
    ingest_report,
    resolve_table_url,
    validate_name,
)

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd


class Table(BaseModel):
    """An opened, committed table.

    url: normalised table URL; name: its last path component; table_schema: the Arrow schema of
    its rows (``_sample``'s, with the ``bbox`` covering column, without fused keys);
    column_names: the columns readers return (the covering column left out); num_rows /
    num_files / num_chunks: totals over non-empty chunks; sample: up to 1000 rows; chunk_metadata:
    one :class:`ChunkMetadata` per chunk; files: the file ids, sorted; ingest_report: for a
    table an ingest made, what it did to the rows (``input_rows``, ``output_rows``, ``dropped``
    and ``repaired`` by reason, ...; None otherwise).
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
    ingest_report: dict[str, Any] | None = None

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

    def show(self, path: str | None = None, **kwargs: Any) -> Any:
        """Write an offline HTML map of this table (chunk bboxes coloured by file, a sample of
        rows, a legend with row counts) and return it: a ``MapFile`` (``.path``; shown inline in
        Jupyter). path: default a file under the storage root. kwargs: see
        :func:`fused_celery.maps.table_map.show_table`."""
        from fused_celery.maps.table_map import show_table

        return show_table(self, path, **kwargs)

    def __repr__(self) -> str:
        return (
            f"Table(url={self.url!r}, num_files={self.num_files}, num_chunks={self.num_chunks}, "
            f"num_rows={self.num_rows}, columns={self.column_names!r})"
        )

    __str__ = __repr__


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
        ingest_report=ingest_report(kv),
    )


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
