"""CSV inputs (``.csv``) in slices of whole records.

A slice is the byte range ``[start, stop)`` of ``target_rows`` records (fewer when the first
block's records say that many would pass ``target_bytes``); the first line is the header
(``header_bytes`` long) and is read with every slice. Record ends are found by one streaming pass
over the file in :func:`csv_slices`, honouring RFC 4180 quoting (newlines inside quoted fields);
blank lines are not counted. A file whose quotes do not balance is one slice (``num_rows``
None). Points come from ``lonlat_cols`` (read with pandas), else from GDAL's CSV driver with the
GDAL open options (``X_POSSIBLE_NAMES`` / ``Y_POSSIBLE_NAMES``, ``GEOM_POSSIBLE_NAMES`` for WKT,
...); a CSV without CRS is EPSG:4326. A task reads only its bytes (a ranged read on S3, no
download).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fused_celery import storage
from fused_celery.errors import IngestInputError
from fused_celery.partition.prepare import frame_from_lonlat
from fused_celery.partition.read.base import (
    InputSlice,
    check_columns,
    open_options_kwargs,
    wanted_columns,
)

if TYPE_CHECKING:
    import geopandas as gpd
    import pyarrow as pa

CSV_SUFFIXES = (".csv",)
_CSV_BLOCK = 8 << 20


def csv_slices(
    url: str,
    *,
    target_rows: int,
    target_bytes: int,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
    gdal_open_options: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The slices of the CSV file at ``url`` as :class:`InputSlice` fields without
    ``slice_id`` (see the module docstring). target_rows / target_bytes: the slice size.
    lonlat_cols / load_columns (defaults None) are checked against the header; without
    ``lonlat_cols``, GDAL must find a geometry with ``gdal_open_options`` (default None)."""
    target = target_rows
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
    check_columns(url, columns, lonlat_cols=lonlat_cols, load_columns=load_columns)
    if ranges and lonlat_cols is None:
        _check_gdal_csv_geometry(url, header, columns, gdal_open_options)
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
    url: str, header: bytes, columns: list[str], gdal_open_options: Mapping[str, str] | None
) -> None:
    """IngestInputError when GDAL finds no geometry in the CSV (it decides from the header and
    the open options)."""
    import pyogrio

    with _temp_csv(header) as path:
        info = pyogrio.read_info(path, **open_options_kwargs(gdal_open_options))
    if info.get("geometry_type") is None:
        raise IngestInputError(
            f"ingest input {url} is a CSV without geometry: pass lonlat_cols=(lon_column, "
            "lat_column), or gdal_config.open_options X_POSSIBLE_NAMES/Y_POSSIBLE_NAMES (point "
            f"coordinates) or GEOM_POSSIBLE_NAMES (a WKT column); its columns are {columns}"
        )


def read_csv_slice(
    sl: InputSlice,
    *,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
    gdal_open_options: Mapping[str, str] | None = None,
) -> gpd.GeoDataFrame:
    """The rows of a CSV slice as a GeoDataFrame: points from ``lonlat_cols`` (default None),
    else the geometry GDAL finds with ``gdal_open_options`` (default None); only
    ``load_columns`` (default None: all) besides. Library errors are left to the caller's
    :func:`~.base.reading`."""
    import pandas as pd

    with storage.open_input_file(sl.url) as src:
        header = src.read_at(sl.header_bytes, 0)
        body = src.read_at(sl.stop - sl.start, sl.start)
    if len(body) != sl.stop - sl.start:
        raise IngestInputError(
            f"{sl.describe()}: the file is shorter than when it was listed (changed or truncated)"
        )
    columns = _csv_header(header)
    check_columns(sl.url, columns, lonlat_cols=lonlat_cols, load_columns=load_columns)
    if lonlat_cols is not None:
        usecols = (
            wanted_columns(columns, lonlat_cols=lonlat_cols, load_columns=load_columns)
            if load_columns is not None
            else None
        )
        frame = pd.read_csv(io.BytesIO(header + body), usecols=usecols)
        return frame_from_lonlat(frame, *lonlat_cols)
    import pyogrio

    kwargs = open_options_kwargs(gdal_open_options)
    if load_columns is not None:
        kwargs["columns"] = list(load_columns)
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
