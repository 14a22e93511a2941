"""``@fused.cache``: cache a function's return value by its arguments, in shared storage.

As in the reference SDK::

    @fused.cache                            # or @fused.cache(cache_max_age="10m", ...)
    def load(url: str, bbox: list): ...

    load(url, bbox)                         # computes, stores, returns
    load(url, bbox)                         # returns the stored value
    load(url, bbox, cache_reset=True)       # recomputes and stores again

Every option of the decorator can also be given to one call (``cache_reset``,
``cache_max_age``, ...); it applies to that call only (**Fix:** the SDK keeps it for every later
call). Values live under ``<options.storage_root>/fused-cache/<cache_folder_path>/<function>/``
(a local folder or ``s3://``), so every worker that shares the storage root shares the cache,
UDFs on the cluster included. Each entry is one file, written whole (a local file is written
under a temporary name and renamed; an S3 object is sent in one request): concurrent first calls
may both compute, but a reader only ever sees a complete value, and a call that finds a fresh
entry written meanwhile does not write again.

The key is a hash of the function's source text and its arguments bound to its signature
(defaults applied, so ``f(1)`` and ``f(x=1)`` share an entry), leaving out the parameters named in
``cache_key_exclude``. Errors are never cached.

Values are stored with the wire codec of :mod:`fused_celery.codec` (JSON, and Arrow IPC for
frames), never pickle. Cacheable: None, bool, int, float, str, bytes, numpy arrays and scalars,
``pd.DataFrame``, ``pd.Series``, ``gpd.GeoDataFrame``, ``pa.Table``, shapely geometries, and
lists, tuples (kept as tuples) and dicts of these. Any other value raises
:class:`~fused_celery.errors.CacheValueError` naming its type.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import re
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from fused_celery import codec
from fused_celery.errors import CacheValueError, CallArgumentError, UdfSerializationError
from fused_celery.options import options

__all__ = ["cache", "cache_call", "cache_location", "parse_max_age", "DEFAULT_CACHE_MAX_AGE"]

DEFAULT_CACHE_MAX_AGE = "48h"
"""How long a cached value is reused when no ``cache_max_age`` is given (the SDK's default)."""

CACHE_FOLDER = "fused-cache"
"""Folder of cached values under ``options.storage_root``."""

_STORAGES = (None, "auto", "mount", "local", "object")
_CONTROL = (
    "cache_max_age",
    "cache_folder_path",
    "concurrent_lock_timeout",
    "cache_reset",
    "cache_storage",
    "cache_key_exclude",
    "cache_verbose",
)
_AGE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_FORMAT = 1


def parse_max_age(value: int | float | str | None) -> float:
    """Seconds from int/float seconds or ``"\\d+[smhd]"`` (``"10m"``, ``"24h"``, ``"7d"``);
    None gives :data:`DEFAULT_CACHE_MAX_AGE`. Raises ``ValueError`` for anything else."""
    if value is None:
        value = DEFAULT_CACHE_MAX_AGE
    if isinstance(value, bool):
        raise CallArgumentError(
            "cache_max_age must be seconds or a string like '30s', '10m', '24h'"
        )
    if isinstance(value, (int, float)):
        if value < 0:
            raise CallArgumentError(f"cache_max_age must be >= 0, got {value}")
        return float(value)
    match = _AGE.match(str(value).lower())
    if not match:
        raise CallArgumentError(
            f"cache_max_age {value!r} is not understood: use seconds or a number followed by "
            "one of 's' (seconds), 'm' (minutes), 'h' (hours) or 'd' (days), e.g. '10m'"
        )
    return float(int(match.group(1)) * _UNITS[match.group(2)])


# --------------------------------------------------------------------------- values


def _pack(value: Any) -> dict[str, Any]:
    """A JSON-able form of a return value (see the module docstring for what is cacheable)."""
    if isinstance(value, tuple):
        return {"t": [_pack(v) for v in value]}
    pd = codec._loaded("pandas")
    if pd is not None and isinstance(value, pd.Series):
        return {"s": codec.encode(value.to_frame(name=value.name if value.name else 0))}
    try:
        return {"v": codec.encode(value)}
    except UdfSerializationError:
        if isinstance(value, list):
            return {"l": [_pack(v) for v in value]}
        if isinstance(value, dict):
            return {"d": [[_pack(k), _pack(v)] for k, v in value.items()]}
        raise


def _unpack(packed: dict[str, Any]) -> Any:
    if "t" in packed:
        return tuple(_unpack(v) for v in packed["t"])
    if "l" in packed:
        return [_unpack(v) for v in packed["l"]]
    if "d" in packed:
        return {_unpack(k): _unpack(v) for k, v in packed["d"]}
    if "s" in packed:
        frame = codec.decode(packed["s"])
        series = frame.iloc[:, 0]
        return series.rename(None) if series.name == 0 else series
    return codec.decode(packed["v"])


# --------------------------------------------------------------------------- keys


def _function_text(func: Callable[..., Any]) -> str:
    target = inspect.unwrap(func)
    try:
        return inspect.getsource(target)
    except (OSError, TypeError):  # no source (built in a REPL): the compiled code stands in
        code = getattr(target, "__code__", None)
        if code is None:
            return repr(target)
        return f"{code.co_code.hex()}|{code.co_consts!r}|{code.co_names!r}"


def _digest(value: Any) -> str:
    """A stable text standing for an argument (same value, same text across processes)."""
    try:
        packed = json.dumps(_pack(value), sort_keys=True, separators=(",", ":"))
    except (UdfSerializationError, TypeError, ValueError):
        dump = getattr(value, "model_dump_json", None)  # pydantic models, UDFs included
        packed = dump() if callable(dump) else repr(value)
    return hashlib.sha256(packed.encode()).hexdigest()


def _key(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], exclude: set[str]
) -> str:
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    parts = [[name, _digest(v)] for name, v in bound.arguments.items() if name not in exclude]
    text = json.dumps([_function_text(func), parts], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _exclude_set(value: Iterable[str] | str | None) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, bytes):
        raise CallArgumentError(
            "cache_key_exclude must be a parameter name or a collection of parameter names"
        )
    return set(value)


def _folder(path: str) -> str:
    parts = [p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise CallArgumentError(f"cache_folder_path {path!r} must not contain '..'")
    return "/".join(parts) or "tmp"


def cache_location(func: Callable[..., Any], cache_folder_path: str = "tmp") -> str:
    """The folder (URL or path) holding the cached values of ``func``."""
    from fused_celery import storage

    name = getattr(inspect.unwrap(func), "__name__", "function")
    return storage.join(options.storage_root, CACHE_FOLDER, _folder(cache_folder_path), name)


# --------------------------------------------------------------------------- reading and writing


def _read(url: str, max_age: float, decode: bool = True) -> tuple[bool, Any, float]:
    """``(found, value, age_seconds)`` of a fresh entry at ``url`` (value None unless
    ``decode``). A cache that cannot be read is a miss, with a warning."""
    from fused_celery import storage

    try:
        record = json.loads(storage.read_bytes(url))
        age = time.time() - float(record["created"])
        if record.get("format") != _FORMAT or age > max_age:
            return False, None, age
        return True, (_unpack(record["value"]) if decode else None), age
    except FileNotFoundError:
        return False, None, 0.0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"@fused.cache: could not read {url} ({exc}); computing", stacklevel=4)
        return False, None, 0.0


def _write(url: str, packed: dict[str, Any], name: str) -> None:
    """Store one entry whole; a cache that cannot be written only costs a recomputation."""
    from fused_celery import storage

    record = {"format": _FORMAT, "created": time.time(), "function": name, "value": packed}
    try:
        storage.write_bytes(url, json.dumps(record, separators=(",", ":")).encode())
    except OSError as exc:
        warnings.warn(f"@fused.cache: could not write {url} ({exc})", stacklevel=4)


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


class _Call:
    """One cached call: its settings, key and entry URL."""

    def __init__(self, func: Callable[..., Any], settings: dict[str, Any]) -> None:
        if settings.get("cache_storage") not in _STORAGES:
            raise CallArgumentError(
                f"cache_storage must be one of 'auto', 'mount', 'local', 'object' or None, "
                f"got {settings.get('cache_storage')!r}"
            )
        self.func = func
        self.name = getattr(inspect.unwrap(func), "__name__", "function")
        self.max_age = parse_max_age(settings.get("cache_max_age"))
        self.reset = bool(settings.get("cache_reset"))
        verbose = settings.get("cache_verbose")
        self.verbose = True if verbose is None else bool(verbose)
        self.exclude = _exclude_set(settings.get("cache_key_exclude"))
        self.folder = settings.get("cache_folder_path") or "tmp"

    def url(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The entry's URL, or None when this call is not cached (max age 0, or arguments that
        do not fit the signature: the call then raises the function's own TypeError)."""
        if self.max_age <= 0:
            return None
        try:
            key = _key(self.func, args, kwargs, self.exclude)
        except TypeError:
            return None
        from fused_celery import storage

        return storage.join(cache_location(self.func, self.folder), f"{key}.json")

    def lookup(self, url: str | None, wrapper: Any) -> tuple[bool, Any]:
        if url is None or self.reset:
            return False, None
        found, value, age = _read(url, self.max_age)
        if found:
            wrapper._result_cached = True
            if self.verbose:
                print(f"'{self.name}' returned cached result: {_age_text(age)} old")
        return found, value

    def store(self, url: str | None, value: Any, wrapper: Any) -> None:
        wrapper._result_cached = False
        if url is None:
            return
        try:
            packed = _pack(value)
        except UdfSerializationError as err:
            raise CacheValueError(
                f"@fused.cache cannot store the return value of {self.name!r} "
                f"({type(value).__module__}.{type(value).__qualname__}): {err.message}. "
                "Return a cacheable value (None, numbers, str, bytes, numpy arrays, "
                "(Geo)DataFrames, Series, pyarrow Tables, shapely geometries, or lists, tuples "
                "and dicts of these), or drop @fused.cache from this function"
            ) from None
        if not self.reset and _read(url, self.max_age, decode=False)[0]:
            return  # a concurrent call stored it meanwhile: keep that one
        _write(url, packed, self.name)


def _split(settings: dict[str, Any], kwargs: dict[str, Any]) -> tuple[dict, dict]:
    merged = dict(settings)
    call = {}
    for key, value in kwargs.items():
        if key in _CONTROL:
            merged[key] = value
        else:
            call[key] = value
    return merged, call


def cache(
    func: Callable[..., Any] | None = None,
    cache_max_age: int | str | None = None,
    cache_folder_path: str = "tmp",
    concurrent_lock_timeout: int | str = 120,
    cache_reset: bool | None = None,
    cache_storage: str | None = None,
    cache_key_exclude: Iterable[str] | str | None = None,
    cache_verbose: bool | None = None,
) -> Any:
    """Decorator caching a function's return value by its arguments (see the module docstring).

    func: the function (bare ``@fused.cache``), or None for ``@fused.cache(...)``.
    cache_max_age: how long a stored value is reused: seconds or ``"10m"``, ``"24h"``, ``"7d"``
        (default None: 48 hours; 0 turns caching off). cache_folder_path: sub-folder of the cache
        (default ``"tmp"``). cache_reset: recompute and store again (default None: no).
        cache_key_exclude: parameter name(s) left out of the key, e.g. a connection object
        (default None). cache_verbose: print a line when a stored value is returned (default
        None: yes, as the SDK). concurrent_lock_timeout and cache_storage (``"auto"``,
        ``"mount"``, ``"local"``, ``"object"``): accepted for compatibility; there are no locks
        (concurrent first calls may both compute) and every storage is ``options.storage_root``.
    Each option may also be given to one call of the decorated function.
    """
    parse_max_age(cache_max_age)  # fail at decoration for a bad age
    settings = {
        "cache_max_age": cache_max_age,
        "cache_folder_path": cache_folder_path,
        "concurrent_lock_timeout": concurrent_lock_timeout,
        "cache_reset": cache_reset,
        "cache_storage": cache_storage,
        "cache_key_exclude": cache_key_exclude,
        "cache_verbose": cache_verbose,
    }

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise CallArgumentError(f"@fused.cache expects a function, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                import asyncio

                merged, call_kwargs = _split(settings, kwargs)
                call = _Call(fn, merged)
                url = await asyncio.to_thread(call.url, args, call_kwargs)
                found, value = await asyncio.to_thread(call.lookup, url, async_wrapper)
                if found:
                    return value
                value = await fn(*args, **call_kwargs)
                await asyncio.to_thread(call.store, url, value, async_wrapper)
                return value

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                merged, call_kwargs = _split(settings, kwargs)
                call = _Call(fn, merged)
                url = call.url(args, call_kwargs)
                found, value = call.lookup(url, wrapper)
                if found:
                    return value
                value = fn(*args, **call_kwargs)
                call.store(url, value, wrapper)
                return value

        wrapper._result_cached = False
        setattr(wrapper, "__fused_cached_fn", fn)
        return wrapper

    if func is not None:
        return decorate(func)
    return decorate


def cache_call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``func(*args, **kwargs)`` through :func:`cache`; cache options among ``kwargs``
    (``cache_max_age``, ``cache_reset``, ...) steer the cache and are not passed to ``func``."""
    return cache(func)(*args, **kwargs)
