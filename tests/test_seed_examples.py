"""Every example of seed 001 (the JobPool doc), as written, with ``import fused_celery as fused``.

The examples use the default engine; with no broker configured that is ``local`` (API.md §2), so
each test runs with no cluster configured.
"""

from __future__ import annotations

import asyncio
import inspect
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

import fused_celery as fused
from fused_celery.options import options


@fused.udf
def my_udf(x: int):
    return x**2


@pytest.fixture(autouse=True)
def _no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "broker_url", None)
    monkeypatch.setattr(options, "default_engine", None)
    monkeypatch.setattr(options, "cache_dir", str(tmp_path / "cache"))
    assert options.resolved_default_engine == "local"


def test_basic_usage() -> None:
    # Create a pool of jobs
    pool = my_udf.map([1, 2, 3, 4, 5])

    # Wait and collect results as DataFrame
    df = pool.collect()

    # Or get raw results as list
    pool.wait()
    results = pool.results()  # [1, 4, 9, 16, 25]

    assert results == [1, 4, 9, 16, 25]
    assert isinstance(df, pd.DataFrame)
    assert df.index.name == "x" and df.index.tolist() == [1, 2, 3, 4, 5]
    assert df["result"].tolist() == [1, 4, 9, 16, 25]


def test_monitoring_progress(capsys: pytest.CaptureFixture[str]) -> None:
    pool = my_udf.map(range(100))

    # Show live progress
    pool.tail()

    # Check status
    status = pool.status()  # Series of status counts
    all_ok = pool.all_succeeded()  # True if all jobs succeeded
    failed = pool.any_failed()  # True if any job failed

    out = capsys.readouterr().out
    assert out.count("] Run #") == 100 and "End of tail" in out
    assert isinstance(status, pd.Series) and status.to_dict() == {"success": 100}
    assert all_ok is True and failed is False


def test_parallel_processing_within_workers() -> None:
    # Process 4 items in parallel within each UDF instance
    pool = my_udf.map(range(1000), n_processes_per_worker=4)
    df = pool.collect()

    assert len(df) == 1000
    assert df["result"].tolist() == [x**2 for x in range(1000)]
    assert pool.status().to_dict() == {"success": 1000}


def test_local_engine_execution() -> None:
    pool = my_udf.map([1, 2, 3], engine="local")
    df = pool.collect()  # Pool automatically shuts down after collecting

    assert df["result"].tolist() == [1, 4, 9]
    assert not pool._engine._workers  # no worker process left


def test_async_methods(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> dict:
        pool = await my_udf.map_async([1, 2, 3])

        await pool.wait_async()
        results = await pool.results_async()
        results_now = await pool.results_now_async()
        errors = await pool.errors_async()
        first_error = await pool.first_error_async()
        logs = await pool.logs_async()
        first_log = await pool.first_log_async()
        logs_df = await pool.logs_df_async()
        success = await pool.success_async()
        await pool.tail_async()
        await pool.cancel_async()
        return {
            "results": results,
            "results_now": results_now,
            "errors": errors,
            "first_error": first_error,
            "logs": logs,
            "first_log": first_log,
            "logs_df": logs_df,
            "success": success,
        }

    got = asyncio.run(main())
    assert got["results"] == [1, 4, 9]
    assert got["results_now"] == {0: 1, 1: 4, 2: 9}
    assert got["errors"] == {} and got["first_error"] is None
    assert got["logs"] == ["", "", ""] and got["first_log"] == ""
    assert got["logs_df"]["result"].tolist() == [1, 4, 9]
    assert got["success"] == {0: 1, 1: 4, 2: 9}
    out = capsys.readouterr().out
    assert "End of tail" in out and "Cancelled 0 pending job(s)" in out


# The reference section: every member with its documented signature and return type.

DOCUMENTED_SIGNATURES = {
    "all_succeeded": [],
    "any_failed": [],
    "any_succeeded": [],
    "arg_df": [],
    "cancel": [("wait", False)],
    "cancelled": [],
    "collect": [("ignore_exceptions", False), ("flatten", True), ("drop_index", False)],
    "df": [("ignore_exceptions", False), ("flatten", True), ("drop_index", False)],
    "done": [],
    "errors": [],
    "first_error": [],
    "first_log": [],
    "logs": [],
    "logs_df": [
        ("status_column", "status"),
        ("result_column", "result"),
        ("time_column", "time"),
        ("logs_column", "logs"),
        ("exception_column", None),
        ("include_exceptions", True),
    ],
    "pending": [],
    "results": [("return_exceptions", False)],
    "results_now": [("return_exceptions", False)],
    "retry": [],
    "running": [],
    "shutdown": [("wait", True)],
    "status": [],
    "success": [],
    "tail": [("stop_on_exception", False)],
    "times": [],
    "total_time": [("since_retry", False)],
    "wait": [],
}


@pytest.mark.parametrize("member", sorted(DOCUMENTED_SIGNATURES))
def test_documented_signature(member: str) -> None:
    params = list(inspect.signature(getattr(fused.JobPool, member)).parameters.values())[1:]
    documented = DOCUMENTED_SIGNATURES[member]
    assert [(p.name, p.default) for p in params[: len(documented)]] == documented
    # anything beyond the documented parameters is optional
    assert all(p.default is not inspect.Parameter.empty for p in params[len(documented) :])


def test_reference_members_as_documented(capsys: pytest.CaptureFixture[str]) -> None:
    @fused.udf
    def sometimes(x: int):
        print(f"x is {x}")
        if x == 3:
            raise ValueError("three")
        return x * 10

    pool = sometimes.map([1, 2, 3, 4], max_retry=0)
    assert pool.n_jobs == 4
    pool.wait()
    assert pool.done() is True
    assert pool.all_succeeded() is False
    assert pool.any_failed() is True
    assert pool.any_succeeded() is True
    arg_df = pool.arg_df()
    assert isinstance(arg_df, pd.DataFrame) and arg_df["x"].tolist() == [1, 2, 3, 4]
    assert pool.cancelled() == {} and pool.pending() == {} and pool.running() == {}
    errors = pool.errors()
    assert list(errors) == [2] and isinstance(errors[2], Exception)
    assert isinstance(pool.first_error(), Exception)
    assert pool.first_log() == "x is 1\n"
    assert pool.logs() == [f"x is {x}\n" for x in (1, 2, 3, 4)]
    logs_df = pool.logs_df(
        status_column="status",
        result_column="result",
        time_column="time",
        logs_column="logs",
        exception_column=None,
        include_exceptions=True,
    )
    assert list(logs_df.columns) == ["x", "status", "time", "result", "logs"]
    results = pool.results(return_exceptions=True)
    assert results[:2] == [10, 20] and isinstance(results[2], Exception)
    assert pool.results_now(return_exceptions=True)[3] == 40
    assert pool.success() == {0: 10, 1: 20, 3: 40}
    assert pool.status().to_dict() == {"success": 3, "error": 1}
    times = pool.times()
    assert len(times) == 4 and all(isinstance(t, timedelta) for t in times)
    assert isinstance(pool.total_time(since_retry=False), timedelta)
    pool.tail(stop_on_exception=False)
    assert "End of tail" in capsys.readouterr().out
    pool.retry()
    pool.wait()
    assert pool.status().to_dict() == {"success": 3, "error": 1}
    assert isinstance(pool.total_time(since_retry=True), timedelta)
    df = pool.collect(ignore_exceptions=True, flatten=True, drop_index=False)
    assert df.index.tolist() == [1, 2, 4]
    alias = pool.df(ignore_exceptions=True, flatten=True, drop_index=True)
    assert alias.index.tolist() == [0, 1, 3]
    pool.cancel(wait=False)
    pool.shutdown(wait=True)


def test_enable_tqdm_option(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    @fused.udf
    def slow(x: int):
        import time

        time.sleep(0.3)
        return x

    monkeypatch.setattr(fused.options.show, "enable_tqdm", False)
    slow.map([1, 2]).wait()
    assert "2/2" not in capsys.readouterr().err
    monkeypatch.setattr(fused.options.show, "enable_tqdm", True)
    slow.map([3, 4]).wait()
    assert "2/2" in capsys.readouterr().err
