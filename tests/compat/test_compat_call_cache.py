"""``@fused.cache``: keys, ages, resets, values, concurrency, and use inside UDFs on both
engines (workers share the cache through ``options.storage_root``)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import compat_udfs as u
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import fused_celery as fused
from fused_celery import storage
from fused_celery.call_cache import cache_location, parse_max_age
from fused_celery.errors import CacheValueError
from fused_celery.options import options


@pytest.fixture
def folder() -> Iterator[str]:
    """A cache folder of its own under the shared storage root, removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    storage.delete_prefix(storage.join(options.storage_root, "fused-cache", name))


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[tuple[object, list[int]]]:
    calls: list[int] = []

    @fused.cache
    def square(x: int, y: int = 0, conn: object = None):
        calls.append(x)
        return x * x + y

    yield square, calls


def test_max_age_forms() -> None:
    assert parse_max_age("10m") == 600 and parse_max_age("24h") == 86400
    assert parse_max_age("7d") == 7 * 86400 and parse_max_age(30) == 30
    assert parse_max_age(None) == 48 * 3600  # the SDK's default
    with pytest.raises(ValueError, match="not understood"):
        parse_max_age("soon")
    with pytest.raises(ValueError, match="not understood"):

        @fused.cache(cache_max_age="1 week")
        def never():
            return 1


def test_caches_by_arguments_bound_to_the_signature(counted, folder: str) -> None:
    square, calls = counted
    assert square(3, cache_folder_path=folder, cache_verbose=False) == 9
    assert square(x=3, y=0, cache_folder_path=folder) == 9  # same call once bound
    assert square(4, cache_folder_path=folder) == 16
    assert calls == [3, 4]
    assert square._result_cached is False
    square(4, cache_folder_path=folder)
    assert square._result_cached is True and calls == [3, 4]


def test_reset_is_per_call(counted, folder: str) -> None:
    square, calls = counted
    square(2, cache_folder_path=folder)
    square(2, cache_folder_path=folder, cache_reset=True)
    square(2, cache_folder_path=folder)  # **Fix:** the reset does not stick
    assert calls == [2, 2]


def test_max_age_expires_and_zero_turns_caching_off(counted, folder: str) -> None:
    square, calls = counted
    square(5, cache_folder_path=folder, cache_max_age=1)
    time.sleep(1.2)
    square(5, cache_folder_path=folder, cache_max_age=1)
    square(5, cache_folder_path=folder, cache_max_age="1h")
    square(6, cache_folder_path=folder, cache_max_age=0)
    square(6, cache_folder_path=folder, cache_max_age=0)
    assert calls == [5, 5, 6, 6]


def test_key_exclude(folder: str) -> None:
    calls = []

    @fused.cache(cache_key_exclude=["conn"], cache_folder_path=folder)
    def query(sql: str, conn: object):
        calls.append(sql)
        return len(sql)

    assert query("select 1", object()) == query("select 1", object()) == 8
    assert calls == ["select 1"]


def test_prints_when_returning_a_stored_value(
    counted, folder: str, capsys: pytest.CaptureFixture[str]
) -> None:
    square, _ = counted
    square(7, cache_folder_path=folder)
    square(7, cache_folder_path=folder)
    assert "'square' returned cached result: 0s old" in capsys.readouterr().out
    square(7, cache_folder_path=folder, cache_verbose=False)
    assert capsys.readouterr().out == ""


def test_values_round_trip(folder: str) -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    values = {
        "none": None,
        "tuple": (1, "two", [3.0]),
        "dict": {"k": [1, 2], 3: "int key"},
        "bytes": b"\x00\x01",
        "array": np.arange(6).reshape(2, 3),
        "frame": frame,
        "series": pd.Series([1.5, 2.5], name="s"),
        "gdf": gpd.GeoDataFrame({"v": [1]}, geometry=[shapely.box(0, 0, 1, 1)], crs=3857),
        "geometry": shapely.box(0, 0, 1, 1),
        "mixed": (frame, {"n": 2}),
    }

    @fused.cache(cache_folder_path=folder, cache_verbose=False)
    def give(name: str):
        return values[name]

    for name, value in values.items():
        give(name)
        again = give(name)
        assert give._result_cached is True, name
        if isinstance(value, gpd.GeoDataFrame):
            assert again.crs == value.crs and again.geometry.iloc[0].equals(value.geometry.iloc[0])
        elif isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(again, value)
        elif isinstance(value, pd.Series):
            pd.testing.assert_series_equal(again, value)
        elif isinstance(value, np.ndarray):
            assert np.array_equal(again, value)
        elif name == "mixed":
            pd.testing.assert_frame_equal(again[0], frame)
            assert again[1] == {"n": 2} and isinstance(again, tuple)
        elif name == "geometry":
            assert again.equals(value)
        else:
            assert again == value and type(again) is type(value), name


def test_an_uncacheable_value_is_a_clear_error(folder: str) -> None:
    @fused.cache(cache_folder_path=folder)
    def lock():
        return threading.Lock()

    with pytest.raises(CacheValueError, match="cannot store the return value of 'lock'"):
        lock()


def test_errors_are_not_cached(folder: str) -> None:
    calls = []

    @fused.cache(cache_folder_path=folder)
    def flaky(x: int):
        calls.append(x)
        if len(calls) == 1:
            raise RuntimeError("first time")
        return x

    with pytest.raises(RuntimeError):
        flaky(1)
    assert flaky(1) == 1 and calls == [1, 1]


def test_concurrent_first_calls_store_one_whole_value(folder: str) -> None:
    started = threading.Barrier(4)

    @fused.cache(cache_folder_path=folder, cache_verbose=False)
    def slow(x: int):
        started.wait(timeout=10)
        return pd.DataFrame({"x": range(10_000)}) * x

    threads = [threading.Thread(target=slow, args=(2,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    location = cache_location(slow, folder)
    files = storage.list_files(location)
    assert len(files) == 1 and files[0].endswith(".json")  # no temporary files left
    assert slow(2)["x"].sum() == 2 * sum(range(10_000))


def test_async_functions(folder: str) -> None:
    import asyncio

    calls = []

    @fused.cache(cache_folder_path=folder, cache_verbose=False)
    async def fetch(x: int):
        calls.append(x)
        return x + 1

    assert asyncio.run(fetch(1)) == asyncio.run(fetch(1)) == 2
    assert calls == [1]


def test_stored_under_the_storage_root(folder: str) -> None:
    @fused.cache(cache_folder_path=folder)
    def one():
        return 1

    one()
    location = cache_location(one, folder)
    assert location.startswith(storage.normalize(options.storage_root))
    assert len(storage.list_files(location)) == 1
    assert fused.cache_call(one, cache_folder_path=folder) == 1


def test_inside_udfs_on_both_engines(engine: str, folder: str, tmp_path: Path) -> None:
    """The catalogue pattern: a @fused.cache helper in a UDF's module; entries in worker
    processes share one cache, so each distinct bounds is computed once."""
    work = tmp_path / "markers"
    work.mkdir()
    boxes = [[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 1, 1]]
    first = u.cached_area.map(
        boxes, work_dir=str(work), folder=folder, engine=engine, max_workers=1, cache=False
    ).results()
    assert first == [1.0, 4.0, 1.0, 4.0, 1.0]
    assert len(list(work.iterdir())) == 2
    again = fused.submit(
        u.cached_area, boxes[:2], work_dir=str(work), folder=folder, engine=engine, cache=False
    )
    assert again["result"].tolist() == [1.0, 4.0]
    assert len(list(work.iterdir())) == 2  # nothing computed again
