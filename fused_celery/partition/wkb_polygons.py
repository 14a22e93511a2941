"""2D single-ring polygons read from their WKB bytes as coordinate arrays, no geometry decoded.

Pure numpy over an Arrow binary column (no I/O, no Celery, no GEOS). An ingest of polygons
needs, per row, validity, centroid, bounds, area, length and coordinate count; for a polygon
without holes all of them come from its ring's coordinates (:mod:`.ring_shapes`), so decoding
each row into a GEOS geometry (``from_wkb``: a third of the prepare stage on polygon inputs) is
avoided when every row is such a polygon. Hand-written because no library gives WKB coordinates
as arrays without making geometry objects (shapely's ``from_ragged_array`` goes the other way,
``to_ragged_array`` starts from geometries).

A row qualifies when its WKB is little-endian, type 3 (Polygon, 2D, ISO), one ring, and its
length is exactly that ring's: anything else (big-endian, Z/M, EWKB, multi-part, holes, nulls)
makes :func:`single_ring_polygons` return None, for the caller's general path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fused_celery.partition.ring_shapes import Rings, rings_of

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["HEADER", "single_ring_polygons"]

#: Bytes before a single-ring polygon's coordinates: byte order (1), type (4), rings (4),
#: points (4).
HEADER = 13


def single_ring_polygons(column: pa.Array | pa.ChunkedArray) -> Rings | None:
    """The :class:`~.ring_shapes.Rings` of a WKB column whose every row is a 2D single-ring
    Polygon (little-endian ISO WKB), one ring per row in row order; None otherwise (see the
    module docstring) or when the column is empty."""
    import pyarrow as pa

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    large = pa.types.is_large_binary(col.type)
    if not (pa.types.is_binary(col.type) or large) or col.null_count or not len(col):
        return None
    n = len(col)
    offsets = np.frombuffer(col.buffers()[1], np.int64 if large else np.int32)
    offsets = offsets[col.offset : col.offset + n + 1].astype(np.int64)
    data = np.frombuffer(col.buffers()[2], np.uint8)
    lengths = np.diff(offsets)
    if (lengths < HEADER).any():
        return None
    begin = offsets[:-1]
    header = data[begin[:, None] + np.arange(HEADER)]  # n × 13 bytes
    words = np.ascontiguousarray(header[:, 1:]).view("<u4")  # type, rings, points
    if not (
        (header[:, 0] == 1).all()
        and (words[:, 0] == 3).all()
        and (words[:, 1] == 1).all()
        and (lengths == HEADER + 16 * words[:, 2].astype(np.int64)).all()
    ):
        return None
    count = words[:, 2].astype(np.int64)
    # the coordinates: every row's bytes after its header, in order
    keep = np.ones(int(offsets[-1] - offsets[0]), bool)
    skip = (begin - offsets[0])[:, None] + np.arange(HEADER)
    keep[skip.ravel()] = False
    coords = data[offsets[0] : offsets[-1]][keep].view("<f8").reshape(-1, 2)
    owner = np.repeat(np.arange(n), count)
    return rings_of(coords[:, 0], coords[:, 1], owner, n)
