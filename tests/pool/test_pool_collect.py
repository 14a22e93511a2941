"""JobPool.collect / df: the index and flattening of results (API.md §2, seed 001).

Every pool test runs through the ``engine`` fixture, so adding ``"remote"`` to its params runs the
same assertions on a Celery cluster. Entries coordinate with the test through files in a tmp
directory (``gated`` waits for a release file, ``flaky`` leaves markers, ``count_runs`` appends
lines), never through process ids, so nothing here depends on where an entry runs — except the
tests named ``test_local_*``.
"""

from __future__ import annotations

import pandas as pd
import pytest
import udfs_sample as s

from fused_celery.errors import (
    UdfRuntimeError,
)


# ----------------------------------------------------------------------------- collect
def test_collect_scalar_results(engine: str) -> None:
    df = s.square.map([1, 2, 3], engine=engine).collect()
    assert list(df.columns) == ["result"]
    assert df.index.name == "x" and df.index.tolist() == [1, 2, 3]
    assert df["result"].tolist() == [1, 4, 9]


def test_collect_index_has_one_level_per_parameter(engine: str) -> None:
    df = s.add.map([{"x": 1, "y": 2}, {"x": 3, "y": 4}], engine=engine).collect()
    assert list(df.index.names) == ["x", "y"]
    assert df.index.tolist() == [(1, 2), (3, 4)]
    assert df["result"].tolist() == [3, 7]


def test_collect_list_arguments_are_json_strings(engine: str) -> None:
    df = s.echo.map([[1, 2], [3]], engine=engine).collect()
    assert df.index.name == "x" and df.index.tolist() == ["[1, 2]", "[3]"]
    assert df["result"].tolist() == [[1, 2], [3]]


def test_collect_flattens_dataframes_keeping_their_row_index(engine: str) -> None:
    pool = s.frame_of.map([1, 2], engine=engine)
    df = pool.collect()
    assert list(df.columns) == ["value"]
    assert list(df.index.names) == ["x", "row"]
    assert df.index.tolist() == [(1, "r0"), (1, "r1"), (2, "r0"), (2, "r1")]
    assert df["value"].tolist() == [1, 10, 2, 20]
    dropped = pool.collect(drop_index=True)
    assert list(dropped.index.names) == ["arg_pos", "row"]
    assert dropped.index.tolist() == [(0, "r0"), (0, "r1"), (1, "r0"), (1, "r1")]
    nested = pool.collect(flatten=False)
    assert list(nested.columns) == ["result"] and nested.index.tolist() == [1, 2]
    assert isinstance(nested["result"].iloc[0], pd.DataFrame)
    assert nested["result"].iloc[1]["value"].tolist() == [2, 20]


def test_collect_raises_the_first_error_unless_ignored(engine: str) -> None:
    pool = s.fail_if_odd.map(list(range(6)), engine=engine, max_retry=0)
    with pytest.raises(UdfRuntimeError, match="odd value 1"):
        pool.collect()
    df = pool.collect(ignore_exceptions=True)
    assert df.index.name == "x" and df.index.tolist() == [0, 2, 4]
    by_pos = pool.collect(ignore_exceptions=True, drop_index=True)
    # positions are not renumbered when failures are dropped
    assert by_pos.index.name == "arg_pos" and by_pos.index.tolist() == [0, 2, 4]
    assert by_pos["result"].tolist() == [0, 2, 4]


def test_df_is_collect(engine: str) -> None:
    pool = s.fail_if_odd.map([0, 1, 2], engine=engine, max_retry=0)
    pd.testing.assert_frame_equal(
        pool.df(ignore_exceptions=True, flatten=True, drop_index=True),
        pool.collect(ignore_exceptions=True, flatten=True, drop_index=True),
    )
    with pytest.raises(UdfRuntimeError):
        pool.df()
