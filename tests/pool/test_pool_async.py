"""The *_async members of JobPool (API.md §2, seed 001).

Every pool test runs through the ``engine`` fixture, so adding ``"remote"`` to its params runs the
same assertions on a Celery cluster. Entries coordinate with the test through files in a tmp
directory (``gated`` waits for a release file, ``flaky`` leaves markers, ``count_runs`` appends
lines), never through process ids, so nothing here depends on where an entry runs — except the
tests named ``test_local_*``.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest
import udfs_sample as s
from pool_helpers import release, started

import fused_celery as fused
from fused_celery.errors import (
    UdfRuntimeError,
)
from fused_celery.pool import JobPool

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
        assert list(df.columns) == ["x", "status", "time", "result", "out", "exc"]
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
