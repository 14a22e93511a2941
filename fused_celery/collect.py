"""Building ``JobPool.collect()``'s DataFrame from arguments and results (pure pandas).

Rules, those of the reference SDK's ``JobPool.collect``: the index has one level per argument
given per entry (the keys of ``arg_list``'s dicts or DataFrame columns; for a plain list, the
first parameter's name), never the constant keyword arguments of ``udf.map(..., **kwargs)``.
Argument values are shown as the SDK sends them: lists, tuples, dicts and bools as JSON text,
DataFrames as JSON records, GeoDataFrames as GeoJSON, shapely geometries as WKT, numpy scalars
as Python numbers, dates as ISO text (sets as the JSON text of a list); an entry that lacks a
key another entry has shows NaN.
When every result is a DataFrame and ``flatten`` is set, the frames are concatenated and each
keeps its own row index as extra levels; otherwise results go into a ``result`` column.
``drop_index=True`` replaces the argument levels by one ``arg_pos`` level (a frame's own row
index is kept after it, as in the SDK). **Fix:** ``arg_pos`` holds each entry's original
position; the SDK renumbers positions when failures are dropped.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import numpy as np
import pandas as pd


def _json_default(value: Any) -> Any:
    """The SDK's JSON fallback for values inside arguments (numpy, sets, dates, timedeltas)."""
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", None) == 0:
        return item()
    if hasattr(value, "tolist") and hasattr(value, "ndim"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime().isoformat()
    if isinstance(value, pd.Timedelta):
        return value.total_seconds()
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def index_value(value: Any) -> Any:
    """An argument as an index label, as the reference SDK shows it (see the module docstring).

    Values with no JSON form of their own (None, str, numbers, other objects) stay as they are.
    """
    module = type(value).__module__ or ""
    if module.startswith("geopandas") and hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, pd.DataFrame):
        return value.to_json(orient="records", default_handler=str)
    if module.startswith("shapely") and hasattr(value, "wkt"):
        return value.wkt
    if isinstance(value, (set, frozenset)):  # the SDK would put a list in the index
        value = sorted(value, key=repr)
    if isinstance(value, (list, tuple, dict, bool)):
        try:
            return json.dumps(value, default=_json_default)
        except (TypeError, ValueError):
            return str(value)
    try:
        return _json_default(value)
    except TypeError:
        return value


CONSTANT_ARGS_KEY = "fused_celery:constant_args"
"""Key in a pool's UDF wire form (``metadata``) listing the constant keyword arguments of
``udf.map(..., **kwargs)``; it travels with the pool, so a reattached pool knows them too."""


def constant_args(udf_wire: dict[str, Any]) -> list[str]:
    """The constant keyword argument names recorded in a pool's UDF wire form (default [])."""
    return list((udf_wire.get("metadata") or {}).get(CONSTANT_ARGS_KEY) or [])


def arg_names(args: list[dict[str, Any]]) -> list[str]:
    """Parameter names in order of first appearance across entries."""
    names: dict[str, None] = {}
    for entry in args:
        for key in entry:
            names.setdefault(key, None)
    return list(names)


def arg_index(
    positions: list[int],
    args: list[dict[str, Any]],
    drop_index: bool,
    keys: list[str] | None = None,
) -> pd.Index:
    """The index of one row per entry at ``positions``.

    keys: the index levels (default: every key of ``args``, in order of first appearance);
    with none, or with ``drop_index``, a single ``arg_pos`` level.
    """
    names = arg_names(args) if keys is None else list(keys)
    if drop_index or not names:
        return pd.Index(positions, name="arg_pos", dtype="int64")
    # Built over every entry, then cut to the survivors, as the SDK does (so that dtypes, NaN for
    # missing keys included, do not depend on which entries failed).
    table = pd.DataFrame([{k: a[k] for k in names if k in a} for a in args], columns=names)
    table = table.iloc[list(positions)]
    columns = [table[name].map(index_value) for name in names]
    if len(names) == 1:
        return pd.Index(columns[0], name=names[0])
    return pd.MultiIndex.from_arrays(columns, names=names)


def build_frame(
    positions: list[int],
    args: list[dict[str, Any]],
    results: list[Any],
    *,
    flatten: bool = True,
    drop_index: bool = False,
    keys: list[str] | None = None,
) -> pd.DataFrame:
    """The collected DataFrame of the entries at ``positions`` with their ``results``.

    positions: original entry positions (ascending). args: every entry's arguments (indexed by
    position). results: one result per position. flatten: concatenate DataFrame results
    (default True). drop_index: index by ``arg_pos`` only (default False). keys: the argument
    levels (default: every key of ``args``; :class:`~fused_celery.pool.JobPool` passes the keys
    given per entry, leaving out constant keyword arguments).
    """
    index = arg_index(positions, args, drop_index, keys)
    if flatten and results and all(isinstance(r, pd.DataFrame) for r in results):
        return _concat_frames(index, results)
    values = pd.Series(list(results), index=index, dtype=object, name="result")
    frame = values.to_frame()
    if results and all(isinstance(r, (int, float, bool, str)) for r in results):
        frame["result"] = frame["result"].infer_objects()
    return frame


def _concat_frames(outer: pd.Index, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate ``frames`` (one per row of ``outer``), each row prefixed by its entry's
    argument levels, as ``pd.concat`` with keys does."""
    combined = pd.concat(dict(enumerate(frames)))
    codes = combined.index.codes[0]
    levels = combined.index.levels[0]
    entry = np.asarray(levels.take(codes), dtype=np.intp)
    if isinstance(outer, pd.MultiIndex):
        arrays = [outer.get_level_values(i).take(entry) for i in range(outer.nlevels)]
    else:
        arrays = [outer.take(entry)]
    inner = combined.index.nlevels - 1
    arrays += [combined.index.get_level_values(i + 1) for i in range(inner)]
    names = [*outer.names, *combined.index.names[1:]]
    combined.index = pd.MultiIndex.from_arrays(arrays, names=names)
    return combined
