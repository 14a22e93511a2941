"""Where map files go and what ``show`` returns: :class:`MapFile`, :func:`write_map`.

A map is one self-contained HTML file on local disk. Its first line is :data:`MARKER`, so a
later ``show`` knows the file is ours: fused-celery overwrites only files starting with the
marker. Default location: ``<options.storage_root>/maps/<name>.html`` when the storage root is
a local folder, else ``<tempdir>/fused-celery-maps/<name>.html``; when that name holds a file
we did not write, the next free ``<name>-2.html``, ``<name>-3.html``, ... is used.
"""

from __future__ import annotations

import html as html_lib
import os
import re
import tempfile
from pathlib import Path

from fused_celery import storage
from fused_celery.errors import MapFileExistsError
from fused_celery.options import options

MARKER = "<!-- fused-celery map: written by fused-celery, which may overwrite this file -->"
"""First line of every map file; a file without it is never overwritten."""
MAPS_DIR = "maps"
TEMP_DIR = "fused-celery-maps"
MAX_SUFFIX = 1000

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


class MapFile:
    """A written map: ``path`` (str, absolute); ``str()`` / ``os.fspath()`` give the path and
    Jupyter shows the map inline (``_repr_html_``: an iframe whose ``srcdoc`` is the file)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))

    def __str__(self) -> str:
        return self.path

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"MapFile({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MapFile) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def read_html(self) -> str:
        """The map's HTML."""
        return Path(self.path).read_text(encoding="utf-8")

    def _repr_html_(self, height: int = 600) -> str:
        """An iframe holding the map (height in pixels, default 600), for Jupyter."""
        doc = html_lib.escape(self.read_html(), quote=True)
        return (
            f'<iframe srcdoc="{doc}" style="width:100%;height:{int(height)}px;border:none" '
            'sandbox="allow-scripts"></iframe>'
        )


def safe_stem(name: str) -> str:
    """``name`` reduced to a file name stem: runs of characters outside ``[A-Za-z0-9_.=-]``
    become ``_``, leading dots are dropped; ``"map"`` when nothing is left."""
    stem = _UNSAFE.sub("_", name).lstrip(".").strip("_")
    return stem[:100] or "map"


def maps_folder() -> str:
    """The default folder of map files (see the module docstring)."""
    root = options.storage_root
    if storage.parse(root).scheme == "file":
        return os.path.join(storage.parse(root).path, MAPS_DIR)
    return os.path.join(tempfile.gettempdir(), TEMP_DIR)


def is_ours(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` starts with :data:`MARKER`."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(len(MARKER)) == MARKER
    except (FileNotFoundError, IsADirectoryError):
        return False


def _free_path(folder: str, stem: str) -> str:
    for k in range(1, MAX_SUFFIX + 1):
        candidate = os.path.join(folder, f"{stem}.html" if k == 1 else f"{stem}-{k}.html")
        if not os.path.lexists(candidate) or is_ours(candidate):
            return candidate
    raise MapFileExistsError(
        f"{folder} holds {MAX_SUFFIX} files named {stem}*.html not written by fused-celery; "
        "pass path= to choose where the map goes"
    )


def write_map(html: str, path: str | os.PathLike[str] | None, name: str) -> MapFile:
    """Write ``html`` (prefixed by :data:`MARKER`) atomically and return its :class:`MapFile`.

    path: a local file path; None (default) picks ``<maps_folder()>/<name>.html`` or the next
    free name. A given path that holds a file fused-celery did not write raises
    :class:`MapFileExistsError`; so does a folder. name: the stem of the default file name.
    """
    if path is None:
        target = _free_path(maps_folder(), safe_stem(name))
    else:
        target = os.path.abspath(os.path.expanduser(os.fspath(path)))
        if os.path.isdir(target):
            raise MapFileExistsError(f"{target} is a folder; pass a file path ending in .html")
        if os.path.lexists(target) and not is_ours(target):
            raise MapFileExistsError(
                f"{target} exists and was not written by fused-celery; it is left as it is. "
                "Pass another path, or delete the file first"
            )
    storage.write_bytes(target, f"{MARKER}\n{html}".encode(), durable=False)
    return MapFile(target)
