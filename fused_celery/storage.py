"""Storage by URL: local paths, ``file://`` and ``s3://bucket/prefix``, through ``pyarrow.fs``.

Every function takes a URL; :func:`resolve` turns it into a ``(filesystem, path)`` pair. S3 is
configured from :data:`fused_celery.options` (``s3_endpoint_url``, ``s3_region``,
``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``); fields left unset fall
back to the AWS SDK's defaults, so the standard ``AWS_*`` variables and instance profiles work.
Pointing ``s3_endpoint_url`` at ``http://127.0.0.1:<port>`` serves S3 from a local
S3-compatible server (MinIO, moto).

Writes are atomic: :func:`write_bytes` and :func:`atomic_output` write a local file under a
temporary name in the same folder and rename it into place, and send an S3 object as one request
(a PUT; objects over the 10 MiB part size go as a multipart upload, which S3 also makes visible
only when complete). A reader never sees half an object.

Errors are typed (:mod:`fused_celery.errors`): an unknown scheme is :class:`UnsupportedURLError`,
a missing bucket :class:`BucketNotFoundError`, other failures :class:`StorageError` naming the
URL. A missing object is the builtin :class:`FileNotFoundError`.
"""

from __future__ import annotations

import functools
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from fused_celery.errors import BucketNotFoundError, StorageError, UnsupportedURLError
from fused_celery.options import options

SCHEMES: tuple[str, ...] = ("file", "s3")
"""URL schemes fused-celery stores to; a path without a scheme is a local path."""

TEMP_MARKER = ".tmp-"
"""Part of the name of a local file being written (``.<name>.tmp-<hex>``); listings skip them."""

COPY_BLOCK = 8 << 20
"""Bytes per read when :func:`copy` streams a file between filesystems."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class Location:
    """A parsed storage URL.

    ``url``: the normalised URL (local paths absolute, no trailing ``/``); ``scheme``: ``"file"``
    or ``"s3"``; ``path``: the path for ``filesystem`` (``bucket/key`` on S3); ``bucket``: the
    S3 bucket, or None.
    """

    url: str
    scheme: str
    path: str
    bucket: str | None

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem serving this location (S3 configured from ``options``)."""
        if self.scheme == "s3":
            return _s3_filesystem(self.bucket or "")
        return _LOCAL


_LOCAL = pafs.LocalFileSystem()


def parse(url: str | os.PathLike[str]) -> Location:
    """Parse ``url`` (``/path``, ``relative/path``, ``~/path``, ``file:///path``,
    ``s3://bucket/key``) into a :class:`Location`.

    Raises :class:`UnsupportedURLError` for another scheme, an S3 URL without a bucket, or an S3
    key with ``..`` segments.
    """
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise UnsupportedURLError(
            f"empty storage URL {url!r}; pass a local path or s3://bucket/..."
        )
    if "://" not in text:
        path = os.path.abspath(os.path.expanduser(text))
        return Location(url=path, scheme="file", path=path, bucket=None)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        if rest and not rest.startswith("/"):
            raise UnsupportedURLError(
                f"file URL {text!r} names a host; use file:///absolute/path or a plain path"
            )
        path = os.path.abspath(rest or "/")
        return Location(url=path, scheme="file", path=path, bucket=None)
    if scheme == "s3":
        key = rest.strip("/")
        bucket = key.split("/", 1)[0]
        if not bucket:
            raise UnsupportedURLError(f"S3 URL {text!r} has no bucket; write s3://bucket/prefix")
        if ".." in key.split("/"):
            raise UnsupportedURLError(
                f"S3 URL {text!r} contains a '..' segment; S3 keys are not resolved like paths, "
                "write the key without it"
            )
        return Location(url=f"s3://{key}", scheme="s3", path=key, bucket=bucket)
    raise UnsupportedURLError(
        f"unsupported URL scheme {scheme!r} in {text!r}; use a local path, file:///path or "
        "s3://bucket/prefix"
    )


def resolve(url: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The ``(pyarrow filesystem, path)`` pair for ``url`` (see :func:`parse`)."""
    loc = parse(url)
    return loc.filesystem, loc.path


def normalize(url: str | os.PathLike[str]) -> str:
    """``url`` in canonical form: absolute local path, or ``s3://bucket/key`` without a
    trailing slash."""
    return parse(url).url


def join(url: str, *parts: str) -> str:
    """``url`` with ``parts`` appended, separated by ``/`` (S3) or the local separator."""
    loc = parse(url)
    cleaned = [p.strip("/") for p in parts if p and p.strip("/")]
    if loc.scheme == "s3":
        return "/".join([loc.url, *cleaned])
    return os.path.join(loc.url, *cleaned)


# --- S3 ----------------------------------------------------------------------------------------

_fs_lock = threading.Lock()
_fs_cache: dict[tuple, pafs.S3FileSystem] = {}
_region_cache: dict[str, str | None] = {}


def _secret(value: object) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else str(value)


def _endpoint() -> tuple[str | None, str]:
    """``(endpoint_override, scheme)`` from ``options.s3_endpoint_url``."""
    url = options.s3_endpoint_url
    if not url:
        return None, "https"
    if "://" in url:
        scheme, host = url.split("://", 1)
        return host.rstrip("/"), scheme.lower()
    return url.rstrip("/"), "https"


def _bucket_region(bucket: str) -> str | None:
    """The region to talk to ``bucket`` in: ``options.s3_region``, else ``us-east-1`` for a
    custom endpoint, else asked of AWS once per bucket (None when that fails: the SDK decides)."""
    if options.s3_region:
        return options.s3_region
    if options.s3_endpoint_url:
        return "us-east-1"
    if bucket not in _region_cache:
        try:
            _region_cache[bucket] = pafs.resolve_s3_region(bucket)
        except OSError as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                raise _missing_bucket(bucket) from exc
            _region_cache[bucket] = None
    return _region_cache[bucket]


def _s3_filesystem(bucket: str) -> pafs.S3FileSystem:
    region = _bucket_region(bucket)
    endpoint, scheme = _endpoint()
    key = (
        os.getpid(),
        region,
        endpoint,
        scheme,
        options.aws_access_key_id,
        _secret(options.aws_secret_access_key),
        _secret(options.aws_session_token),
        options.s3_max_attempts,
    )
    with _fs_lock:
        fs = _fs_cache.get(key)
        if fs is None:
            kwargs: dict[str, object] = {
                "region": region,
                "endpoint_override": endpoint,
                "scheme": scheme,
                # Small objects go as one PutObject instead of a multipart upload.
                "allow_delayed_open": True,
                # Connection errors are retried with exponential backoff (an outage of a few
                # seconds is ridden out; pyarrow's default gives up after 3 attempts).
                "retry_strategy": pafs.AwsDefaultS3RetryStrategy(
                    max_attempts=options.s3_max_attempts
                ),
            }
            if options.aws_access_key_id:
                kwargs["access_key"] = options.aws_access_key_id
                kwargs["secret_key"] = _secret(options.aws_secret_access_key)
                kwargs["session_token"] = _secret(options.aws_session_token)
            fs = pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})
            _fs_cache[key] = fs
        return fs


def _missing_bucket(bucket: str) -> BucketNotFoundError:
    where = options.s3_endpoint_url or "AWS S3"
    return BucketNotFoundError(
        f"S3 bucket {bucket!r} does not exist at {where}; create it (aws s3 mb s3://{bucket}) or "
        "fix the URL (and options.s3_endpoint_url / s3_region if it lives elsewhere)"
    )


def bucket_exists(url: str) -> bool:
    """True when ``url`` is local, or is on S3 and its bucket exists."""
    loc = parse(url)
    if loc.scheme != "s3":
        return True
    try:
        info = loc.filesystem.get_file_info(loc.bucket)
    except BucketNotFoundError:
        return False
    except OSError as exc:
        raise _storage_error("check the bucket of", loc.url, exc) from exc
    return info.type != pafs.FileType.NotFound


def check_bucket(url: str) -> None:
    """Raise :class:`BucketNotFoundError` when ``url`` is on S3 and its bucket is missing."""
    loc = parse(url)
    if loc.scheme == "s3" and not bucket_exists(url):
        raise _missing_bucket(loc.bucket or "")


def _storage_error(action: str, url: str, exc: BaseException) -> StorageError:
    return StorageError(f"cannot {action} {url}: {exc}")


def _call(action: str, loc: Location, fn: Callable[[], _T]) -> _T:
    """Run ``fn``; turn its errors into typed ones naming ``loc`` (a missing bucket first)."""
    try:
        return fn()
    except NotADirectoryError as exc:  # a parent is a file: nothing is at this URL
        raise FileNotFoundError(f"no file at {loc.url}: a parent is a file") from exc
    except (FileNotFoundError, BucketNotFoundError, UnsupportedURLError):
        if loc.scheme == "s3" and not bucket_exists(loc.url):
            raise _missing_bucket(loc.bucket or "") from None
        raise
    except OSError as exc:
        if loc.scheme == "s3" and not bucket_exists(loc.url):
            raise _missing_bucket(loc.bucket or "") from exc
        if isinstance(exc, StorageError):
            raise
        raise _storage_error(action, loc.url, exc) from exc


# --- operations --------------------------------------------------------------------------------


def exists(url: str) -> bool:
    """True when a file or a folder (a non-empty prefix on S3) is at ``url``."""
    loc = parse(url)
    info = _call("check", loc, lambda: loc.filesystem.get_file_info(loc.path))
    return info.type != pafs.FileType.NotFound


def is_file(url: str) -> bool:
    """True when a file (an object on S3) is at ``url``."""
    loc = parse(url)
    info = _call("check", loc, lambda: loc.filesystem.get_file_info(loc.path))
    return info.type == pafs.FileType.File


def _file_infos(url: str, recursive: bool, *, check: bool = True) -> dict[str, pafs.FileInfo]:
    """Files under the folder ``url`` by path relative to it (see :func:`list_files`). check:
    an empty S3 listing checks that the bucket exists (default True)."""
    loc = parse(url)
    selector = pafs.FileSelector(loc.path, recursive=recursive, allow_not_found=True)
    infos = _call("list", loc, lambda: loc.filesystem.get_file_info(selector))
    base = loc.path.rstrip("/") + "/"
    found = {}
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.startswith(base):
            continue
        name = info.path[len(base) :]
        if TEMP_MARKER in name.rsplit("/", 1)[-1]:
            continue
        found[name] = info
    if check and not infos and loc.scheme == "s3":
        check_bucket(loc.url)  # an empty listing may be a missing bucket
    return found


def list_files(url: str, *, recursive: bool = False) -> list[str]:
    """Files under the folder ``url``, as sorted paths relative to it (``/``-separated).

    recursive: include files in sub-folders (default False). Temporary files of unfinished local
    writes are left out. A missing folder lists as ``[]``.
    """
    return sorted(_file_infos(url, recursive))


def list_file_times(url: str, *, recursive: bool = False) -> dict[str, float]:
    """:func:`list_files` with each file's last modification time (epoch seconds)."""
    return {name: (info.mtime_ns or 0) / 1e9 for name, info in _file_infos(url, recursive).items()}


def modified_times(url: str) -> dict[str, float]:
    """``{path relative to the folder url: last modification, epoch seconds}`` of every file
    under ``url`` (recursive; temporary files left out, a missing folder gives ``{}``)."""
    infos = _file_infos(url, True, check=False)
    return {name: i.mtime.timestamp() for name, i in infos.items() if i.mtime is not None}


def file_version(url: str) -> str:
    """``"<size>:<modification time, ns>"`` of file ``url`` (a rewritten file has another)."""
    loc = parse(url)
    info = _call("stat", loc, lambda: loc.filesystem.get_file_info(loc.path))
    return f"{info.size}:{info.mtime_ns}"


def read_bytes(url: str) -> bytes:
    """The content of the file at ``url`` (``FileNotFoundError`` when there is none)."""
    loc = parse(url)

    def read() -> bytes:
        with loc.filesystem.open_input_stream(loc.path) as src:
            return src.read()

    return _call("read", loc, read)


def open_input_file(url: str, *, memory_map: bool = False) -> pa.NativeFile:
    """A random-access file at ``url`` (what Parquet readers need); close it after use.

    memory_map: map a local file into memory instead of reading it (default False); Arrow
    data read from it then points into the file's pages instead of being copied."""
    loc = parse(url)
    if memory_map and loc.scheme == "file":
        return _call("open", loc, lambda: pa.memory_map(loc.path))
    return _call("open", loc, lambda: loc.filesystem.open_input_file(loc.path))


def write_bytes(url: str, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``url`` atomically, replacing what was there (durable: see
    :func:`atomic_output`)."""
    with atomic_output(url, durable=durable) as out:
        out.write(data)


def sync(url: str) -> None:
    """Make the file at ``url`` durable: fsync a local file (one written by
    :func:`atomic_output` with ``durable=False``, e.g. so that the caller overlaps the disk's
    wait with other work); nothing to do on S3, whose writes are durable when they return."""
    loc = parse(url)
    if loc.scheme == "s3":
        return
    fd = os.open(loc.path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(url: str, *, durable: bool = True) -> Iterator[pa.NativeFile]:
    """A writable Arrow file whose content appears at ``url`` only when the block ends
    without an exception; nothing is written at ``url`` otherwise.

    A native Arrow stream (not a Python file object), so Parquet and IPC writers write to it
    without calling back into Python. Local: written to ``.<name>.tmp-<hex>`` in the same
    folder (parents are created), then renamed over ``url``. S3: buffered in memory, then sent
    in one request. durable: fsync a local file before the rename (default True; False for
    scratch data that a crash may lose).
    """
    loc = parse(url)
    if loc.scheme == "s3":
        buffer = pa.BufferOutputStream()
        yield buffer
        payload = buffer.getvalue()

        def put() -> None:
            stream = loc.filesystem.open_output_stream(loc.path)
            stream.write(payload)
            stream.close()

        _call("write", loc, put)
        return
    folder, name = os.path.split(loc.path)
    tmp = os.path.join(folder, f".{name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(folder, exist_ok=True)
        with pa.OSFile(tmp, "wb") as out:
            yield out
            if durable:
                os.fsync(out.fileno())
        os.replace(tmp, loc.path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def move(src: str, dst: str) -> None:
    """Move the file ``src`` to ``dst`` (same filesystem), replacing ``dst``.

    Local: one atomic rename. S3: server-side copy, then delete of ``src``.
    """
    s, d = parse(src), parse(dst)
    if s.scheme != d.scheme or s.bucket != d.bucket:
        raise StorageError(f"cannot move {s.url} to {d.url}: not on the same filesystem/bucket")
    if s.scheme == "file":

        def rename() -> None:
            os.makedirs(os.path.dirname(d.path), exist_ok=True)
            os.replace(s.path, d.path)

        _call("move", s, rename)
        return
    _call("move", s, lambda: s.filesystem.move(s.path, d.path))


def copy(src: str, dst: str) -> None:
    """Copy the file ``src`` to ``dst``, replacing ``dst``; ``src`` stays.

    Local to local: a hard link (no bytes copied; a byte copy where links are not allowed)
    under a temporary name, then one atomic rename. Within an S3 bucket: a server-side copy.
    Otherwise the bytes are streamed through :func:`atomic_output`.
    """
    s, d = parse(src), parse(dst)
    if s.scheme != d.scheme or s.bucket != d.bucket:
        with open_input_file(src) as f, atomic_output(dst) as out:
            while block := f.read(COPY_BLOCK):
                out.write(block)
        return
    if s.scheme == "file":

        def link() -> None:
            import shutil

            folder, name = os.path.split(d.path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{name}{TEMP_MARKER}{uuid.uuid4().hex}")
            try:
                os.link(s.path, tmp)
            except OSError:
                shutil.copyfile(s.path, tmp)
            try:
                os.replace(tmp, d.path)
            except BaseException:
                os.unlink(tmp)
                raise

        _call("copy", s, link)
        return
    try:
        _call("copy", s, lambda: s.filesystem.copy_file(s.path, d.path))
    except StorageError:
        if not is_file(src):
            raise FileNotFoundError(f"no file at {s.url}") from None
        raise


def delete_file(url: str, *, missing_ok: bool = True) -> None:
    """Delete the file at ``url``. missing_ok: no error when it is absent (default True)."""
    loc = parse(url)
    try:
        _call("delete", loc, lambda: loc.filesystem.delete_file(loc.path))
    except FileNotFoundError:
        if not missing_ok:
            raise


def delete_prefix(url: str) -> None:
    """Delete the folder ``url`` and everything under it (every key with that prefix on S3).

    Refuses the locations :func:`protected_reason` names (a filesystem root, a home directory, a
    parent of the current directory, a whole bucket). Nothing to delete is not an error.
    """
    loc = parse(url)
    reason = protected_reason(loc.url)
    if reason:
        raise StorageError(f"refusing to delete {loc.url}: it is {reason}; name a folder in it")
    fs = loc.filesystem

    def delete() -> None:
        info = fs.get_file_info(loc.path)
        if info.type == pafs.FileType.File:
            fs.delete_file(loc.path)
        elif info.type == pafs.FileType.Directory:
            fs.delete_dir(loc.path)

    _call("delete", loc, delete)


# --- protected locations and folders a writer created -------------------------------------------


def _home_directories() -> set[str]:
    """Resolved home directories: ``~`` (``$HOME``, read each time) and every account's in the
    password database (read once per process)."""
    return {os.path.realpath(os.path.expanduser("~")), *_account_homes()}


@functools.lru_cache(maxsize=1)
def _account_homes() -> frozenset[str]:
    try:
        import pwd

        return frozenset(os.path.realpath(p.pw_dir) for p in pwd.getpwall() if p.pw_dir)
    except (ImportError, OSError):  # pragma: no cover - not POSIX
        return frozenset()


def protected_reason(url: str | os.PathLike[str]) -> str | None:
    """Why ``url`` must never be written as a table or deleted as a folder, or None.

    Local paths are resolved first (``~``, ``..``, symlinks, :func:`os.path.realpath`); refused
    are the filesystem root, a home directory (``$HOME`` and every account's), and the current
    directory's parents (not the current directory itself). On S3: the root of a bucket.
    """
    loc = parse(url)
    if loc.scheme == "s3":
        return (
            f"the root of bucket {loc.bucket!r} (the whole bucket)" if "/" not in loc.path else None
        )
    real = os.path.realpath(loc.path)
    if os.path.dirname(real) == real:
        return "the filesystem root"
    if real in _home_directories():
        return "a home directory"
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # the current directory was deleted
        return None
    if real != cwd and cwd.startswith(real.rstrip(os.sep) + os.sep):
        return "a parent of the current directory"
    return None


def missing_folders(url: str) -> list[str]:
    """The local folders that would have to be created for ``url`` to exist: ``url`` and its
    absent ancestors, outermost first (``[]`` when ``url`` exists, and always on S3, which has
    no folders)."""
    loc = parse(url)
    if loc.scheme != "file":
        return []
    missing: list[str] = []
    path = loc.path
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing[::-1]


def remove_empty_folders(urls: list[str]) -> None:
    """Remove each local folder in ``urls`` that is empty, innermost first (``urls`` as
    :func:`missing_folders` gives them). A folder that holds anything stays; S3 URLs are
    skipped (an S3 prefix without objects does not exist)."""
    for url in reversed(urls):
        loc = parse(url)
        if loc.scheme != "file" or protected_reason(loc.url):
            continue
        try:
            os.rmdir(loc.path)
        except OSError:  # not empty, already gone, or not ours to remove
            pass
