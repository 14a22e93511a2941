"""Secrets of the local cluster, kept in files only their owner can read (mode 0600).

- ``<cluster_dir>/redis-password``: the embedded Redis's password, generated once and reused (the
  append-only file keeps the data across restarts, and so URLs saved by clients keep working).
- ``<cluster_dir>/cluster.env``: written by ``fused-celery up`` / :class:`LocalCluster` while the
  cluster runs: the broker URL with its password (``FUSED_CELERY_BROKER_URL``, loadable with
  ``set -a; . cluster.env; set +a``) and, in a comment line, Flower's URL, user and password.
- ``<cluster_dir>/flower.env``: the same comment line, for ``fused-celery flower``.

Nothing here prints a secret; callers print the file's path.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

PRIVATE_MODE = 0o600
PASSWORD_BYTES = 24
"""Random bytes of a generated password (``secrets.token_urlsafe``: 32 characters)."""


def write_private(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically, readable by its owner only (0600 whatever the
    umask); the parent folder is created (0700). Returns the path."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)  # O_CREAT's mode is filtered by the umask; this is not
        with os.fdopen(fd, "w") as fh:
            fd = -1
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_or_create_password(path: str | os.PathLike[str]) -> str:
    """The password kept in ``path``, generated (URL-safe characters) and written there 0600 the
    first time. A file that others can read is made private again (the password stays)."""
    path = Path(path)
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if password:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(PRIVATE_MODE)
        return password
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    write_private(path, password + "\n")
    return password


def flower_line(url: str, user: str, password: str) -> str:
    """The comment line naming Flower's login in ``cluster.env`` / ``flower.env``."""
    return f"# Flower: {url}  user: {user}  password: {password}\n"


def remove_if_written(path: str | os.PathLike[str], text: str) -> None:
    """Delete ``path`` if it still holds ``text`` (what this process wrote there)."""
    path = Path(path)
    try:
        if path.read_text() == text:
            path.unlink()
    except OSError:
        pass
