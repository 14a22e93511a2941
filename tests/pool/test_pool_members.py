"""JobPool basics: len/getitem/iter, statuses, results, arg_df, repr/html (API.md §2, seed 001).

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
from pool_helpers import release, started, wait_until

from fused_celery.errors import (
    UdfRuntimeError,
)
from fused_celery.pool import JobFuture, JobPool


# ----------------------------------------------------------------------------- basics
def test_n_jobs_len_getitem_iter(engine: str) -> None:
    pool = s.square.map([1, 2, 3], engine=engine)
    assert isinstance(pool, JobPool)
    assert pool.n_jobs == 3 and len(pool) == 3
    assert isinstance(pool.id, str) and pool.id
    assert pool.results() == [1, 4, 9]
    assert list(pool) == [1, 4, 9]
    assert isinstance(pool[0], JobFuture)
    assert pool[0].result() == 1 and pool[2].result() == 9 and pool[-1].result() == 9
    assert pool[1].args == {"x": 2}
    assert pool[1].status == "success" and pool[1].done()
    assert pool[1].exception() is None
    assert pool[1].logs() == ""
    with pytest.raises(IndexError):
        pool[3]
    with pytest.raises(IndexError):
        pool[-4]


def test_job_future_of_a_failed_entry(engine: str) -> None:
    pool = s.fail_if_odd.map([0, 1], engine=engine, max_retry=0)
    with pytest.raises(UdfRuntimeError, match="odd value 1"):
        pool[1].result(timeout=30)
    err = pool[1].exception()
    assert isinstance(err, UdfRuntimeError) and err.child_exception_class == "ValueError"
    assert pool[1].status == "error"
    assert "error" in repr(pool[1]) and "#1" in repr(pool[1])


def test_iter_raises_the_first_error_in_order(engine: str) -> None:
    pool = s.fail_if_odd.map([0, 1, 2], engine=engine, max_retry=0)
    iterator = iter(pool)
    assert next(iterator) == 0
    with pytest.raises(UdfRuntimeError, match="odd value 1"):
        next(iterator)


# ----------------------------------------------------------------------------- statuses
def test_status_transitions_pending_running_success(engine: str, gate: Path) -> None:
    pool = s.gated.map([0, 1], gate=str(gate), engine=engine, max_workers=1)
    args0, args1 = {"x": 0, "gate": str(gate)}, {"x": 1, "gate": str(gate)}
    wait_until(lambda: started(gate, 0), what="entry 0 to start")
    wait_until(lambda: pool.running() == {0: args0}, what="entry 0 running")
    assert pool.pending() == {1: args1}
    assert pool[0].status == "running" and pool[1].status == "pending"
    assert pool.cancelled() == {}
    assert not pool.done() and not pool.any_succeeded() and not pool.any_failed()
    assert not pool.all_succeeded()
    assert pool.status().to_dict() == {"pending": 1, "running": 1}
    release(gate, 0)
    wait_until(lambda: pool[0].status == "success", what="entry 0 success")
    wait_until(lambda: pool.running() == {1: args1}, what="entry 1 running")
    assert pool.pending() == {}
    assert pool.any_succeeded() and not pool.done() and not pool.all_succeeded()
    assert pool.success() == {0: 0}
    release(gate, 1)
    pool.wait()
    assert pool.running() == {} and pool.pending() == {}
    assert pool.done() and pool.all_succeeded() and pool.any_succeeded()
    assert not pool.any_failed()
    assert pool.status().to_dict() == {"success": 2}


def test_boolean_members_with_failures(engine: str) -> None:
    some = s.fail_if_odd.map([0, 1, 2], engine=engine, max_retry=0)
    some.wait()
    assert some.done() and some.any_failed() and some.any_succeeded()
    assert not some.all_succeeded()
    every = s.fail_if_odd.map([1, 3], engine=engine, max_retry=0)
    every.wait()
    assert every.done() and every.any_failed()
    assert not every.any_succeeded() and not every.all_succeeded()


def test_status_is_a_series_of_counts(engine: str) -> None:
    pool = s.fail_if_odd.map(list(range(5)), engine=engine, max_retry=0)
    pool.wait()
    status = pool.status()
    assert isinstance(status, pd.Series)
    assert status.to_dict() == {"success": 3, "error": 2}
    assert status.index.name == "status"
    assert status.dtype.kind == "i"


# ----------------------------------------------------------------------------- results
def test_results_success_errors_first_error(engine: str) -> None:
    pool = s.fail_if_odd.map([0, 1, 2, 3], engine=engine, max_retry=0)
    with pytest.raises(UdfRuntimeError, match="odd value 1"):
        pool.results()
    values = pool.results(return_exceptions=True)
    assert values[0] == 0 and values[2] == 2
    assert isinstance(values[1], UdfRuntimeError) and isinstance(values[3], UdfRuntimeError)
    now = pool.results_now(return_exceptions=True)
    assert list(now) == [0, 1, 2, 3] and now[0] == 0
    with pytest.raises(UdfRuntimeError, match="odd value 1"):
        pool.results_now()
    assert pool.success() == {0: 0, 2: 2}
    errors = pool.errors()
    assert sorted(errors) == [1, 3]
    assert all(e.child_exception_class == "ValueError" for e in errors.values())
    first = pool.first_error()
    assert isinstance(first, UdfRuntimeError) and first.message == "odd value 1"
    assert "raise ValueError" in first.traceback
    code_line = s.fail_if_odd.code.splitlines()[first.lineno - 1]
    assert code_line.strip().startswith("raise ValueError")


def test_results_of_a_clean_pool(engine: str) -> None:
    pool = s.add.map([1, 2], engine=engine)
    assert pool.results() == [11, 12]
    assert pool.results_now() == {0: 11, 1: 12}
    assert pool.errors() == {} and pool.first_error() is None
    assert pool.success() == {0: 11, 1: 12}


def test_results_now_is_partial_while_running(engine: str, gate: Path) -> None:
    pool = s.gated.map([0, 1], gate=str(gate), engine=engine)
    wait_until(lambda: started(gate, 0) and started(gate, 1), what="both started")
    assert pool.results_now() == {}
    assert pool.success() == {} and pool.errors() == {} and pool.first_error() is None
    release(gate, 1)
    wait_until(lambda: pool.results_now() == {1: 1}, what="entry 1 result")
    assert pool.success() == {1: 1}
    release(gate, 0)
    assert pool.results() == [0, 1]


# ----------------------------------------------------------------------------- arg_df
def test_arg_df(engine: str) -> None:
    pool = s.add.map([{"x": 1, "y": 2}, {"x": 3}], engine=engine)
    df = pool.arg_df()
    assert list(df.columns) == ["x", "y"]
    assert df.index.name == "arg_pos" and df.index.tolist() == [0, 1]
    assert df["x"].tolist() == [1, 3]
    assert df["y"].iloc[0] == 2 and pd.isna(df["y"].iloc[1])
    # constant keyword arguments are not arguments given per entry (as in the reference SDK)
    const = s.add.map([1, 2], y=7, engine=engine).arg_df()
    assert list(const.columns) == ["x"] and const["x"].tolist() == [1, 2]


# ----------------------------------------------------------------------------- display
def test_repr_and_html(engine: str, gate: Path) -> None:
    pool = s.gated.map([0, 1, 2], gate=str(gate), engine=engine, max_workers=1)
    wait_until(lambda: pool[0].status == "running", what="entry 0 running")
    text = repr(pool)
    assert text.startswith(f"<JobPool id={pool.id} with 3 jobs [")
    assert "2 pending" in text and "1 running" in text and text.endswith("]>")
    html_text = pool._repr_html_()
    assert "<table>" in html_text and pool.id in html_text
    assert "<td>pending</td><td>2</td>" in html_text
    assert "<td>running</td><td>1</td>" in html_text
    release(gate)
    pool.wait()
    assert repr(pool) == f"<JobPool id={pool.id} with 3 jobs [3 success]>"
    assert "<td>success</td><td>3</td>" in pool._repr_html_()
