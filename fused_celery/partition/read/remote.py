"""The download cache for inputs GDAL reads from S3: GDAL reads local files, so a file on S3 is
downloaded once per machine into :data:`INPUT_CACHE_DIR`, keyed by URL, size and modification
time, renamed into place when complete (a Shapefile with its ``.shx``/``.dbf``/``.prj``/``.cpg``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
import uuid

from fused_celery import storage
from fused_celery.errors import IngestInputError

SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
"""Files a Shapefile is read with (same stem); downloaded with it from S3."""

INPUT_CACHE_DIR = os.path.join(
    tempfile.gettempdir(), f"fused-celery-inputs-{getattr(os, 'getuid', lambda: 'user')()}"
)
"""Where GDAL-format files on S3 are downloaded to (one folder per URL, size and mtime)."""


def remote_file(url: str) -> tuple[int, int | None, tuple[str, ...]]:
    """``(size, mtime_ns, sidecar URLs)`` of a file on S3 (sidecars: of a Shapefile)."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(url)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(url)
    sidecars: tuple[str, ...] = ()
    if url.lower().endswith(".shp"):
        stem = path[:-4]
        candidates = [stem + e for ext in SHAPEFILE_SIDECARS for e in (ext, ext.upper())]
        found = [i.path for i in fs.get_file_info(candidates) if i.type == pafs.FileType.File]
        sidecars = tuple(f"s3://{p}" for p in found)
    return int(info.size), info.mtime_ns, sidecars


def local_copy(url: str, size: int, mtime_ns: int | None, sidecars: tuple[str, ...]) -> str:
    """The local copy of the file at ``url`` of ``size`` bytes modified at ``mtime_ns``
    (downloaded with its ``sidecars`` when absent; see :func:`remote_file`)."""
    key = hashlib.sha256(f"{url}\n{size}\n{mtime_ns}".encode()).hexdigest()[:32]
    folder = os.path.join(INPUT_CACHE_DIR, key)
    local = os.path.join(folder, posixpath.basename(url))
    if os.path.exists(local):
        return local
    os.makedirs(folder, exist_ok=True)
    for side in sidecars:  # the main file last: when it exists, the copy is complete
        _download(side, os.path.join(folder, posixpath.basename(side)), None)
    _download(url, local, size)
    return local


def _download(url: str, dest: str, size: int | None) -> None:
    """Copy the file at ``url`` to ``dest`` (a temporary name, then renamed)."""
    fs, path = storage.resolve(url)
    tmp = f"{dest}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open_input_stream(path) as src, open(tmp, "wb") as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
        got = os.path.getsize(tmp)
        if size is not None and got != size:
            raise IngestInputError(
                f"ingest input {url} changed since it was listed ({size} bytes then, {got} now); "
                "run the ingest again"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
