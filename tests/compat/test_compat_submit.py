"""``fused.submit`` and ``fused.run_async``: the current SDK's batch entry points, with the
SDK's signatures, on both engines, in a catalogue-style fan-out."""

from __future__ import annotations

import asyncio
import inspect

import compat_udfs as u
import pandas as pd
import pytest

import fused_celery as fused
from fused_celery.errors import InstanceTypeError, UdfRuntimeError

ISSUE_SIGNATURE = [
    ("engine", None),
    ("instance_type", None),
    ("max_workers", None),
    ("n_processes_per_worker", None),
    ("max_retry", 2),
    ("collect", True),
    ("cache_max_age", None),
    ("cache", True),
    ("ignore_exceptions", False),
    ("flatten", True),
    ("drop_index", False),
]


def plain_square(x: int):
    return x * x


def test_signature() -> None:
    params = inspect.signature(fused.submit).parameters
    assert list(params)[:2] == ["udf", "arg_list"]
    for name, default in ISSUE_SIGNATURE:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default, name
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_signatures_match_the_reference_sdk() -> None:
    """Every public parameter of the SDK's submit / run_async / load / cache is accepted here
    with the SDK's default, but for submit's ``engine`` (the SDK's "remote" is its server; here
    the default engine of the options)."""
    ref = pytest.importorskip("fused")
    pairs = [
        (ref.submit, fused.submit, {"engine"}),
        (ref.load, fused.load, set()),
        (ref.cache, fused.cache, set()),
    ]
    for theirs, ours, differs in pairs:
        mine = inspect.signature(ours).parameters
        for name, param in inspect.signature(theirs).parameters.items():
            if name.startswith("_") or param.kind is param.VAR_KEYWORD:
                continue
            assert name in mine, f"{theirs.__name__}: {name}"
            if name not in differs and param.default is not param.empty:
                assert mine[name].default == param.default, f"{theirs.__name__}: {name}"
    assert inspect.iscoroutinefunction(fused.run_async)
    assert inspect.iscoroutinefunction(fused.load_async)


def test_submit_collects_or_returns_the_pool(engine: str) -> None:
    frame = fused.submit(u.strip_area, [[0, 0, 1, 1], [0, 0, 2, 2]], engine=engine, scale=2.0)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index.names) == ["bounds"]  # constants (scale) are not levels
    assert frame["result"].tolist() == [2.0, 8.0]
    pool = fused.submit(u.strip_area, [[0, 0, 1, 1]], engine=engine, collect=False)
    assert isinstance(pool, fused.JobPool)
    assert pool.results() == [1.0]
    by_pos = fused.submit(u.strip_area, [[0, 0, 1, 1]], engine=engine, drop_index=True)
    assert by_pos.index.name == "arg_pos"


def test_submit_errors_and_ignore_exceptions(engine: str) -> None:
    args = [[0, 0, 1, 1], [1, 2, 3], [0, 0, 3, 1]]  # the middle entry is not bounds
    with pytest.raises(UdfRuntimeError, match="Expected 4 values"):
        fused.submit(u.strip_area, args, engine=engine, max_retry=0)
    frame = fused.submit(u.strip_area, args, engine=engine, max_retry=0, ignore_exceptions=True)
    assert frame["result"].tolist() == [1.0, 3.0]


def test_catalogue_fan_out(engine: str) -> None:
    """A UDF that fans out with fused.submit itself, submitted over several viewports."""
    frame = fused.submit(u.fanned_area, [{"bounds": [0, 0, 3, 1], "n": 3}, {"n": 2}], engine=engine)
    assert list(frame.index.names) == ["bounds", "n"]
    assert frame["result"].tolist() == pytest.approx([3.0, 0.014 * 0.010])


def test_plain_functions_paths_and_debug_mode(engine: str) -> None:
    assert fused.submit(plain_square, [2, 3], engine=engine)["result"].tolist() == [4, 9]
    folder = str(u.__file__).rsplit("/", 1)[0] + "/udf_folders/Strip_Area"
    frame = fused.submit(folder, [[0, 0, 1, 1]], engine=engine)
    assert frame["result"].iloc[0]["area"] == 1.0
    assert fused.submit(u.strip_area, [[0, 0, 1, 1], [0, 0, 9, 9]], debug_mode=True) == 1.0


def test_sdk_options_accepted() -> None:
    frame = fused.submit(
        u.strip_area,
        [[0, 0, 1, 1]],
        engine="local",
        instance_type="realtime",  # the SDK's default instance type: nothing special here
        execution_type="async_loop",
        run_cache_max_age="1h",
        cache_reset=True,
        cache_verbose=False,
        cache_storage="auto",
        cache_max_age="10m",
    )
    assert frame["result"].tolist() == [1.0]
    with pytest.raises(ValueError, match="execution_type"):
        fused.submit(u.strip_area, [[0, 0, 1, 1]], execution_type="processes")
    with pytest.raises(InstanceTypeError, match="unknown instance type 'large'"):
        fused.submit(u.strip_area, [[0, 0, 1, 1]], instance_type="large")
    with pytest.raises(TypeError, match="lambda"):
        fused.submit(lambda x: x, [1])
    with pytest.raises(ValueError, match="empty"):
        fused.submit(u.strip_area, [])


def test_run_async(engine: str) -> None:
    async def main() -> list[float]:
        return await asyncio.gather(
            fused.run_async(u.strip_area, bounds=[0, 0, 1, 1], engine=engine),
            fused.run_async(u.strip_area, bounds=[0, 0, 2, 1], engine=engine),
        )

    assert asyncio.run(main()) == [1.0, 2.0]
