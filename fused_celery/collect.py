"""Building ``JobPool.collect()``'s DataFrame from arguments and results (pure pandas).

Rules: the index has one level per parameter, named after it (list/dict values shown as JSON
strings); when every result is a DataFrame and ``flatten`` is set, the frames are concatenated and
each keeps its own row index as an extra level; otherwise results go into a ``result`` column.
``drop_index=True`` replaces the argument levels by one ``arg_pos`` level holding each entry's
original position. Positions are never renumbered when failures are dropped.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd


def index_value(value: Any) -> Any:
    """An argument as an index label: scalars as is, lists/dicts as JSON text, others as str."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, sort_keys=isinstance(value, dict), default=str)
        except (TypeError, ValueError):
            return str(value)
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", 1) == 0:
        return item()
    if isinstance(value, pd.Timestamp) or hasattr(value, "isoformat"):
        return value
    return str(value)


def arg_names(args: list[dict[str, Any]]) -> list[str]:
    """Parameter names in order of first appearance across entries."""
    names: dict[str, None] = {}
    for entry in args:
        for key in entry:
            names.setdefault(key, None)
    return list(names)


def arg_index(positions: list[int], args: list[dict[str, Any]], drop_index: bool) -> pd.Index:
    """The index of one row per entry at ``positions``."""
    if drop_index:
        return pd.Index(positions, name="arg_pos")
    names = arg_names(args)
    if not names:
        return pd.Index(positions, name="arg_pos")
    rows = [tuple(index_value(args[p].get(n)) for n in names) for p in positions]
    if len(names) == 1:
        return pd.Index([r[0] for r in rows], name=names[0])
    return pd.MultiIndex.from_tuples(rows, names=names)


def build_frame(
    positions: list[int],
    args: list[dict[str, Any]],
    results: list[Any],
    *,
    flatten: bool = True,
    drop_index: bool = False,
) -> pd.DataFrame:
    """The collected DataFrame of the entries at ``positions`` with their ``results``.

    positions: original entry positions (ascending). args: every entry's arguments (indexed by
    position). results: one result per position. flatten: concatenate DataFrame results
    (default True). drop_index: index by ``arg_pos`` only (default False).
    """
    if flatten and results and all(isinstance(r, pd.DataFrame) for r in results):
        return _concat_frames(positions, args, results, drop_index)
    index = arg_index(positions, args, drop_index)
    values = pd.Series(list(results), index=index, dtype=object, name="result")
    frame = values.to_frame()
    if results and all(isinstance(r, (int, float, bool, str)) for r in results):
        frame["result"] = frame["result"].infer_objects()
    return frame


def _concat_frames(
    positions: list[int], args: list[dict[str, Any]], frames: list[pd.DataFrame], drop_index: bool
) -> pd.DataFrame:
    names = ["arg_pos"] if drop_index or not arg_names(args) else arg_names(args)
    parts = []
    for pos, frame in zip(positions, frames):
        if drop_index or names == ["arg_pos"]:
            outer = (pos,)
        else:
            outer = tuple(index_value(args[pos].get(n)) for n in names)
        inner = frame.index
        inner_name = inner.name if inner.name is not None else None
        tuples = [(*outer, *(i if isinstance(i, tuple) else (i,))) for i in inner]
        inner_names = list(inner.names) if isinstance(inner, pd.MultiIndex) else [inner_name]
        part = frame.copy()
        if drop_index:
            part.index = pd.Index([pos] * len(frame), name="arg_pos")
        else:
            part.index = (
                pd.MultiIndex.from_tuples(tuples, names=[*names, *inner_names])
                if len(frame)
                else pd.MultiIndex.from_arrays(
                    [[]] * (len(names) + len(inner_names)), names=[*names, *inner_names]
                )
            )
        parts.append(part)
    return pd.concat(parts)
