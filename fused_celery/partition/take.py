"""Row gathers for the work tables of an ingest, faster than Arrow's ``take`` on the columns an
ingest moves most (:func:`take_rows`): a binary or string column whose values all have one
length (the WKB of 2D points) is gathered as fixed-size binary, and a string column of few
distinct values through its dictionary; the result is the same table as ``table.take``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

FAST_MIN_ROWS = 4096
"""Tables of fewer rows are gathered by ``take`` alone."""
DISTINCT_SAMPLE = 1024
"""Values of a string column looked at to decide whether to gather it through a dictionary."""
MAX_DISTINCT = 64
"""A string column with at most this many distinct values in its sample goes through a
dictionary (encoding it costs less than gathering the strings)."""


def take_rows(table: pa.Table, indices: np.ndarray) -> pa.Table:
    """``table.take(indices)`` with every column in one chunk; ``indices``: int row positions
    (no nulls). Same values, types and schema metadata as ``take``."""
    import pyarrow as pa

    idx = pa.array(np.asarray(indices, dtype=np.int64))
    if table.num_rows < FAST_MIN_ROWS or len(idx) < FAST_MIN_ROWS:
        return table.take(idx).combine_chunks()
    columns = [_take_column(col.combine_chunks(), idx) for col in table.columns]
    return pa.Table.from_arrays(columns, schema=table.schema)


def _take_column(arr: pa.Array, idx: pa.Array) -> pa.Array:
    import pyarrow as pa

    t = arr.type
    variable = (pa.binary(), pa.large_binary(), pa.string(), pa.large_string())
    if t not in variable or arr.null_count:
        return arr.take(idx)
    width = _one_width(arr)
    large = t in (pa.large_binary(), pa.large_string())
    if width is not None and (large or width * (len(idx) + 1) < 2**31):
        return _take_fixed(arr, idx, width)
    if t in (pa.string(), pa.large_string()) and _few_distinct(arr):
        return arr.dictionary_encode().take(idx).cast(t)
    return arr.take(idx)


def _offsets(arr: pa.Array) -> np.ndarray:
    """The ``len(arr) + 1`` value offsets of a binary or string array (its slice offset applied)."""
    import pyarrow as pa

    large = arr.type in (pa.large_binary(), pa.large_string())
    buf = np.frombuffer(arr.buffers()[1], np.int64 if large else np.int32)
    return buf[arr.offset : arr.offset + len(arr) + 1]


def _one_width(arr: pa.Array) -> int | None:
    """The length of every value of ``arr`` when they all have one (non-zero), else None."""
    offsets = _offsets(arr)
    width = int(offsets[1] - offsets[0])
    if width <= 0 or int(offsets[-1] - offsets[0]) != width * len(arr):
        return None
    return width if (np.diff(offsets) == width).all() else None


def _take_fixed(arr: pa.Array, idx: pa.Array, width: int) -> pa.Array:
    """``arr.take(idx)`` for values of one ``width``: gathered as ``fixed_size_binary(width)``
    over the same bytes, then given the type's offsets back."""
    import pyarrow as pa

    start = int(_offsets(arr)[0])
    data = arr.buffers()[2].slice(start, width * len(arr))
    fixed = pa.Array.from_buffers(pa.binary(width), len(arr), [None, data])
    taken = fixed.take(idx)
    large = arr.type in (pa.large_binary(), pa.large_string())
    n = len(taken)
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int64 if large else np.int32)
    return pa.Array.from_buffers(arr.type, n, [None, pa.py_buffer(offsets), taken.buffers()[1]])


def _few_distinct(arr: pa.Array) -> bool:
    """Whether an evenly spaced sample of ``arr`` has at most :data:`MAX_DISTINCT` values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pick = np.linspace(0, len(arr) - 1, min(len(arr), DISTINCT_SAMPLE)).astype(np.int64)
    return int(pc.count_distinct(arr.take(pa.array(pick))).as_py()) <= MAX_DISTINCT
