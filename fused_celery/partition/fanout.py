"""How many prepare tasks an ingest's input is cut into: at least one slice per worker process
that serves the job, when the input is large enough.

Pure: no I/O. An input of few large row groups (1M points in one row group, the default
``ingest_slice_rows``) would otherwise be one slice: its prepare and scatter tasks would run on
one process while the others wait. A smaller slice of a row group costs more decoding (a task
reading rows ``[a, b)`` of a group decodes the rows before ``a`` too), so slices never go below
a minimum.
"""

from __future__ import annotations

__all__ = ["slice_rows_for"]


def slice_rows_for(total_rows: int | None, slice_rows: int, processes: int, min_rows: int) -> int:
    """Rows per slice for an input of ``total_rows`` rows (None: unknown) served by
    ``processes`` worker processes: ``slice_rows`` (the most per slice), lowered so that the
    input makes at least ``processes`` slices, but never below ``min_rows``."""
    if not total_rows or processes <= 1 or total_rows > slice_rows * (processes - 1):
        return slice_rows  # unknown, one process, or already a slice per process
    even = -(-total_rows // processes)
    return max(1, min(slice_rows, max(min_rows, even)))
