"""``udf.map`` and every ``JobPool`` member (API.md §2, seed 001), on each engine.

Every pool test runs through the ``engine`` fixture, so adding ``"remote"`` to its params runs the
same assertions on a Celery cluster. Entries coordinate with the test through files in a tmp
directory (``gated`` waits for a release file, ``flaky`` leaves markers, ``count_runs`` appends
lines), never through process ids, so nothing here depends on where an entry runs — except the
tests named ``test_local_*``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import udfs_sample as s

import fused_celery as fused
from fused_celery.errors import (
    CancelledError,
    UdfArgumentError,
    UdfDefinitionError,
    UdfRuntimeError,
    UdfSerializationError,
    UdfTimeoutError,
    UdfWorkerLostError,
)
from fused_celery.options import options
from fused_celery.pool import JobFuture, JobPool

TAIL_LINE = re.compile(
    r"^\[\d\d:\d\d:\d\d\] Run #(?P<pos>\d+) (?P<status>\w+) \((?P<summary>.*)\) (?P<args>\{.*\})$"
)


@pytest.fixture(params=["local", "remote"])
def engine(request: pytest.FixtureRequest) -> str:
    """The engine every pool test runs on: the local process pool, and a real Celery cluster
    (two worker processes on a private Redis, started once per session)."""
    if request.param == "remote":
        request.getfixturevalue("on_shared_cluster")
    return request.param


@pytest.fixture(autouse=True)
def _isolated_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private result cache per test; no progress bars unless a test asks for them."""
    monkeypatch.setattr(options, "cache_dir", str(tmp_path / "udf-cache"))
    monkeypatch.setattr(options.show, "enable_tqdm", False)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A directory for marker and count files."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A directory for ``udfs_sample.gated``; opened at teardown so no entry waits forever."""
    path = tmp_path / "gate"
    path.mkdir()
    yield path
    release(path)


def release(gate: Path, x: int | None = None) -> None:
    (gate / ("release" if x is None else f"release_{x}")).write_text("1")


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


def started(gate: Path, x: int) -> bool:
    return (gate / f"started_{x}").exists()


def runs(path: Path, x: int) -> int:
    """How many times ``count_runs`` / ``always_fail`` ran for ``x``."""
    file = path / f"runs_{x}"
    return len(file.read_text().splitlines()) if file.exists() else 0


def tail_lines(text: str) -> list[re.Match[str]]:
    return [m for line in text.splitlines() if (m := TAIL_LINE.match(line))]


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


# ----------------------------------------------------------------------------- wait


def test_wait_shows_the_documented_tqdm_bar(
    engine: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(options.show, "enable_tqdm", True)
    pool = s.sleeper.map([1, 2, 3], seconds=0.3, engine=engine)
    pool.wait()
    err = capsys.readouterr().err
    # {l_bar}{bar} | {n_fmt}/{total_fmt} | {elapsed}
    assert re.search(r"100%\|[^|\n\r]*\| 3/3 \| \d\d:\d\d", err), err
    assert pool.done()


def test_wait_without_tqdm_prints_nothing(
    engine: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    pool = s.sleeper.map([1, 2, 3], seconds=0.3, engine=engine)
    pool.wait()
    captured = capsys.readouterr()
    assert "3/3" not in captured.err and "%|" not in captured.err
    # a remote pool announces its id on submit (API.md), and prints nothing else
    assert captured.out == "" if engine == "local" else captured.out.startswith("Submitted 3 jobs")
    assert captured.out.count("\n") <= 1
    assert pool.done()


@pytest.mark.parametrize("tqdm_on", [False, True])
def test_wait_timeout(
    engine: str, gate: Path, tqdm_on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(options.show, "enable_tqdm", tqdm_on)
    pool = s.gated.map([0], gate=str(gate), engine=engine)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=pool.id):
        pool.wait(timeout=0.3)
    assert time.monotonic() - t0 < 5
    release(gate)
    pool.wait()
    assert pool.results() == [0]


# ----------------------------------------------------------------------------- tail


def test_tail_prints_every_completion_then_end_of_tail(
    engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 40
    pool = s.square.map(list(range(n)), engine=engine)
    pool.tail()
    out = capsys.readouterr().out
    lines = tail_lines(out)
    # every completion is printed once, not one per poll
    assert sorted(int(m["pos"]) for m in lines) == list(range(n))
    assert all(m["status"] == "success" for m in lines)
    assert all(re.fullmatch(r"\d+\.\d\ds", m["summary"]) for m in lines)
    by_pos = {int(m["pos"]): m["args"] for m in lines}
    assert by_pos[7] == "{'x': 7}"
    rest = out.split("End of tail\n", 1)
    assert len(rest) == 2, out
    assert re.search(r"success\s+40", rest[1])
    assert pool.done()


def test_tail_shows_errors(engine: str, capsys: pytest.CaptureFixture[str]) -> None:
    pool = s.fail_if_odd.map(list(range(4)), engine=engine, max_retry=0)
    pool.tail()
    out = capsys.readouterr().out
    lines = {int(m["pos"]): m for m in tail_lines(out)}
    assert sorted(lines) == [0, 1, 2, 3]
    assert lines[1]["status"] == "error"
    assert lines[1]["summary"] == "ValueError: odd value 1"
    assert lines[2]["status"] == "success"
    summary = out.split("End of tail\n", 1)[1]
    assert re.search(r"success\s+2", summary) and re.search(r"error\s+2", summary)


def test_tail_stop_on_exception(engine: str, capsys: pytest.CaptureFixture[str]) -> None:
    pool = s.fail_if_odd.map([0, 2, 1, 4], engine=engine, max_retry=0)
    pool.wait()
    pool.tail(stop_on_exception=True)
    out = capsys.readouterr().out
    lines = tail_lines(out)
    statuses = [m["status"] for m in lines]
    assert statuses.count("error") == 1
    assert statuses[-1] == "error"  # nothing printed after the first error
    assert "End of tail (stopped on exception)" in out


def test_tail_timeout(engine: str, gate: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = s.gated.map([0, 1], gate=str(gate), engine=engine)
    release(gate, 0)
    t0 = time.monotonic()
    pool.tail(timeout=1.5)
    assert time.monotonic() - t0 < 10
    out = capsys.readouterr().out
    assert "End of tail (timeout)" in out
    lines = tail_lines(out)
    assert [int(m["pos"]) for m in lines] == [0]
    assert re.search(r"running\s+1", out)
    release(gate)
    pool.tail()
    out = capsys.readouterr().out
    assert [int(m["pos"]) for m in tail_lines(out)] == [0, 1]  # a new tail prints all again
    assert "End of tail\n" in out


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


# ----------------------------------------------------------------------------- logs


def test_logs_and_first_log(engine: str) -> None:
    pool = s.printer.map([0, 1, 2], engine=engine, max_retry=0)
    pool.wait()
    logs = pool.logs()
    assert len(logs) == 3
    for i, log in enumerate(logs):  # stdout and stderr, only the entry's own output
        assert log.splitlines() == [f"hello {i}", f"warn {i}"], (i, log)
    # (entry 2 failed and keeps its logs)
    assert "hello 0" in pool.first_log()


def test_logs_are_none_until_an_entry_finishes(engine: str, gate: Path) -> None:
    pool = s.gated.map([0, 1], gate=str(gate), engine=engine)
    wait_until(lambda: started(gate, 0) and started(gate, 1), what="both started")
    assert pool.logs() == [None, None]
    assert pool.first_log() is None
    assert pool.times() == [None, None]
    release(gate, 1)
    wait_until(lambda: pool.logs()[1] is not None, what="entry 1 logs")
    assert pool.logs() == [None, "gated 1\n"]
    assert pool.first_log() == "gated 1\n"
    times = pool.times()
    assert times[0] is None and isinstance(times[1], timedelta)
    release(gate)
    pool.wait()
    assert pool.logs() == ["gated 0\n", "gated 1\n"]
    assert pool.first_log() == "gated 0\n"


def test_logs_df_default_columns(engine: str) -> None:
    pool = s.printer.map([0, 1, 2], engine=engine, max_retry=0)
    pool.wait()
    df = pool.logs_df()
    assert list(df.columns) == ["x", "status", "result", "time", "logs"]
    assert df.index.tolist() == [0, 1, 2]
    assert df["x"].tolist() == [0, 1, 2]
    assert df["status"].tolist() == ["success", "success", "error"]
    assert df["result"].iloc[0] == 0 and df["result"].iloc[1] == 1
    assert isinstance(df["result"].iloc[2], UdfRuntimeError)
    assert all(isinstance(t, timedelta) for t in df["time"])
    assert "hello 1" in df["logs"].iloc[1] and "warn 1" in df["logs"].iloc[1]


def test_logs_df_column_options(engine: str) -> None:
    pool = s.printer.map([0, 1, 2], engine=engine, max_retry=0)
    pool.wait()
    df = pool.logs_df(
        status_column="st",
        result_column="res",
        time_column="took",
        logs_column="out",
        exception_column="exc",
        include_exceptions=False,
    )
    assert list(df.columns) == ["x", "st", "res", "took", "out", "exc"]
    assert df["res"].iloc[2] is None  # include_exceptions=False
    assert df["res"].iloc[0] == 0
    assert df["exc"].iloc[0] is None and df["exc"].iloc[1] is None
    assert isinstance(df["exc"].iloc[2], UdfRuntimeError)
    assert df["exc"].iloc[2].child_exception_class == "KeyError"
    only_args = pool.logs_df(
        status_column=None, result_column=None, time_column=None, logs_column=None
    )
    assert list(only_args.columns) == ["x"]
    with_exc = pool.logs_df(exception_column="exception")
    assert list(with_exc.columns) == ["x", "status", "result", "time", "logs", "exception"]
    assert isinstance(with_exc["result"].iloc[2], UdfRuntimeError)


def test_logs_df_while_running(engine: str, gate: Path) -> None:
    pool = s.gated.map([0, 1], gate=str(gate), engine=engine)
    release(gate, 0)
    wait_until(lambda: pool[0].done() and started(gate, 1), what="entry 0 done")
    df = pool.logs_df()
    assert df["status"].tolist() == ["success", "running"]
    assert df["result"].iloc[0] == 0 and df["result"].iloc[1] is None
    assert pd.isna(df["logs"].iloc[1]) and pd.isna(df["time"].iloc[1])
    assert df["logs"].iloc[0] == "gated 0\n"


# ----------------------------------------------------------------------------- times


def test_times_are_run_time_not_queue_time(engine: str) -> None:
    t0 = time.time()
    pool = s.sleeper.map([0, 1, 2], seconds=0.3, engine=engine, max_workers=1)
    pool.wait()
    wall = time.time() - t0
    times = pool.times()
    assert all(isinstance(t, timedelta) for t in times)
    # the third entry queued for ~0.6 s: it must not be counted
    assert all(timedelta(seconds=0.28) <= t < timedelta(seconds=0.6) for t in times), times
    total = pool.total_time()
    assert isinstance(total, timedelta)
    assert total >= timedelta(seconds=0.9)  # three runs one after another
    assert total <= timedelta(seconds=wall + 0.05)
    assert pool.total_time(since_retry=True) == total  # no retry yet


def test_total_time_since_retry_is_honoured(engine: str, work: Path) -> None:
    pool = s.flaky.map([1], path=str(work), engine=engine, max_retry=0)
    pool.wait()
    assert pool.any_failed()
    before = pool.total_time()
    time.sleep(0.6)
    pool.retry()
    pool.wait()
    assert pool.all_succeeded()
    whole = pool.total_time()
    since = pool.total_time(since_retry=True)
    assert whole >= before + timedelta(seconds=0.6)
    assert timedelta(0) < since < whole - timedelta(seconds=0.5)


# ----------------------------------------------------------------------------- arg_df


def test_arg_df(engine: str) -> None:
    pool = s.add.map([{"x": 1, "y": 2}, {"x": 3}], engine=engine)
    df = pool.arg_df()
    assert list(df.columns) == ["x", "y"]
    assert df.index.name == "arg_pos" and df.index.tolist() == [0, 1]
    assert df["x"].tolist() == [1, 3]
    assert df["y"].iloc[0] == 2 and pd.isna(df["y"].iloc[1])
    const = s.add.map([1, 2], y=7, engine=engine).arg_df()
    assert set(const.columns) == {"x", "y"}
    assert const["x"].tolist() == [1, 2] and const["y"].tolist() == [7, 7]


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
    assert dropped.index.name == "arg_pos" and dropped.index.tolist() == [0, 0, 1, 1]
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


# ----------------------------------------------------------------------------- retry


def test_retry_moves_errors_back_to_pending_and_reruns(engine: str, work: Path) -> None:
    pool = s.flaky.map([1, 2, 3], path=str(work), engine=engine, max_retry=0)
    pool.wait()
    assert pool.status().to_dict() == {"error": 3}
    first_errors = pool.errors()
    assert sorted(first_errors) == [0, 1, 2]
    pool.retry()
    # the error entries left the error state at once: pending (or already running/done)
    assert pool.errors() == {}
    assert "error" not in pool.status()
    pool.wait()
    assert pool.all_succeeded()
    assert pool.results() == [101, 102, 103]
    assert pool.status().to_dict() == {"success": 3}
    assert all(f"ok_{x}" in {p.name for p in work.iterdir()} for x in (1, 2, 3))


def test_retry_status_transitions_error_pending_running_success(engine: str, gate: Path) -> None:
    pool = s.gated_flaky.map([0, 1], gate=str(gate), engine=engine, max_retry=0, max_workers=1)
    pool.wait()
    assert pool.status().to_dict() == {"error": 2}
    pool.retry()
    wait_until(lambda: started(gate, 0), what="entry 0 rerunning")
    wait_until(lambda: pool[0].status == "running", what="entry 0 running")
    # one worker: while entry 0 runs again, entry 1 is back in pending
    assert pool.pending() == {1: {"x": 1, "gate": str(gate)}}
    assert pool.status().to_dict() == {"pending": 1, "running": 1}
    assert pool.errors() == {} and not pool.done()
    release(gate)
    assert pool.results() == [0, 1]
    assert pool.status().to_dict() == {"success": 2}


def test_retry_only_reruns_failed_entries(engine: str, work: Path) -> None:
    pool = s.always_fail.map([1], path=str(work), engine=engine, max_retry=0)
    pool.wait()
    assert runs(work, 1) == 1
    pool.retry()
    pool.wait()
    assert runs(work, 1) == 2
    assert pool.status().to_dict() == {"error": 1}
    other = work / "other"
    other.mkdir()
    ok = s.count_runs.map([1], path=str(other), engine=engine, cache=False)
    ok.wait()
    ok.retry()  # nothing failed: nothing reruns
    ok.wait()
    assert runs(other, 1) == 1


# ----------------------------------------------------------------------------- cancel


def test_cancel_stops_pending_entries_and_counts_them(
    engine: str, gate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = s.gated.map(list(range(4)), gate=str(gate), engine=engine, max_workers=1)
    wait_until(lambda: started(gate, 0), what="entry 0 to start")
    wait_until(lambda: pool[0].status == "running", what="entry 0 running")
    pool.cancel()
    assert "Cancelled 3 pending job(s); 1 already running" in capsys.readouterr().out
    assert pool.status().to_dict() == {"running": 1, "cancelled": 3}
    args = {i: {"x": i, "gate": str(gate)} for i in range(4)}
    assert pool.cancelled() == {1: args[1], 2: args[2], 3: args[3]}
    assert pool.pending() == {}
    assert pool.running() == {0: args[0]}
    assert "1 running" in repr(pool) and "3 cancelled" in repr(pool)
    release(gate)
    pool.wait()
    assert pool.done()
    assert pool.status().to_dict() == {"success": 1, "cancelled": 3}
    assert not pool.all_succeeded() and pool.any_succeeded() and not pool.any_failed()
    assert not any(started(gate, i) for i in (1, 2, 3))  # never ran
    values = pool.results(return_exceptions=True)
    assert values[0] == 0 and all(isinstance(v, CancelledError) for v in values[1:])
    with pytest.raises(CancelledError):
        pool.results()
    assert pool.errors() == {}
    assert pool.logs() == ["gated 0\n", None, None, None]
    assert pool.times()[1:] == [None, None, None]
    assert pool.collect(ignore_exceptions=True, drop_index=True).index.tolist() == [0]
    pool.retry()  # cancelled entries are not retried
    assert pool.status().to_dict() == {"success": 1, "cancelled": 3}


def test_cancel_wait_true_waits_for_running_entries(
    engine: str, gate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = s.gated.map([0, 1], gate=str(gate), engine=engine, max_workers=1)
    wait_until(lambda: started(gate, 0), what="entry 0 to start")
    wait_until(lambda: pool[0].status == "running", what="entry 0 running")
    timer = threading.Timer(0.5, release, args=(gate, 0))
    timer.start()
    try:
        pool.cancel(wait=True)
    finally:
        timer.join()
    out = capsys.readouterr().out
    assert "Cancelled 1 pending job(s); 1 already running, waiting for them to finish" in out
    assert pool.done()
    assert pool.status().to_dict() == {"success": 1, "cancelled": 1}


def test_entries_queued_behind_a_slow_one_are_pending_and_cancellable(
    engine: str, gate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = s.block_one.map(list(range(12)), gate=str(gate), engine=engine, max_workers=1)
    wait_until(lambda: started(gate, 6), what="entry 6 to start")
    wait_until(lambda: pool[5].done(), what="entries before 6 to finish")
    args = {i: {"x": i, "gate": str(gate)} for i in range(12)}
    try:
        assert pool.running() == {6: args[6]}  # one worker: nothing else can be running
        assert pool.pending() == {i: args[i] for i in range(7, 12)}
        pool.cancel()
        assert "Cancelled 5 pending job(s); 1 already running" in capsys.readouterr().out
    finally:
        release(gate)
        pool.wait()


def test_cancel_after_everything_finished(engine: str, capsys) -> None:
    pool = s.square.map([1, 2], engine=engine)
    pool.wait()
    pool.cancel()
    assert "Cancelled 0 pending job(s); 0 already running" in capsys.readouterr().out
    assert pool.status().to_dict() == {"success": 2}
    assert pool.results() == [1, 4]


# ----------------------------------------------------------------------------- shutdown


def test_shutdown_keeps_results(engine: str) -> None:
    pool = s.square.map([1, 2], engine=engine)
    pool.wait()
    pool.shutdown()
    pool.shutdown(wait=False)  # idempotent
    assert pool.results() == [1, 4]
    assert pool.collect()["result"].tolist() == [1, 4]


def test_local_engine_runs_entries_in_worker_processes() -> None:
    # seed 001: process-based (the reference silently uses threads)
    pids = s.process_id.map(list(range(4)), engine="local", max_workers=2, cache=False).results()
    assert os.getpid() not in pids
    assert 1 <= len(set(pids)) <= 2


def test_local_shutdown_waits_and_stops_the_processes(gate: Path) -> None:
    pool = s.gated.map([0, 1], gate=str(gate), engine="local")
    wait_until(lambda: started(gate, 0) and started(gate, 1), what="both started")
    processes = [w.proc for w in pool._engine._workers]
    assert processes and all(p.poll() is None for p in processes)
    threading.Timer(0.3, release, args=(gate,)).start()
    pool.shutdown(wait=True)
    assert pool.done()
    assert all(p.poll() is not None for p in processes)


def test_local_collect_shuts_the_pool_down(gate: Path) -> None:
    pool = s.gated.map([0, 1], gate=str(gate), engine="local")
    wait_until(lambda: started(gate, 0) and started(gate, 1), what="both started")
    processes = [w.proc for w in pool._engine._workers]
    release(gate)
    df = pool.collect()
    assert df["result"].tolist() == [0, 1]
    assert all(p.poll() is not None for p in processes)
    assert not pool._engine._workers


# ----------------------------------------------------------------------------- async


ASYNC_MEMBERS = [
    "wait_async",
    "results_async",
    "results_now_async",
    "errors_async",
    "first_error_async",
    "logs_async",
    "first_log_async",
    "logs_df_async",
    "success_async",
    "tail_async",
    "cancel_async",
    "collect_async",
]


def test_every_async_member_is_a_coroutine_function() -> None:
    for name in ASYNC_MEMBERS:
        assert inspect.iscoroutinefunction(getattr(JobPool, name)), name
    assert inspect.iscoroutinefunction(fused.Udf.map_async)


def test_async_members(engine: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        pool = await s.printer.map_async([0, 1, 2], engine=engine, max_retry=0)
        assert isinstance(pool, JobPool)
        await pool.wait_async()
        assert pool.done()
        values = await pool.results_async(return_exceptions=True)
        assert values[:2] == [0, 1] and isinstance(values[2], UdfRuntimeError)
        with pytest.raises(UdfRuntimeError, match="boom"):
            await pool.results_async()
        now = await pool.results_now_async(return_exceptions=True)
        assert now[0] == 0 and isinstance(now[2], UdfRuntimeError)
        errors = await pool.errors_async()
        assert list(errors) == [2] and errors[2].child_exception_class == "KeyError"
        first = await pool.first_error_async()
        assert first.child_exception_class == "KeyError"
        logs = await pool.logs_async()
        assert "hello 1" in logs[1]
        assert "hello 0" in await pool.first_log_async()
        df = await pool.logs_df_async(logs_column="out", exception_column="exc")
        assert list(df.columns) == ["x", "status", "result", "time", "out", "exc"]
        assert await pool.success_async() == {0: 0, 1: 1}
        await pool.tail_async()
        await pool.cancel_async()
        collected = await pool.collect_async(ignore_exceptions=True)
        assert collected["result"].tolist() == [0, 1]

    asyncio.run(main())
    out = capsys.readouterr().out
    assert "End of tail" in out and "Cancelled 0 pending job(s)" in out


def test_async_wait_does_not_block_the_event_loop(engine: str) -> None:
    async def main() -> int:
        pool = await s.sleeper.map_async([0, 1], seconds=0.5, engine=engine)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await pool.wait_async()
        task.cancel()
        assert await pool.results_async() == [0, 1]
        return ticks

    assert asyncio.run(main()) >= 10


def test_async_cancel_and_tail(engine: str, gate: Path, capsys) -> None:
    async def main() -> JobPool:
        pool = await s.gated.map_async([0, 1, 2], gate=str(gate), engine=engine, max_workers=1)
        while not started(gate, 0) or pool[0].status != "running":
            await asyncio.sleep(0.01)
        await pool.cancel_async()
        release(gate)
        await pool.tail_async()
        return pool

    pool = asyncio.run(main())
    out = capsys.readouterr().out
    assert "Cancelled 2 pending job(s); 1 already running" in out
    assert "End of tail" in out
    assert pool.status().to_dict() == {"success": 1, "cancelled": 2}


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


# ----------------------------------------------------------------------------- max_retry


def test_max_retry_retries_happen_without_anyone_waiting(engine: str, work: Path) -> None:
    pool = s.flaky.map([1, 2, 3], path=str(work), engine=engine, max_retry=1)
    # nobody calls wait/results/status: only the file system is watched
    wait_until(
        lambda: all((work / f"ok_{x}").exists() for x in (1, 2, 3)), what="the retried attempts"
    )
    assert pool.results() == [101, 102, 103]
    assert pool.all_succeeded()


@pytest.mark.parametrize("max_retry", [0, 2])
def test_max_retry_is_the_number_of_extra_attempts(engine: str, work: Path, max_retry) -> None:
    pool = s.always_fail.map([1, 2], path=str(work), engine=engine, max_retry=max_retry)
    pool.wait()
    assert pool.status().to_dict() == {"error": 2}
    assert runs(work, 1) == runs(work, 2) == 1 + max_retry
    assert pool.first_error().child_exception_class == "RuntimeError"


def test_default_max_retry_is_two(engine: str, work: Path) -> None:
    pool = s.always_fail.map([1], path=str(work), engine=engine)
    pool.wait()
    assert runs(work, 1) == 3


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_bad_max_retry(engine: str, bad) -> None:
    with pytest.raises(ValueError, match="max_retry"):
        s.square.map([1], engine=engine, max_retry=bad)


# ----------------------------------------------------------------------------- cache


def test_cache_reuses_identical_calls(engine: str, work: Path) -> None:
    first = s.count_runs.map([1, 2], path=str(work), engine=engine)
    assert first.results() == [10, 20]
    second = s.count_runs.map([1, 2], path=str(work), engine=engine)
    assert second.results() == [10, 20]
    assert second.all_succeeded()
    assert runs(work, 1) == 1 and runs(work, 2) == 1
    partly = s.count_runs.map([2, 3], path=str(work), engine=engine)
    assert partly.results() == [20, 30]
    assert runs(work, 2) == 1 and runs(work, 3) == 1


def test_cache_false_always_runs(engine: str, work: Path) -> None:
    s.count_runs.map([1], path=str(work), engine=engine).wait()
    again = s.count_runs.map([1], path=str(work), engine=engine, cache=False)
    assert again.results() == [10]
    assert runs(work, 1) == 2
    third = s.count_runs.map([1], path=str(work), engine=engine, cache=False)
    third.wait()
    assert runs(work, 1) == 3


def test_cache_max_age_zero_reruns(engine: str, work: Path) -> None:
    s.count_runs.map([1], path=str(work), engine=engine).wait()
    time.sleep(0.05)
    s.count_runs.map([1], path=str(work), engine=engine, cache_max_age=0).wait()
    assert runs(work, 1) == 2
    s.count_runs.map([1], path=str(work), engine=engine, cache_max_age="1h").wait()
    assert runs(work, 1) == 2


def test_errors_are_never_cached(engine: str, work: Path) -> None:
    for _ in range(2):
        pool = s.always_fail.map([1], path=str(work), engine=engine, max_retry=0)
        pool.wait()
        assert pool.any_failed()
    assert runs(work, 1) == 2
    failed = s.flaky.map([5], path=str(work), engine=engine, max_retry=0)
    failed.wait()
    assert failed.any_failed()
    fixed = s.flaky.map([5], path=str(work), engine=engine, max_retry=0)
    assert fixed.results() == [105]  # not the cached failure


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize("option", ["n_processes_per_worker", "worker_concurrency"])
def test_batched_entries_keep_their_own_status_result_log_and_time(
    engine: str, option: str
) -> None:
    pool = s.printer.map(list(range(6)), engine=engine, max_retry=0, **{option: 3})
    pool.wait()
    assert pool.status().to_dict() == {"success": 5, "error": 1}
    assert pool[2].status == "error"
    assert pool.success() == {0: 0, 1: 1, 3: 3, 4: 4, 5: 5}
    logs = pool.logs()
    for i, log in enumerate(logs):
        assert log.splitlines() == [f"hello {i}", f"warn {i}"], (i, log)
    assert all(isinstance(t, timedelta) for t in pool.times())
    assert pool.errors()[2].child_exception_class == "KeyError"


def test_batched_entries_run_in_parallel(engine: str) -> None:
    pool = s.sleeper.map(
        [0, 1, 2, 3], seconds=0.6, engine=engine, max_workers=1, n_processes_per_worker=4
    )
    pool.wait()
    assert pool.results() == [0, 1, 2, 3]
    runs_at_once = pool.total_time()
    assert runs_at_once < timedelta(seconds=1.8), runs_at_once  # one after another: 2.4 s


def test_batched_entry_is_reported_when_it_finishes(engine: str, gate: Path) -> None:
    pool = s.gated.map([0, 1], gate=str(gate), engine=engine, n_processes_per_worker=2)
    wait_until(lambda: started(gate, 0) and started(gate, 1), what="both started")
    release(gate, 0)
    # entry 0 is done although its batch-mate still runs
    wait_until(lambda: pool[0].status == "success", timeout=5, what="entry 0 reported")
    assert pool[1].status == "running"
    assert pool.results_now() == {0: 0}
    release(gate, 1)
    assert pool.results() == [0, 1]


def test_batch_options_agree_or_fail(engine: str) -> None:
    same = s.square.map([1, 2], engine=engine, n_processes_per_worker=2, worker_concurrency=2)
    assert same.results() == [1, 4]
    with pytest.raises(ValueError, match="same option"):
        s.square.map([1], engine=engine, n_processes_per_worker=2, worker_concurrency=3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_processes_per_worker"):
            s.square.map([1], engine=engine, n_processes_per_worker=bad)


# ----------------------------------------------------------------------------- max_workers


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    return max(sum(1 for s2, e2 in intervals if s2 <= s1 < e2) for s1, _ in intervals)


@pytest.mark.parametrize("cap", [1, 2])
def test_max_workers_caps_entries_running_at_once(engine: str, work: Path, cap: int) -> None:
    pool = s.interval.map(
        list(range(6)), path=str(work), seconds=0.25, engine=engine, max_workers=cap
    )
    assert pool.results() == list(range(6))
    intervals = [tuple(json.loads((work / f"interval_{i}").read_text())) for i in range(6)]
    assert _max_overlap(intervals) <= cap


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_max_workers(engine: str, bad) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        s.square.map([1], engine=engine, max_workers=bad)


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
