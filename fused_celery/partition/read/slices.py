"""The front of the readers: an ingest's input files, cut into :class:`~.base.InputSlice` s and
read back, dispatched by file suffix to the family modules (:mod:`.parquet`, :mod:`.csv`,
:mod:`.gdal`), which take keyword options (:func:`read_options` gives them from a step config).
A file of another suffix is handed to GDAL when GDAL opens it (:func:`~.gdal.sniff`), and
refused with what GDAL said otherwise.

Inputs: a path or URL (local path, ``file://``, ``s3://``, a GDAL ``/vsi...`` path such as
``/vsizip/a.zip/b.shp`` or ``/vsicurl/https://...``), a list of them, or a folder (every file
under it, recursively, sorted, whose name ends with ``file_suffix`` when set; names starting with
``.`` or ``_`` are skipped, and so are the sidecars of a listed Shapefile; a local ``.gdb``
folder is one input, a File Geodatabase). Every slice holds at most ``target_rows`` rows and
about ``target_bytes`` uncompressed bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fused_celery import storage
from fused_celery.errors import (
    IngestInputError,
    InputNotFoundError,
    UnsupportedInputError,
    UnsupportedURLError,
)
from fused_celery.options import options
from fused_celery.partition.prepare import ensure_geodataframe
from fused_celery.partition.read.base import Format, InputSlice, reading
from fused_celery.partition.read.csv import CSV_SUFFIXES, csv_slices, read_csv_slice
from fused_celery.partition.read.gdal import (
    GDAL_SUFFIXES,
    gdal_slices,
    is_vsi,
    read_gdal_slice,
    sniff,
    stream_slices,
)
from fused_celery.partition.read.parquet import (
    PARQUET_SUFFIXES,
    parquet_slices,
    read_parquet_slice,
)
from fused_celery.partition.read.remote import SHAPEFILE_SIDECARS

if TYPE_CHECKING:
    import geopandas as gpd

    from fused_celery.partition.config import GeospatialPartitionJobStepConfig

SUPPORTED_SUFFIXES = (*PARQUET_SUFFIXES, *CSV_SUFFIXES, *GDAL_SUFFIXES)
_OTHER_SHAPEFILE_FILES = (*SHAPEFILE_SIDECARS, ".qix", ".sbn", ".sbx", ".shp.xml", ".aih", ".ain")
_READ_INTO_ALL = 1 << 62  # target_rows of read_input: each file as one slice


def read_options(config: GeospatialPartitionJobStepConfig) -> dict[str, Any]:
    """The reader keyword options of a step config: ``lonlat_cols``, ``load_columns``,
    ``gdal_open_options``, ``layer`` and ``config_options`` (from ``gdal_config``)."""
    return {
        "lonlat_cols": config.lonlat_cols,
        "load_columns": config.load_columns,
        "gdal_open_options": dict(config.gdal_config.open_options),
        "layer": config.gdal_config.layer,
        "config_options": dict(config.gdal_config.config_options),
    }


def list_slices(
    config: GeospatialPartitionJobStepConfig,
    *,
    target_rows: int | None = None,
    target_bytes: int | None = None,
) -> list[InputSlice]:
    """The slices of ``config.input``, in input order (see the family modules per format).

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
    opts = read_options(config)
    parts: list[dict[str, Any]] = []
    files = input_files(config.input, file_suffix=config.file_suffix)
    sniffing = {"gdal_open_options": opts["gdal_open_options"]}
    sniffing["config_options"] = opts["config_options"]
    for url in files:
        fmt = file_format(url, **sniffing)
        try:
            with reading(url):
                parts.extend(file_slices(url, fmt, target_rows=target, target_bytes=nbytes, **opts))
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


def file_slices(
    url: str,
    fmt: Format,
    *,
    target_rows: int,
    target_bytes: int,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
    gdal_open_options: dict[str, str] | None = None,
    layer: str | None = None,
    config_options: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The slices of one file of format ``fmt`` (:class:`InputSlice` fields without
    ``slice_id``), from its family module; options as in :func:`read_options` (defaults None).
    Library errors are left to the caller's :func:`~.base.reading`."""
    size = {"target_rows": target_rows, "target_bytes": target_bytes}
    cols = {"lonlat_cols": lonlat_cols, "load_columns": load_columns}
    if fmt == "parquet":
        return parquet_slices(url, **size, **cols)
    if fmt == "csv":
        return csv_slices(url, **size, **cols, gdal_open_options=gdal_open_options)
    return gdal_slices(
        url, **size, **cols, gdal_open_options=gdal_open_options, layer=layer,
        config_options=config_options,
    )  # fmt: skip


def stream_sequential(
    slices: list[InputSlice],
    config: GeospatialPartitionJobStepConfig,
    folder: str,
    *,
    target_rows: int | None = None,
    target_bytes: int | None = None,
) -> list[InputSlice]:
    """``slices`` with each sequential one (a layer GDAL reads only from its start) replaced by
    the Parquet slices of the files :func:`~.gdal.stream_slices` writes under ``folder`` in one
    streaming pass; slice ids renumbered in order. target_rows / target_bytes: as in
    :func:`list_slices` (defaults from ``options``). With ``config.ignore_chunk_error`` a layer
    that fails while streamed becomes one slice with ``error`` set."""
    if not any(sl.sequential for sl in slices):
        return slices
    rows = options.ingest_slice_rows if target_rows is None else int(target_rows)
    nbytes = options.ingest_slice_bytes if target_bytes is None else int(target_bytes)
    opts = read_options(config)
    cols = {"lonlat_cols": opts["lonlat_cols"], "load_columns": opts["load_columns"]}
    gdal = {k: opts[k] for k in ("gdal_open_options", "config_options")}
    parts: list[dict[str, Any]] = []
    for sl in slices:
        if not sl.sequential or sl.error is not None:
            parts.append(sl.model_dump(exclude={"slice_id"}))
            continue
        try:
            with reading(sl.url, sl.describe()):
                for url, _ in stream_slices(
                    sl, folder, target_rows=rows, target_bytes=nbytes, **cols, **gdal
                ):
                    parts.extend(parquet_slices(url, target_rows=rows, target_bytes=nbytes))
        except IngestInputError as exc:
            if not config.ignore_chunk_error:
                raise
            failed = {"start": 0, "stop": 0, "num_rows": None, "error": str(exc)}
            parts.append({"url": sl.url, "format": "gdal", "layer": sl.layer, **failed})
    return [InputSlice(slice_id=i, **p) for i, p in enumerate(parts)]


def read_slice(sl: InputSlice, config: GeospatialPartitionJobStepConfig) -> gpd.GeoDataFrame:
    """The rows of ``sl`` as a GeoDataFrame (index 0..n-1, the file's CRS), read with the
    options of ``config`` (:func:`read_options`).

    Reads only ``config.load_columns`` (plus the geometry, or the ``lonlat_cols``, which become
    EPSG:4326 points) when set. Library errors are :class:`IngestInputError` naming the file and
    the slice; ``lonlat_cols`` / ``load_columns`` naming missing columns list the columns there
    are.
    """
    opts = read_options(config)
    if sl.error is not None:
        raise IngestInputError(sl.error)
    cols = {"lonlat_cols": opts["lonlat_cols"], "load_columns": opts["load_columns"]}
    with reading(sl.url, sl.describe()):
        if sl.format == "parquet":
            return read_parquet_slice(sl, **cols)
        if sl.format == "csv":
            return read_csv_slice(sl, **cols, gdal_open_options=opts["gdal_open_options"])
        return read_gdal_slice(
            sl, **cols, gdal_open_options=opts["gdal_open_options"],
            config_options=opts["config_options"],
        )  # fmt: skip


def read_input(config: GeospatialPartitionJobStepConfig) -> gpd.GeoDataFrame:
    """The whole input of ``config`` as one GeoDataFrame (the single-process path).

    An in-memory (Geo)DataFrame goes through :func:`~..prepare.ensure_geodataframe`; files are
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


def input_files(inputs: str | Sequence[str], *, file_suffix: str | None = None) -> list[str]:
    """The input files (normalised URLs) of ``inputs``, a path/URL or a list of them: each in
    order, a folder expanded into its files (recursively, sorted, names ending with
    ``file_suffix`` when given; default None: every file)."""
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    files: list[str] = []
    for item in items:
        if is_vsi(item):  # GDAL's own path: GDAL finds (or refuses) it
            files.append(item)
            continue
        try:
            url = storage.normalize(item)
        except UnsupportedURLError as exc:
            raise UnsupportedInputError(f"cannot ingest {item!r}: {exc}") from exc
        with reading(url):
            if storage.is_file(url) or _is_gdb_folder(url):
                files.append(url)
                continue
            names = storage.list_files(url, recursive=True)
            if not names and not storage.exists(url):
                raise InputNotFoundError(f"ingest input {url} does not exist")
        kept = _folder_inputs(names, file_suffix)
        if not kept:
            found = f"; it holds {names[:10]}" if names else ", it is empty"
            raise IngestInputError(
                f"no input files in folder {url} (file_suffix={file_suffix!r}, names "
                f"starting with '.' or '_' skipped){found}"
            )
        files.extend(storage.join(url, n) for n in kept)
    return files


def _is_gdb_folder(url: str) -> bool:
    """Whether ``url`` is a local File Geodatabase folder (``*.gdb``), one GDAL input."""
    import os

    local = storage.parse(url).scheme == "file"
    return local and url.rstrip("/").lower().endswith(".gdb") and os.path.isdir(url)


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


def file_format(
    url: str,
    *,
    gdal_open_options: dict[str, str] | None = None,
    config_options: dict[str, str] | None = None,
) -> Format:
    """The format of the file at ``url`` from its suffix; a ``/vsi`` path or a file of another
    suffix is ``"gdal"`` when GDAL opens it (:func:`~.gdal.sniff`, with the GDAL options,
    defaults None), else an :class:`UnsupportedInputError` saying what GDAL said."""
    lower = url.lower().rstrip("/")
    if is_vsi(url):
        return "gdal"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    if lower.endswith(GDAL_SUFFIXES):
        return "gdal"
    with reading(url):
        said = sniff(url, gdal_open_options=gdal_open_options, config_options=config_options)
    if said is None:
        return "gdal"
    raise UnsupportedInputError(
        f"cannot ingest {url}: unknown file type; supported suffixes are "
        f"{list(SUPPORTED_SUFFIXES)}, and GDAL cannot open it as vector data ({said}). Convert "
        "it to a format GDAL reads, pass gdal_config=GDALOpenConfig(open_options=...) when it "
        "needs open options, or (in a folder) pick the files to read with file_suffix"
    )
