"""What every input family shares: :class:`InputSlice` (a part of one file, JSON-able), the
error translation of :func:`reading` and the checks of ``lonlat_cols`` / ``load_columns``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from fused_celery.errors import (
    IngestInputError,
    InputNotFoundError,
    StorageError,
    UnsupportedInputError,
    UnsupportedURLError,
)

Format = Literal["parquet", "csv", "gdal"]


def library_errors() -> tuple[type[BaseException], ...]:
    """Errors of the readers (pyarrow, pyogrio/GDAL, pandas, shapely) that become
    IngestInputError. Not ``Exception``: Celery's SoftTimeLimitExceeded and the like must go
    through untouched."""
    from shapely.errors import ShapelyError

    return (OSError, ValueError, TypeError, RuntimeError, LookupError, ShapelyError)


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
    raises this error (so that only this slice fails). sequential: gdal only, a layer GDAL
    reads only from its start (OpenStreetMap, GPX, ...): the slice is the whole layer
    (start = stop = 0, num_rows None), read in one streaming pass
    (:func:`~.gdal.stream_slices`).
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
    sequential: bool = False

    def describe(self) -> str:
        """``slice <id> (<what it covers>) of <url>``, for messages."""
        if self.format == "parquet":
            if self.row_start is not None:
                what = f"rows {self.row_start}-{self.row_stop} of row group {self.start}"
            else:
                what = f"row groups {self.start}-{self.stop - 1}"
        elif self.format == "csv":
            what = f"bytes {self.start}-{self.stop}"
        elif self.sequential:
            what = f"layer {self.layer or '(first)'}, read in one pass"
        else:
            what = f"features {self.start}-{self.stop}"
        return f"slice {self.slice_id} ({what}) of {self.url}"


@contextlib.contextmanager
def reading(url: str, what: str | None = None) -> Iterator[None]:
    """Turn the errors of reading ``url`` into typed ones naming it, or ``what`` (a slice,
    default None: the file)."""
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
    except library_errors() as exc:
        where = what or f"ingest input {url}"
        raise IngestInputError(f"cannot read {where}: {type(exc).__name__}: {exc}") from exc


def check_columns(
    url: str,
    columns: list[str],
    *,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
) -> None:
    """IngestInputError when ``lonlat_cols`` or ``load_columns`` (defaults None) name columns
    not in ``columns`` (the columns of the file at ``url``)."""
    for option, names in (("lonlat_cols", lonlat_cols), ("load_columns", load_columns)):
        missing = [c for c in names or () if c not in columns]
        if missing:
            raise IngestInputError(
                f"{option} names missing column(s) {missing}; {url} has columns {columns}"
            )


def wanted_columns(
    columns: list[str],
    *always: str,
    lonlat_cols: Sequence[str] | None = None,
    load_columns: Sequence[str] | None = None,
) -> list[str]:
    """``columns`` (file order) to read: ``load_columns`` + ``lonlat_cols`` + ``always``, or all
    when ``load_columns`` is None (the default)."""
    if load_columns is None:
        return list(columns)
    keep = {*load_columns, *(lonlat_cols or ()), *always}
    return [c for c in columns if c in keep]


def open_options_kwargs(gdal_open_options: Mapping[str, str] | None) -> dict[str, Any]:
    """GDAL open options (``{"X_POSSIBLE_NAMES": "lon", ...}``) as pyogrio keyword arguments."""
    return {k.lower(): v for k, v in (gdal_open_options or {}).items()}
