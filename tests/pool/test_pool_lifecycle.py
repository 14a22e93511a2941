"""A pool's life: retry, cancel, shutdown, automatic retries (max_retry) (API.md §2, seed 001).

Every pool test runs through the ``engine`` fixture, so adding ``"remote"`` to its params runs the
same assertions on a Celery cluster. Entries coordinate with the test through files in a tmp
directory (``gated`` waits for a release file, ``flaky`` leaves markers, ``count_runs`` appends
lines), never through process ids, so nothing here depends on where an entry runs — except the
tests named ``test_local_*``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import udfs_sample as s
from pool_helpers import release, runs, started, wait_until

from fused_celery.errors import (
    CancelledError,
)


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
