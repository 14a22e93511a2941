"""Partitioned tables, in four modules:

- :mod:`fused_celery.table.format`: names, layout constants, ``geo`` and ``fused:*`` metadata,
  frames <-> Arrow;
- :mod:`fused_celery.table.facts`: :class:`RowFacts`, :class:`ChunkMetadata`, chunk-bbox
  intersection, evenly spaced samples (pure numpy/shapely, no I/O);
- :mod:`fused_celery.table.read`: :func:`open_table`, :class:`Table`, chunk and bbox reads;
- :mod:`fused_celery.table.write`: :class:`TableWriter`, :func:`write_table`, the commit.

Code in the project imports from those modules. ``from fused_celery.table import X`` keeps
working for every public name; the module holding X is imported on first use, so that importing
:mod:`fused_celery.table.facts` alone loads no I/O code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ChunkMetadata": "facts",
    "RowFacts": "facts",
    "chunks_intersecting": "facts",
    "compute_chunk_metadata": "facts",
    "evenly_spaced": "facts",
    "geometry_types": "facts",
    "COMPRESSION": "format",
    "COVERING_COLUMN": "format",
    "FORMAT_VERSION": "format",
    "GEOPARQUET_VERSION": "format",
    "KEY_FORMAT_VERSION": "format",
    "KEY_INGEST_REPORT": "format",
    "KEY_METADATA": "format",
    "KEY_WRITER": "format",
    "METADATA_SCHEMA": "format",
    "SAMPLE_FILE": "format",
    "SAMPLE_ROWS": "format",
    "SAMPLE_ROWS_PER_FILE": "format",
    "STAGING_DIR": "format",
    "WRITING_MARKER": "format",
    "arrow_to_frame": "format",
    "decode_chunk_metadata": "format",
    "encode_chunk_metadata": "format",
    "frame_to_arrow": "format",
    "geo_metadata": "format",
    "resolve_table_url": "format",
    "validate_name": "format",
    "Table": "read",
    "get_chunk_from_table": "read",
    "get_chunks_metadata": "read",
    "open_table": "read",
    "read_bbox": "read",
    "read_chunk_metadata": "read",
    "TableWriter": "write",
    "write_table": "write",
    "writer_options": "write",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'fused_celery.table' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"fused_celery.table.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
