"""udf.map's arguments and bad input: arg_list forms, conflicts, entries that fail alone.

Every pool test runs through the ``engine`` fixture, so adding ``"remote"`` to its params runs the
same assertions on a Celery cluster. Entries coordinate with the test through files in a tmp
directory (``gated`` waits for a release file, ``flaky`` leaves markers, ``count_runs`` appends
lines), never through process ids, so nothing here depends on where an entry runs — except the
tests named ``test_local_*``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import udfs_sample as s
from pool_helpers import tail_lines

import fused_celery as fused
from fused_celery.errors import (
    UdfArgumentError,
    UdfDefinitionError,
    UdfSerializationError,
    UdfTimeoutError,
    UdfWorkerLostError,
)
from fused_celery.options import options


# ----------------------------------------------------------------------------- arg_list
@pytest.mark.parametrize(
    "arg_list",
    [[1, 2, 3], range(1, 4), (1, 2, 3), pd.Series([1, 2, 3])],
    ids=["list", "range", "tuple", "series"],
)
def test_arg_list_of_values_binds_the_first_parameter(engine: str, arg_list) -> None:
    pool = s.add.map(arg_list, engine=engine)
    assert pool.results() == [11, 12, 13]
    assert pool.arg_df()["x"].tolist() == [1, 2, 3]


def test_arg_list_of_dicts_gives_keyword_arguments(engine: str) -> None:
    pool = s.add.map([{"x": 1, "y": 2}, {"y": 5, "x": 3}, {"x": 4}], engine=engine)
    assert pool.results() == [3, 8, 14]


def test_arg_list_dataframe_gives_one_entry_per_row(engine: str) -> None:
    frame = pd.DataFrame({"x": [1, 2], "y": [30, 40]})
    pool = s.add.map(frame, engine=engine)
    assert pool.n_jobs == 2
    assert pool.results() == [31, 42]
    assert pool[0].args == {"x": 1, "y": 30}
    assert type(pool[0].args["x"]) is int  # numpy scalars become plain values


def test_constant_kwargs_are_merged_into_every_entry(engine: str) -> None:
    assert s.add.map([1, 2], y=100, engine=engine).results() == [101, 102]
    assert s.add.map([{"x": 1}, {"x": 2}], y=5, engine=engine).results() == [6, 7]
    frame = pd.DataFrame({"x": [1, 2]})
    assert s.add.map(frame, y=-1, engine=engine).results() == [0, 1]


def test_arg_list_conflicts_and_unknown_names(engine: str) -> None:
    with pytest.raises(TypeError, match="both in arg_list and as a constant"):
        s.add.map([{"x": 1, "y": 2}], y=3, engine=engine)
    with pytest.raises(TypeError, match="unexpected"):
        s.add.map([1], z=3, engine=engine)
    with pytest.raises(TypeError, match="missing required"):
        s.add.map([{"y": 1}], engine=engine)
    with pytest.raises(TypeError, match="mixes dicts"):
        s.add.map([{"x": 1}, 2], engine=engine)
    with pytest.raises(TypeError, match="string"):
        s.add.map("123", engine=engine)
    with pytest.raises(TypeError, match="arg_list must be"):
        s.add.map(5, engine=engine)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "empty",
    [[], (), range(0), pd.DataFrame(), pd.DataFrame({"x": []})],
    ids=["list", "tuple", "range", "frame", "frame-no-rows"],
)
def test_empty_arg_list(engine: str, empty) -> None:
    with pytest.raises(ValueError, match="empty"):
        s.square.map(empty, engine=engine)


@pytest.mark.parametrize(
    "make", [lambda: (i for i in range(3)), lambda: iter([1, 2]), lambda: map(int, "12")]
)
def test_generator_arg_list(engine: str, make) -> None:
    with pytest.raises(TypeError, match="generator"):
        s.square.map(make(), engine=engine)


def _with_star_args(x, *rest):
    return x


@pytest.mark.parametrize(
    ("fn", "match"),
    [(lambda x: x, "lambda"), (abs, "builtin"), (len, "builtin"), (_with_star_args, r"\*rest")],
    ids=["lambda", "abs", "len", "star-args"],
)
def test_functions_that_cannot_be_udfs(fn, match: str) -> None:
    with pytest.raises(UdfDefinitionError, match=match) as info:
        fused.udf(fn)
    assert isinstance(info.value, TypeError)


def test_argument_that_does_not_coerce_fails_its_entry_only(engine: str) -> None:
    pool = s.square.map([1, "abc", 3], engine=engine, max_retry=0)
    pool.wait()
    assert pool.status().to_dict() == {"success": 2, "error": 1}
    assert pool.success() == {0: 1, 2: 9}
    err = pool.errors()[1]
    assert isinstance(err, UdfArgumentError)
    assert "'x'" in err.message and "'abc'" in err.message and "type int" in err.message


def test_constant_kwarg_that_is_not_json_able(engine: str) -> None:
    with pytest.raises(UdfArgumentError) as info:
        s.add.map([1, 2], y=object(), engine=engine)
    assert isinstance(info.value, TypeError)
    assert "'y'" in str(info.value) and "builtins.object" in str(info.value)
    with pytest.raises(TypeError, match=r"entry 1.*'x'.*builtins.set"):
        s.echo.map([1, {2}], engine=engine)


def test_unencodable_result_fails_its_entry_only(engine: str) -> None:
    pool = s.unencodable.map([0, 1, 2], engine=engine, max_retry=0)
    pool.wait()
    assert pool.status().to_dict() == {"success": 2, "error": 1}
    err = pool.errors()[1]
    assert isinstance(err, UdfSerializationError)
    assert "builtins.set" in err.message
    assert pool.success() == {0: 0, 2: 2}


@pytest.mark.parametrize("max_retry", [0, 1])
def test_entry_that_kills_its_process_fails_alone(engine: str, max_retry: int) -> None:
    # many tiny entries: they travel in batches, yet only the killer may fail
    pool = s.die_on.map(list(range(40)), bad=25, engine=engine, max_retry=max_retry)
    pool.wait()
    errors = pool.errors()
    assert list(errors) == [25], {k: str(v) for k, v in errors.items()}
    assert isinstance(errors[25], UdfWorkerLostError)
    assert "died" in errors[25].message
    assert pool.status().to_dict() == {"success": 39, "error": 1}
    assert pool.results(return_exceptions=True)[:25] == list(range(25))


def test_entry_that_kills_its_process_in_a_batch(engine: str) -> None:
    pool = s.die_on.map(list(range(8)), bad=5, engine=engine, max_retry=0, n_processes_per_worker=4)
    pool.wait()
    assert list(pool.errors()) == [5]
    assert isinstance(pool.errors()[5], UdfWorkerLostError)
    assert pool.success() == {i: i for i in range(8) if i != 5}


def test_timeout_entry_status_and_retry(
    engine: str, work: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(options, "task_time_limit", 2.0)
    pool = s.slow_once.map([0, 1], path=str(work), engine=engine, max_retry=0)
    pool.wait()
    assert pool.status().to_dict() == {"success": 1, "timeout": 1}
    assert pool[1].status == "timeout"
    err = pool.errors()[1]
    assert isinstance(err, UdfTimeoutError)
    assert pool.any_failed() and not pool.all_succeeded()
    pool.tail()
    lines = {int(m["pos"]): m for m in tail_lines(capsys.readouterr().out)}
    assert lines[1]["status"] == "timeout"
    pool.retry()  # timeout -> pending -> running -> success
    assert "timeout" not in pool.status()
    assert pool.results() == [0, 1]
