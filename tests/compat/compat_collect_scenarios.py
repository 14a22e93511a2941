"""``collect()`` shapes run the same way on the reference SDK and on fused-celery.

Imported by ``test_compat_collect_reference.py`` (with ``fused_celery``) and run as a script by
it with the reference SDK (``python compat_collect_scenarios.py OUT.json``, environment
``COMPAT_FUSED=fused``), which writes :func:`describe` of every scenario to ``OUT.json``. The
UDFs import what they use inside their bodies, so that both SDKs can run them.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import pandas as pd

fused = importlib.import_module(os.environ.get("COMPAT_FUSED", "fused_celery"))


@fused.udf
def add(x: int, y: int = 0):
    return x + y


@fused.udf
def text(x, flag: bool = False):
    return "ok"


@fused.udf
def rows(x: int, y: int = 0):
    import pandas as pd

    return pd.DataFrame({"v": [x, x + y]})


@fused.udf
def named_rows(x: int):
    import pandas as pd

    return pd.DataFrame({"v": [x, 2 * x]}, index=pd.Index(["a", "b"], name="k"))


@fused.udf
def fail_on_two(x: int):
    if x == 2:
        raise ValueError("two")
    return x * 10


# name -> (udf, arg_list, constant kwargs, collect kwargs)
SCENARIOS: dict[str, tuple[Any, Any, dict[str, Any], dict[str, Any]]] = {
    "scalars": (add, [1, 2, 3], {}, {}),
    "scalars_constant": (add, [1, 2, 3], {"y": 2}, {}),
    "dicts": (add, [{"x": 1, "y": 2}, {"x": 3, "y": 4}], {}, {}),
    "dicts_partial_keys": (add, [{"x": 1}, {"x": 3, "y": 4}], {}, {}),
    "dicts_constant": (text, [{"x": 1}, {"x": 2}], {"flag": True}, {}),
    "dataframe_arg_list": (add, pd.DataFrame({"x": [1, 2], "y": [5, 6]}), {}, {}),
    "dataframe_arg_list_constant": (add, pd.DataFrame({"x": [1, 2]}), {"y": 3}, {}),
    "list_values": (text, [[1, 2], [3]], {}, {}),
    "dict_values": (text, [{"x": {"a": 1}}, {"x": {"b": [2]}}], {}, {}),
    "bool_values": (text, [{"x": 1, "flag": True}, {"x": 2, "flag": False}], {}, {}),
    "str_values": (text, ["a", "b"], {}, {}),
    "float_values": (text, [1.5, 2.5], {}, {}),
    "dataframe_values": (text, [pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [2]})], {}, {}),
    "frames": (rows, [1, 2], {}, {}),
    "frames_constant": (rows, [1, 2], {"y": 1}, {}),
    "frames_dicts": (rows, [{"x": 1, "y": 2}, {"x": 3, "y": 4}], {}, {}),
    "frames_named_index": (named_rows, [1, 2], {}, {}),
    "frames_flatten_false": (rows, [1, 2], {}, {"flatten": False}),
    "frames_drop_index": (rows, [1, 2], {}, {"drop_index": True}),
    "frames_constant_drop_index": (rows, [1, 2], {"y": 1}, {"drop_index": True}),
    "scalars_drop_index": (add, [1, 2, 3], {"y": 2}, {"drop_index": True}),
    "dicts_flatten_false": (add, [{"x": 1, "y": 2}], {}, {"flatten": False}),
    "errors_ignored": (fail_on_two, [1, 2, 3], {}, {"ignore_exceptions": True}),
    "errors_ignored_drop_index": (
        fail_on_two,
        [1, 2, 3],
        {},
        {"ignore_exceptions": True, "drop_index": True},
    ),
}

# Where fused-celery differs from the reference on purpose (API.md "Fix:").
KNOWN_DIFFERENCES = {
    # the reference renumbers positions after dropping failures: [0, 1]; we keep [0, 2]
    "errors_ignored_drop_index": "index_values",
}


def _label(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_label(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", None) == 0:
        return _label(item())
    return value


def _cell(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return {"frame": value.reset_index(drop=True).to_dict("list")}
    return _label(value)


def describe(frame: pd.DataFrame) -> dict[str, Any]:
    """What is compared: index kind, level names and labels, columns, dtypes and cells."""
    index = frame.index
    return {
        "index_kind": "MultiIndex" if isinstance(index, pd.MultiIndex) else "Index",
        "index_names": [None if n is None else str(n) for n in index.names],
        "index_values": [_label(v) for v in index.tolist()],
        "columns": [str(c) for c in frame.columns],
        "dtypes": [str(t) for t in frame.dtypes],
        "values": {str(c): [_cell(v) for v in frame[c].tolist()] for c in frame.columns},
    }


def run_all(
    map_kwargs: dict[str, Any], only: Callable[[str], bool] = lambda name: True
) -> dict[str, Any]:
    """:func:`describe` of every scenario's ``collect()``, with ``map_kwargs`` given to each
    ``udf.map`` (engine, cache, max_retry, ...)."""
    out = {}
    for name, (udf, arg_list, constants, collect_kwargs) in SCENARIOS.items():
        if not only(name):
            continue
        pool = udf.map(arg_list, **map_kwargs, **constants)
        out[name] = describe(pool.collect(**collect_kwargs))
    return out


def _logs_df_columns(map_kwargs: dict[str, Any]) -> list[str]:
    pool = add.map([1, 2, 3], **map_kwargs, y=2)
    pool.wait()
    return [str(c) for c in pool.logs_df().columns]


def main(path: str) -> None:
    """Run every scenario on the reference SDK's local engine and write the JSON to ``path``."""
    fused.options.no_login = True  # offline: never log in or ask for credentials
    fused.options.show.enable_tqdm = False
    from fused.core.threading_utils import isolate_streams_per_thread

    map_kwargs = {"engine": "local", "cache": False, "max_retry": 0}
    with isolate_streams_per_thread():  # see benchmarks/_reference_runner.py
        result = {
            "version": fused.__version__,
            "scenarios": run_all(map_kwargs),
            "logs_df_columns": _logs_df_columns(map_kwargs),
        }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
