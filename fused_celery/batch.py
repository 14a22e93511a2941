"""``fused.submit``: the reference SDK's batch entry point, on fused-celery's pools.

``fused.submit(udf, arg_list, ...)`` is ``udf.map(arg_list, ...)`` followed, by default, by
``collect()``: it returns the collected DataFrame (``collect=True``) or the
:class:`~fused_celery.pool.JobPool` (``collect=False``). Differences from the SDK, on purpose:
``engine`` defaults to ``options.resolved_default_engine`` (the SDK's ``"remote"`` is the Fused
server), a whitelisted ``instance_type`` works with ``collect=True`` too (the SDK raises
``NotImplementedError``), and the collected frame is not cached again on the client (each
entry's result is cached by the pool, errors never).
"""

from __future__ import annotations

import types
import warnings
from typing import Any

from fused_celery.udf import Udf
from fused_celery.udf import udf as make_udf

_EXECUTION_TYPES = ("thread_pool", "async_loop")
# cache controls of the SDK's submit that only steer its client-side cache of the collected frame
_SDK_CACHE_OPTIONS = ("cache_reset", "cache_verbose", "cache_storage")


def as_udf(udf: Any, what: str = "fused.submit") -> Udf:
    """A :class:`Udf` from a UDF, a plain ``def`` function (decorated here) or the path of a
    ``.py`` file / UDF folder (:func:`fused_celery.load`)."""
    if isinstance(udf, Udf):
        return udf
    if isinstance(udf, types.FunctionType):
        if udf.__name__ == "<lambda>":
            raise TypeError(
                f"a lambda cannot be passed to {what}; define the function with def and "
                "decorate it with @fused.udf"
            )
        return make_udf(udf)
    if isinstance(udf, str) or hasattr(udf, "__fspath__"):
        from fused_celery.udf_loader import load

        return load(udf)
    raise TypeError(
        f"{what} expects a UDF made with @fused.udf, a function, or the path of a UDF file or "
        f"folder; got {type(udf).__name__}"
    )


def submit(
    udf: Any,
    arg_list: Any,
    *,
    engine: str | None = None,
    instance_type: str | None = None,
    max_workers: int | None = None,
    n_processes_per_worker: int | None = None,
    max_retry: int = 2,
    debug_mode: bool = False,
    collect: bool = True,
    execution_type: str = "thread_pool",
    cache_max_age: int | str | None = None,
    run_cache_max_age: int | str | None = None,
    cache: bool = True,
    ignore_exceptions: bool = False,
    flatten: bool = True,
    drop_index: bool = False,
    **kwargs: Any,
) -> Any:
    """Run ``udf`` once per entry of ``arg_list``; the collected DataFrame, or the pool.

    udf: a UDF, a plain function, or the path of a UDF ``.py`` file or folder. arg_list: values
    (first parameter), dicts (keyword arguments) or a DataFrame (one entry per row).
    engine: ``"local"``, ``"remote"`` or an instance type (default
    ``options.resolved_default_engine``). instance_type: a whitelisted instance type's queue
    (``"realtime"``, the SDK's default, means none). max_workers / n_processes_per_worker /
    max_retry (default 2) / cache_max_age / cache (default True): as for ``udf.map``.
    debug_mode: run only the first entry, with ``fused.run`` on ``engine``, and return its
    result (default False). collect: wait and return
    ``pool.collect(ignore_exceptions, flatten, drop_index)`` (default True); False returns the
    :class:`~fused_celery.pool.JobPool` at once.
    execution_type: ``"thread_pool"`` or ``"async_loop"``, accepted for compatibility (both run
    the same way here). run_cache_max_age and the SDK's ``cache_reset`` / ``cache_verbose`` /
    ``cache_storage`` keyword arguments steer the SDK's client-side copy of results, which this
    project does not keep: accepted and ignored. kwargs: constant keyword arguments of every run.
    """
    if execution_type not in _EXECUTION_TYPES:
        raise ValueError(
            f"'execution_type' must be 'thread_pool' or 'async_loop', got {execution_type!r}"
        )
    del run_cache_max_age
    for name in _SDK_CACHE_OPTIONS:
        kwargs.pop(name, None)
    the_udf = as_udf(udf)
    if instance_type == "realtime":
        instance_type = None
    if debug_mode:
        if not collect:
            warnings.warn(
                "'debug_mode=True' and 'collect=False' are mutually exclusive (the result of "
                "the first run is returned directly); collect is ignored",
                stacklevel=2,
            )
        first = the_udf.entries(arg_list, kwargs)[0]
        return the_udf(
            engine=engine,
            instance_type=instance_type,
            cache_max_age=cache_max_age,
            cache=cache,
            **first,
        )
    pool = the_udf.map(
        arg_list,
        engine=engine,
        instance_type=instance_type,
        max_workers=max_workers,
        n_processes_per_worker=n_processes_per_worker,
        max_retry=max_retry,
        cache_max_age=cache_max_age,
        cache=cache,
        **kwargs,
    )
    if not collect:
        return pool
    return pool.collect(ignore_exceptions=ignore_exceptions, flatten=flatten, drop_index=drop_index)
