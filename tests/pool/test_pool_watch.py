"""Watching a pool: wait (tqdm), tail, logs and logs_df, times (API.md §2, seed 001).

Every pool test runs through the ``engine`` fixture, so adding ``"remote"`` to its params runs the
same assertions on a Celery cluster. Entries coordinate with the test through files in a tmp
directory (``gated`` waits for a release file, ``flaky`` leaves markers, ``count_runs`` appends
lines), never through process ids, so nothing here depends on where an entry runs — except the
tests named ``test_local_*``.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import udfs_sample as s
from pool_helpers import release, started, tail_lines, wait_until

from fused_celery.errors import (
    UdfRuntimeError,
)
from fused_celery.options import options


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
    # entry 0 finishes before the tail starts (a loaded machine may take longer than the tail's
    # timeout to start a worker); the tail then prints it and times out on entry 1
    wait_until(lambda: 0 in pool.success(), timeout=60, what="entry 0 to finish")
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
    assert list(df.columns) == ["x", "status", "time", "result", "logs"]  # the SDK's order
    assert df.index.tolist() == [0, 1, 2]
    assert df["x"].tolist() == [0, 1, 2]
    assert df["status"].tolist() == ["success", "success", "error"]
    assert df["result"].iloc[0] == 0 and df["result"].iloc[1] == 1
    assert isinstance(df["result"].iloc[2], UdfRuntimeError)
    assert df["time"].dtype == float and (df["time"] >= 0).all()  # seconds, as the SDK
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
    assert list(df.columns) == ["x", "st", "took", "res", "out", "exc"]
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
    assert list(with_exc.columns) == ["x", "status", "time", "result", "logs", "exception"]
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
