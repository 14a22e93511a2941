"""Reading ingest inputs in slices, so that no process reads a large input whole.

:func:`list_slices` (on the client) cuts the input of a config into :class:`InputSlice` s, small
JSON-able descriptions of a part of one file; :func:`read_slice` (in a task) reads one of them as
a GeoDataFrame; :func:`read_input` reads every slice into one frame (the single-process path).

Modules: :mod:`.base` (:class:`InputSlice`, error translation, column checks), :mod:`.slices`
(input files, dispatch by suffix, the front functions), one module per input family taking
keyword options — :mod:`.parquet` (row groups), :mod:`.csv` (byte ranges of whole records),
:mod:`.gdal` (features, through pyogrio; layers GDAL reads only sequentially in one streaming
pass, :func:`stream_sequential`) — and :mod:`.remote` (the download cache of GDAL
inputs on S3).

Errors: a missing input is :class:`~fused_celery.errors.InputNotFoundError`, an unknown suffix or
URL scheme :class:`~fused_celery.errors.UnsupportedInputError`, anything else wrong with the input
(no files, no rows, corrupt or truncated, no geometry, missing columns)
:class:`~fused_celery.errors.IngestInputError` naming the file (and the slice).
"""

from fused_celery.partition.read.base import Format, InputSlice
from fused_celery.partition.read.csv import CSV_SUFFIXES
from fused_celery.partition.read.gdal import GDAL_SUFFIXES
from fused_celery.partition.read.parquet import (
    PARQUET_SUFFIXES,
    parquet_frame,
    parquet_geo,
    read_parquet_table,
)
from fused_celery.partition.read.remote import SHAPEFILE_SIDECARS
from fused_celery.partition.read.slices import (
    SUPPORTED_SUFFIXES,
    file_format,
    input_files,
    list_slices,
    read_input,
    read_options,
    read_slice,
    stream_sequential,
)

__all__ = [
    "CSV_SUFFIXES",
    "GDAL_SUFFIXES",
    "PARQUET_SUFFIXES",
    "SHAPEFILE_SIDECARS",
    "SUPPORTED_SUFFIXES",
    "Format",
    "InputSlice",
    "file_format",
    "input_files",
    "list_slices",
    "parquet_frame",
    "parquet_geo",
    "read_input",
    "read_options",
    "read_parquet_table",
    "read_slice",
    "stream_sequential",
]
