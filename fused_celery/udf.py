"""The UDF model, the ``@udf`` decorator, calling a UDF once and ``udf.map``.

A :class:`Udf` is a pydantic model that serializes to JSON; it travels to workers as source text,
never as pickle. ``udf.map`` turns an argument list into a :class:`~fused_celery.pool.JobPool`
whose entries run on the local process pool or on the Celery cluster.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from fused_celery import codec, gc_pause
from fused_celery.errors import (
    CallArgumentError,
    UdfArgumentError,
    UdfDefinitionError,
    UdfSerializationError,
    error_from_dict,
)
from fused_celery.source import capture_source, check_syntax, signature_from_code

if TYPE_CHECKING:
    from fused_celery.pool import JobPool

RESERVED_PARAMETERS = frozenset({"arg_list", "engine", "instance_type", "cache_max_age", "cache"})
_AGE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_cache_max_age(value: int | float | str | None) -> int | None:
    """Seconds from an int or a ``"\\d+[smhd]"`` string (``"1h"`` -> 3600); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise CallArgumentError(
            "cache_max_age must be seconds or a string like '30s', '10m', '1h', '2d'"
        )
    if isinstance(value, (int, float)):
        if value < 0:
            raise CallArgumentError(f"cache_max_age must be >= 0, got {value}")
        return int(value)
    match = _AGE.match(str(value))
    if not match:
        raise CallArgumentError(
            f"cache_max_age {value!r} is not understood; use seconds or a string like "
            "'30s', '10m', '1h', '2d'"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


class Udf(BaseModel):
    """A user-defined function, as text.

    name: display name (default: the function's name). entrypoint: the function's name in
    ``code``. code: source text (captured imports/helpers, then the function with its decorator).
    parameters: default arguments merged under each call's arguments. cache_max_age: seconds a
    cached result may be reused (None: ``options.cache_max_age``). engine: default engine of this
    UDF (None: ``options.resolved_default_engine``). region, disk_size_gb, headers, metadata:
    carried with the job for the worker fleet.
    """

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    name: str
    entrypoint: str
    code: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    cache_max_age: int | None = None
    engine: str | None = None
    region: str | None = None
    disk_size_gb: int | None = None
    headers: list[Any] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    # fused.load(..., import_globals=False) turns off the attributes of __getattr__
    _import_globals: bool = PrivateAttr(default=True)

    @field_validator("cache_max_age", mode="before")
    @classmethod
    def _age(cls, value: Any) -> int | None:
        return parse_cache_max_age(value)

    @field_validator("code")
    @classmethod
    def _parses(cls, value: str) -> str:
        check_syntax(value)  # a UdfDefinitionError naming the line, not a raw SyntaxError
        return value

    def __getattr__(self, name: str) -> Any:
        """The code's top-level names as attributes (the SDK's ``import_globals``): e.g.
        ``common = fused.load("common/"); common.some_helper(...)``. The code runs once, in
        this process, the first time such a name is asked for."""
        code = self.__dict__.get("code")
        if (
            code is not None
            and not name.startswith("_")
            and name in _top_level_names(code)
            and self._import_globals
        ):
            return _code_namespace(code, self.entrypoint, self.name)[name]
        return super().__getattr__(name)  # type: ignore[misc]

    # ------------------------------------------------------------------ introspection

    @cached_property
    def signature(self) -> inspect.Signature:
        """The entrypoint's parameters, read from ``code`` without running it."""
        return signature_from_code(self.code, self.entrypoint)

    def wire(self) -> dict[str, Any]:
        """The JSON form sent to workers."""
        return self.model_dump(mode="json")

    # ------------------------------------------------------------------ argument binding

    def _params(self) -> tuple[list[str], set[str], bool]:
        names, required, var_kw = [], set(), False
        for p in self.signature.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
                continue
            names.append(p.name)
            if p.default is p.empty:
                required.add(p.name)
        return names, required, var_kw

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments of one call from positional and keyword arguments.

        Raises ``TypeError`` for too many positional arguments, unknown names (unless the UDF
        takes ``**kwargs``) and missing required parameters.
        """
        names, required, var_kw = self._params()
        if len(args) > len(names):
            raise CallArgumentError(
                f"UDF {self.name} takes {len(names)} positional argument(s) {names}, "
                f"got {len(args)}"
            )
        bound = dict(zip(names, args))
        for key in kwargs:
            if key in bound:
                raise CallArgumentError(f"UDF {self.name} got multiple values for argument {key!r}")
        bound.update(kwargs)
        self._check_names(bound, names, required, var_kw)
        return bound

    def _check_names(
        self,
        bound: Mapping[str, Any],
        names: list[str],
        required: set[str],
        var_kw: bool,
        where: str = "",
    ) -> None:
        if not var_kw:
            unknown = [k for k in bound if k not in names]
            if unknown:
                raise CallArgumentError(
                    f"UDF {self.name} got unexpected keyword argument(s) {unknown}{where}; "
                    f"it takes {names}"
                )
        missing = sorted(required - set(bound) - set(self.parameters))
        if missing:
            raise CallArgumentError(
                f"UDF {self.name} is missing required argument(s) {missing}{where}"
            )

    def entries(self, arg_list: Any, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """Keyword arguments of every entry of ``udf.map(arg_list, **kwargs)``.

        arg_list: list/tuple/range of values (bound to the first parameter), of dicts (keyword
        arguments), or a ``pd.DataFrame`` (one entry per row). Raises ``ValueError`` when empty and
        ``TypeError`` for generators, strings and arguments the UDF does not take.
        """
        rows = _normalize_arg_list(arg_list)
        names, required, var_kw = self._params()
        if all(isinstance(r, dict) for r in rows):
            entries = [dict(r) for r in rows]
        elif any(isinstance(r, dict) for r in rows):
            raise CallArgumentError(
                "arg_list mixes dicts and plain values; use one form for every entry"
            )
        else:
            if not names:
                raise CallArgumentError(
                    f"UDF {self.name} takes no parameters, so arg_list cannot bind"
                )
            first = names[0]
            entries = [{first: r} for r in rows]
        for key in kwargs:
            if any(key in e for e in entries):
                raise CallArgumentError(
                    f"argument {key!r} is given both in arg_list and as a constant keyword "
                    "argument; give it in one place"
                )
        for i, e in enumerate(entries):
            self._check_names({**kwargs, **e}, names, required, var_kw, where=f" (entry {i})")
        return [{**kwargs, **e} for e in entries]

    # ------------------------------------------------------------------ running

    def __call__(
        self,
        *args: Any,
        engine: str | None = None,
        instance_type: str | None = None,
        cache_max_age: int | str | None = None,
        cache: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Run the UDF once and return its result.

        engine: ``"local"`` (in this process), ``"remote"`` or an instance type (one task on
        the cluster); None: the UDF's engine or ``options.resolved_default_engine``.
        cache_max_age / cache: result reuse on the cluster (default: reuse within
        ``cache_max_age``). Raises :class:`~fused_celery.errors.UdfRuntimeError` on failure.
        """
        from fused_celery.engines import resolve_engine

        kind, _ = resolve_engine(engine or self.engine, instance_type)
        bound = self.bind(args, kwargs)
        if kind == "local":
            from fused_celery.execute import run_call

            outcome = run_call(self.wire(), bound, encode_result=False)
            if outcome.get("logs"):
                print(outcome["logs"], end="")
            if not outcome["ok"]:
                raise error_from_dict(outcome["error"])
            return outcome["value"]
        pool = self.map(
            [bound],
            engine=engine or self.engine,
            instance_type=instance_type,
            cache_max_age=cache_max_age,
            cache=cache,
            max_retry=0,
            _quiet=True,
        )
        return pool.results()[0]

    def map(
        self,
        arg_list: Any,
        *,
        engine: str | None = None,
        max_workers: int | None = None,
        n_processes_per_worker: int | None = None,
        worker_concurrency: int | None = None,
        max_retry: int = 2,
        instance_type: str | None = None,
        cache_max_age: int | str | None = None,
        cache: bool = True,
        _quiet: bool = False,
        **kwargs: Any,
    ) -> JobPool:
        """Run the UDF once per entry of ``arg_list``; returns a :class:`JobPool` at once.

        arg_list: values (first parameter), dicts (keyword arguments) or a DataFrame (rows).
        engine: ``"local"`` (process pool), ``"remote"`` (cluster) or an instance type name
            (its queue); default ``options.resolved_default_engine``.
        max_workers: cap on worker invocations running at once, each running
            ``n_processes_per_worker`` entries, so at most ``max_workers * n_processes_per_worker``
            entries run together (default: local = CPU count, remote = none).
        n_processes_per_worker (alias worker_concurrency): entries per worker invocation, run
            in parallel inside it (default 1). max_retry: automatic retries of failed entries
            (default 2). instance_type: run on that instance type's queue (in the UDF's
            ``region`` when it has one; its ``disk_size_gb`` is checked against the queue's
            group at submit).
        cache_max_age / cache: reuse results of identical calls (errors are never cached).
        kwargs: constant keyword arguments merged into every entry.
        """
        from fused_celery.engines import PoolSpec, make_engine, resolve_engine
        from fused_celery.pool import JobPool

        kind, queue = resolve_engine(engine or self.engine, instance_type, region=self.region)
        batch = _batch_size(n_processes_per_worker, worker_concurrency)
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise CallArgumentError(
                f"max_workers must be a positive integer or None, got {max_workers!r}"
            )
        if isinstance(max_retry, bool) or not isinstance(max_retry, int) or max_retry < 0:
            raise CallArgumentError(f"max_retry must be an integer >= 0, got {max_retry!r}")
        with gc_pause.paused():  # O(n) acyclic objects: see gc_pause
            const = _encode_constants(kwargs)
            entries = self.entries(arg_list, kwargs)
            encoded = _encode_entries(entries, const, set(kwargs))
            age = parse_cache_max_age(cache_max_age)
            wire = self.wire()
            if kwargs:  # so that collect()/arg_df() index by the per-entry arguments only
                from fused_celery.collect import CONSTANT_ARGS_KEY  # pandas: not at import time

                wire["metadata"] = {**wire["metadata"], CONSTANT_ARGS_KEY: sorted(kwargs)}
            spec = PoolSpec(
                udf=wire,
                args=entries,
                encoded=encoded,
                constants=const,
                max_workers=max_workers,
                batch_size=batch,
                max_retry=max_retry,
                cache=cache,
                cache_max_age=age if age is not None else self.cache_max_age,
                queue=queue,
                disk_size_gb=self.disk_size_gb,
            )
            pool = JobPool(make_engine(kind, spec))
            pool._submit(quiet=_quiet)
            return pool

    async def map_async(self, arg_list: Any, **options: Any) -> JobPool:
        """:meth:`map` without blocking the event loop; same options."""
        return await asyncio.to_thread(self.map, arg_list, **options)

    def __repr__(self) -> str:
        return f"<Udf {self.name} ({self.entrypoint})>"


@functools.lru_cache(maxsize=64)
def _top_level_names(code: str) -> frozenset[str]:
    """Names bound at the top level of ``code`` (defs, classes, assignments, imports)."""
    import ast

    names: set[str] = set()
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name.split(".")[0]) for a in node.names)
    return frozenset(names)


@functools.lru_cache(maxsize=16)
def _code_namespace(code: str, entrypoint: str, name: str) -> dict[str, Any]:
    """The globals of ``code`` run once as a module (the entrypoint's decorator removed)."""
    from fused_celery.execute import compile_udf

    namespace: dict[str, Any] = {"__name__": f"fused_udf_{name}", "__builtins__": __builtins__}
    exec(compile_udf(code, entrypoint, name), namespace)
    return namespace


def _batch_size(n_processes_per_worker: int | None, worker_concurrency: int | None) -> int:
    if (
        n_processes_per_worker is not None
        and worker_concurrency is not None
        and (n_processes_per_worker != worker_concurrency)
    ):
        raise CallArgumentError(
            "n_processes_per_worker and worker_concurrency are the same option; give one"
        )
    value = n_processes_per_worker if n_processes_per_worker is not None else worker_concurrency
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CallArgumentError(f"n_processes_per_worker must be a positive integer, got {value!r}")
    return value


def _normalize_arg_list(arg_list: Any) -> list[Any]:
    if isinstance(arg_list, Iterator):
        raise CallArgumentError(
            "arg_list is a generator/iterator, which can only be read once; pass a list "
            "(for example list(...)) so that every entry can be retried and shown"
        )
    if isinstance(arg_list, (str, bytes)):
        raise CallArgumentError(
            "arg_list is a string; pass a list of values, a list of dicts or a DataFrame"
        )
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        pd = None
    if pd is not None and isinstance(arg_list, pd.DataFrame):
        rows = [{str(k): _plain(v) for k, v in row.items()} for row in arg_list.to_dict("records")]
    elif pd is not None and isinstance(arg_list, pd.Series):
        rows = [_plain(v) for v in arg_list.tolist()]
    elif isinstance(arg_list, (list, tuple, range)):
        rows = list(arg_list)
    elif hasattr(arg_list, "tolist") and hasattr(arg_list, "ndim"):
        rows = list(arg_list.tolist())
    else:
        raise CallArgumentError(
            f"arg_list must be a list, tuple, range or DataFrame, got {type(arg_list).__name__}"
        )
    if not rows:
        raise CallArgumentError("arg_list is empty; give at least one entry")
    return rows


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", 1) == 0:
        return item()
    return value


def _encode_constants(kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        return codec.encode_kwargs(kwargs, what="constant keyword argument")
    except UdfSerializationError as err:
        raise UdfArgumentError(err.message, child_exception_class="TypeError") from None


def _encode_entries(
    entries: list[dict[str, Any]], const: dict[str, Any], const_keys: set[str]
) -> list[dict[str, Any]]:
    out = []
    for i, entry in enumerate(entries):
        own = {k: v for k, v in entry.items() if k not in const_keys}
        try:
            enc = codec.encode_kwargs(own, what=f"entry {i}: argument")
        except UdfSerializationError as err:
            raise UdfArgumentError(err.message, child_exception_class="TypeError") from None
        out.append({**const, **enc})
    return out


def udf(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    cache_max_age: int | str | None = None,
    engine: str | None = None,
    region: str | None = None,
    disk_size_gb: int | None = None,
    default_parameters: dict[str, Any] | None = None,
    headers: list[Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """Decorator turning a function into a :class:`Udf`; usable bare or with options.

    name: display name (default: function name). cache_max_age: int seconds or ``"1h"``-style.
    engine: default engine. region, disk_size_gb, headers, metadata: carried with jobs.
    default_parameters: defaults merged under each call's arguments.
    """

    def wrap(func: Callable[..., Any], _depth: int = 0) -> Udf:
        # warnings point at the user's decorator line: one frame further up for the bare form
        code = capture_source(func, stacklevel=3 + _depth)
        params = inspect.signature(func).parameters
        reserved = sorted(RESERVED_PARAMETERS & set(params))
        if reserved:
            warnings.warn(
                f"UDF {func.__name__} has parameter(s) {reserved} whose names are reserved by "
                "udf.map / udf(...) options; pass them inside arg_list dicts or rename them",
                stacklevel=2 + _depth,
            )
        return Udf(
            name=name or func.__name__,
            entrypoint=func.__name__,
            code=code,
            parameters=dict(default_parameters or {}),
            cache_max_age=cache_max_age,
            engine=engine,
            region=region,
            disk_size_gb=disk_size_gb,
            headers=list(headers or []),
            metadata=dict(metadata or {}),
        )

    if fn is not None:
        if not callable(fn) or isinstance(fn, Udf):
            raise UdfDefinitionError(f"@udf expects a function, got {type(fn).__name__}")
        return wrap(fn, 1)
    return wrap


def udf_from_code(code: str, *, entrypoint: str | None = None, name: str | None = None) -> Udf:
    """A :class:`Udf` from source text (for code that is not in a file, e.g. a plain REPL).

    entrypoint: function to call (default: the last top-level ``def`` in ``code``).
    """
    import ast

    defs = [n.name for n in check_syntax(code).body if isinstance(n, ast.FunctionDef)]
    if not defs:
        raise UdfDefinitionError("the code defines no function; write a def")
    entry = entrypoint or defs[-1]
    if entry not in defs:
        raise UdfDefinitionError(f"the code defines no function {entry!r}; it defines {defs}")
    return Udf(name=name or entry, entrypoint=entry, code=code)


def run(udf_: Udf, *args: Any, engine: str | None = None, **kwargs: Any) -> Any:
    """``fused.run(udf, **kwargs)``: run ``udf`` once, like ``udf(*args, engine=..., **kwargs)``.

    udf_: a UDF made with ``@fused.udf``. engine: as for calling the UDF (default None: the
    UDF's engine or ``options.resolved_default_engine``). kwargs: the UDF's arguments and the
    call options ``instance_type``, ``cache_max_age``, ``cache``.
    """
    if not isinstance(udf_, Udf):
        raise CallArgumentError(
            f"fused.run expects a UDF made with @fused.udf, got {type(udf_).__name__}"
        )
    return udf_(*args, engine=engine, **kwargs)


async def run_async(udf_: Udf, *args: Any, engine: str | None = None, **kwargs: Any) -> Any:
    """``await fused.run_async(udf, **kwargs)``: :func:`run` without blocking the event loop
    (the call runs in a worker thread); same arguments."""
    return await asyncio.to_thread(run, udf_, *args, engine=engine, **kwargs)
