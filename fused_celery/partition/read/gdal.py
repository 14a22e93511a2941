"""Inputs GDAL reads — every vector format of the GDAL inside pyogrio: GeoJSON, GeoPackage,
Shapefile (also zipped), FlatGeobuf, GML, KML/KMZ, GPX, OpenStreetMap (``.osm.pbf``, ``.osm``),
MapInfo, File Geodatabase folders (``.gdb``), ``/vsizip/``, ``/vsicurl/`` and other ``/vsi`` paths,
and any file of another suffix that GDAL opens (:func:`sniff`) — in slices of features.

A slice is features ``[start, stop)`` of a layer (default the first; as many as ``target_bytes``
of the file's average bytes per feature, at most ``target_rows``), read with pyogrio's
``skip_features`` / ``max_features``; the feature count comes from
``pyogrio.read_info(force_feature_count=True)``. A FlatGeobuf with a spatial index lists its
features in index order. A file on S3 is read from its local copy (:mod:`.remote`), made by the
client to count its features and by each worker that reads one of its slices. GeoJSON, GML and
KML are parsed whole by GDAL when opened, so their slices bound the frame's size, not the
parsing.

A layer GDAL reads only sequentially (no random read: OpenStreetMap, GPX, GML, ...) cannot be
cut by feature ranges (each slice would read the file from its start): it is listed as one
*sequential* slice, which :func:`stream_slices` reads in one streaming pass
(``pyogrio.open_arrow`` batches), writing GeoParquet slices of at most ``target_rows`` rows and
about ``target_bytes`` bytes; memory holds one slice at a time.

GDAL configuration options (``gdal_config.config_options``) are set only while a read runs
(:func:`gdal_config_options`) and restored after.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fused_celery import storage
from fused_celery.errors import IngestInputError
from fused_celery.partition.prepare import frame_from_lonlat
from fused_celery.partition.read.base import InputSlice, check_columns, open_options_kwargs
from fused_celery.partition.read.remote import local_copy, remote_file

if TYPE_CHECKING:
    import geopandas as gpd

GDAL_SUFFIXES = (
    ".geojson", ".json", ".geojsonl", ".geojsons", ".gpkg", ".shp", ".fgb", ".zip", ".gml",
    ".kml", ".kmz", ".gpx", ".osm.pbf", ".pbf", ".osm", ".tab", ".mif", ".gdb", ".gdb.zip",
    ".sqlite", ".gmt",
)  # fmt: skip
"""Suffixes read through GDAL without sniffing (other files are sniffed: :func:`sniff`)."""

VSI_PREFIX = "/vsi"
"""GDAL virtual file system paths (``/vsizip/``, ``/vsicurl/``, ``/vsis3/``, ...), given to
GDAL as they are."""

_CONFIG_LOCK = threading.Lock()


def is_vsi(url: str) -> bool:
    """Whether ``url`` is a GDAL virtual file system path (``/vsizip/...``, ``/vsicurl/...``)."""
    return url.startswith(VSI_PREFIX)


@contextlib.contextmanager
def gdal_config_options(config_options: Mapping[str, str] | None) -> Iterator[None]:
    """Set the GDAL configuration options ``config_options`` (default None: none) while the
    block runs, then restore each option's previous value. GDAL's options are per process:
    reads with options are serialised by a lock so that concurrent threads do not mix them."""
    if not config_options:
        yield
        return
    import pyogrio

    with _CONFIG_LOCK:
        before = {k: pyogrio.get_gdal_config_option(k) for k in config_options}
        pyogrio.set_gdal_config_options({k: str(v) for k, v in config_options.items()})
        try:
            yield
        finally:
            pyogrio.set_gdal_config_options(before)


def sniff(
    url: str,
    *,
    gdal_open_options: Mapping[str, str] | None = None,
    config_options: Mapping[str, str] | None = None,
) -> str | None:
    """Whether GDAL opens the file at ``url`` (of a suffix no reader knows) as vector data:
    None when it does, else what GDAL said."""
    import pyogrio

    path = _local_path(url)
    try:
        with gdal_config_options(config_options):
            layers = pyogrio.list_layers(path, **open_options_kwargs(gdal_open_options))
    except Exception as exc:  # any GDAL failure is the answer, with its text
        return f"{type(exc).__name__}: {exc}"
    return None if len(layers) else "it has no vector layer"


def _local_path(url: str) -> str:
    """The path GDAL opens for ``url``: a ``/vsi`` path as is, a file on S3 its local copy."""
    if not is_vsi(url) and storage.parse(url).scheme == "s3":
        size, mtime_ns, sidecars = remote_file(url)
        return local_copy(url, size, mtime_ns, sidecars)
    return url


def _gdal_kwargs(gdal_open_options: Mapping[str, str] | None, layer: str | None) -> dict[str, Any]:
    kwargs = open_options_kwargs(gdal_open_options)
    if layer is not None:
        kwargs["layer"] = layer
    return kwargs


def _gdal_info(
    url: str,
    path: str,
    gdal_open_options: Mapping[str, str] | None,
    layer: str | None,
    *,
    count: bool = True,
) -> dict[str, Any]:
    """``pyogrio.read_info`` of the layer (features counted unless ``count`` is False); a
    missing layer names the ones there are."""
    import pyogrio
    from pyogrio.errors import DataLayerError

    try:
        return pyogrio.read_info(
            path, force_feature_count=count, **_gdal_kwargs(gdal_open_options, layer)
        )
    except DataLayerError as exc:
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


def gdal_slices(
    url: str,
    *,
    target_rows: int,
    target_bytes: int,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
    gdal_open_options: Mapping[str, str] | None = None,
    layer: str | None = None,
    config_options: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The slices of the GDAL-readable file at ``url`` as :class:`InputSlice` fields without
    ``slice_id`` (see the module docstring; a layer read only sequentially is one slice with
    ``sequential`` set). target_rows / target_bytes: the slice size. lonlat_cols / load_columns
    (defaults None) are checked against the layer's fields; without ``lonlat_cols`` the layer
    needs a geometry. gdal_open_options: GDAL open options (default None). layer: the layer
    (default None: the first). config_options: GDAL configuration options (default None)."""
    base: dict[str, Any] = {"url": url, "format": "gdal", "layer": layer}
    if not is_vsi(url) and storage.parse(url).scheme == "s3":
        size, mtime_ns, sidecars = remote_file(url)
        base |= {"size": size, "mtime_ns": mtime_ns, "sidecars": sidecars}
        path = local_copy(url, size, mtime_ns, sidecars)
    else:
        path = url
    with gdal_config_options(config_options):
        info = _gdal_info(url, path, gdal_open_options, layer, count=False)
        sequential = not _random_access(info)
        if not sequential:
            info = _gdal_info(url, path, gdal_open_options, layer)
    columns = [str(c) for c in info["fields"]]
    check_columns(url, columns, lonlat_cols=lonlat_cols, load_columns=load_columns)
    if lonlat_cols is None and info.get("geometry_type") is None:
        raise IngestInputError(
            f"ingest input {url} has no geometry (layer {info.get('layer_name')!r}); pass "
            f"lonlat_cols=(lon_column, lat_column) to make points; its columns are {columns}"
        )
    if sequential:
        return [{**base, "start": 0, "stop": 0, "num_rows": None, "sequential": True}]
    n = int(info["features"])
    if n < 0:
        raise IngestInputError(f"GDAL cannot count the features of ingest input {url}")
    target = target_rows
    file_bytes = _file_bytes(path)
    if n and file_bytes:
        target = min(target, max(1, target_bytes * n // file_bytes))
    return [
        {**base, "start": a, "stop": min(n, a + target), "num_rows": min(n, a + target) - a}
        for a in range(0, n, target)
    ]


def _random_access(info: Mapping[str, Any]) -> bool:
    """Whether a layer (its ``read_info``) can be read from a feature on without reading the
    ones before: random reads or a fast seek by index."""
    caps = info.get("capabilities") or {}
    return bool(caps.get("random_read") or caps.get("fast_set_next_by_index"))


def _file_bytes(path: str) -> int:
    """Size of a local GDAL input (0 when unknown, e.g. a ``/vsi`` path)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_kwargs(
    sl: InputSlice,
    lonlat_cols: Sequence[str] | None,
    load_columns: Sequence[str] | None,
    gdal_open_options: Mapping[str, str] | None,
) -> tuple[str, dict[str, Any], list[str]]:
    """The path to open for ``sl``, pyogrio's keyword arguments and the columns asked for."""
    path = sl.url
    if sl.size is not None:
        path = local_copy(sl.url, sl.size, sl.mtime_ns, sl.sidecars)
    kwargs = _gdal_kwargs(gdal_open_options, sl.layer)
    kwargs["layer"] = sl.layer
    wanted: list[str] = []
    if load_columns is not None or lonlat_cols is not None:
        wanted = [*(load_columns or ()), *(lonlat_cols or ())]
    if load_columns is not None:
        kwargs["columns"] = list(dict.fromkeys(wanted))
    kwargs["read_geometry"] = lonlat_cols is None
    return path, kwargs, wanted


def _check_read(
    sl: InputSlice,
    path: str,
    columns: Sequence[str],
    wanted: Sequence[str],
    *,
    lonlat_cols: Sequence[str] | None,
    load_columns: Sequence[str] | None,
    gdal_open_options: Mapping[str, str] | None,
) -> None:
    """IngestInputError naming the layer's fields when columns asked for were not read."""
    if [c for c in wanted if c not in columns]:
        info = _gdal_info(sl.url, path, gdal_open_options, sl.layer, count=False)
        fields = [str(c) for c in info["fields"]]
        check_columns(sl.url, fields, lonlat_cols=lonlat_cols, load_columns=load_columns)


def read_gdal_slice(
    sl: InputSlice,
    *,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
    gdal_open_options: Mapping[str, str] | None = None,
    config_options: Mapping[str, str] | None = None,
) -> gpd.GeoDataFrame:
    """The features of a GDAL slice (its layer: ``sl.layer``; a sequential slice: the whole
    layer) as a GeoDataFrame: points from ``lonlat_cols`` (default None: the layer's geometry),
    only ``load_columns`` (default None: all) besides, opened with ``gdal_open_options`` and
    ``config_options`` (defaults None). Library errors are left to the caller's
    :func:`~.base.reading`."""
    import pyogrio

    path, kwargs, wanted = _read_kwargs(sl, lonlat_cols, load_columns, gdal_open_options)
    if not sl.sequential:
        kwargs |= {"skip_features": sl.start, "max_features": sl.stop - sl.start}
    with gdal_config_options(config_options):
        frame = pyogrio.read_dataframe(path, use_arrow=True, **kwargs)
        _check_read(
            sl, path, list(frame.columns), wanted, lonlat_cols=lonlat_cols,
            load_columns=load_columns, gdal_open_options=gdal_open_options,
        )  # fmt: skip
    if lonlat_cols is not None:
        return frame_from_lonlat(frame, *lonlat_cols)
    return frame.reset_index(drop=True)


STREAM_BATCH_ROWS = 65_536
"""Features per ``open_arrow`` batch in :func:`stream_slices` (fewer when ``target_rows`` is)."""


def stream_slices(
    sl: InputSlice,
    folder: str,
    *,
    target_rows: int,
    target_bytes: int,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
    gdal_open_options: Mapping[str, str] | None = None,
    config_options: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, int]]:
    """Read the sequential slice ``sl`` in one streaming pass and write it as GeoParquet files
    ``<folder>/<slice_id>-<k>.parquet`` (plain Parquet with ``lonlat_cols``) of at most
    ``target_rows`` rows and about ``target_bytes`` bytes; yields each file's URL and rows as it
    is written. Memory holds one file's rows (plus one batch). Options as in
    :func:`read_gdal_slice`; library errors are left to the caller's :func:`~.base.reading`."""
    import pyarrow as pa
    import pyogrio

    path, kwargs, wanted = _read_kwargs(sl, lonlat_cols, load_columns, gdal_open_options)
    batch = max(1, min(STREAM_BATCH_ROWS, target_rows))
    held: list[pa.RecordBatch] = []
    rows = nbytes = k = 0
    with (
        gdal_config_options(config_options),
        pyogrio.open_arrow(path, batch_size=batch, use_pyarrow=True, **kwargs) as (meta, reader),
    ):
        columns = [str(c) for c in meta["fields"]]
        _check_read(
            sl, path, columns, wanted, lonlat_cols=lonlat_cols, load_columns=load_columns,
            gdal_open_options=gdal_open_options,
        )  # fmt: skip
        for part in reader:
            while part.num_rows:
                take = min(part.num_rows, target_rows - rows)
                held.append(part.slice(0, take))
                rows, nbytes = rows + take, nbytes + part.slice(0, take).nbytes
                part = part.slice(take)
                if rows >= target_rows or nbytes >= target_bytes:
                    yield _write_stream_file(folder, sl.slice_id, k, held, meta, lonlat_cols)
                    held, rows, nbytes, k = [], 0, 0, k + 1
        if held or k == 0:
            yield _write_stream_file(folder, sl.slice_id, k, held, meta, lonlat_cols, reader)


def _write_stream_file(
    folder: str,
    slice_id: int,
    k: int,
    batches: list[Any],
    meta: Mapping[str, Any],
    lonlat_cols: Sequence[str] | None,
    reader: Any = None,
) -> tuple[str, int]:
    """Write ``batches`` (Arrow, from ``open_arrow``) as file ``k`` of a streamed slice: a
    GeoParquet file in the layer's CRS, the geometry named ``geometry`` (as
    ``read_dataframe`` names it), or plain Parquet with ``lonlat_cols``. reader: the batch
    reader, for its schema when there are no batches (an empty layer)."""
    import io

    import geopandas as gpd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = (
        pa.Table.from_batches(batches)
        if batches
        else pa.Table.from_batches([], schema=reader.schema)
    )
    url = storage.join(folder, f"{slice_id}-{k}.parquet")
    buf = io.BytesIO()
    geom = str(meta.get("geometry_name") or "wkb_geometry")
    if lonlat_cols is not None or geom not in table.column_names:
        pq.write_table(table, buf)
    else:
        frame = gpd.GeoDataFrame.from_arrow(table, geometry=geom)
        if geom != "geometry" and "geometry" not in frame.columns:
            frame = frame.rename_geometry("geometry")
        crs = meta.get("crs")
        frame = frame.set_crs(crs, allow_override=True) if crs else frame
        frame.to_parquet(buf, index=False)
    storage.write_bytes(url, buf.getvalue(), durable=False)
    return url, table.num_rows
