"""How entries run: the result cache, batches (n_processes_per_worker), max_workers.

Every pool test runs through the ``engine`` fixture, so adding ``"remote"`` to its params runs the
same assertions on a Celery cluster. Entries coordinate with the test through files in a tmp
directory (``gated`` waits for a release file, ``flaky`` leaves markers, ``count_runs`` appends
lines), never through process ids, so nothing here depends on where an entry runs — except the
tests named ``test_local_*``.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
import udfs_sample as s
from pool_helpers import release, runs, started, wait_until


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


def test_batched_entries_run_in_parallel(engine: str, gate: Path) -> None:
    """Four entries on one process with four threads are all running at once (each waits for
    its gate), whatever the machine's load."""
    pool = s.gated.map(
        [0, 1, 2, 3], gate=str(gate), engine=engine, max_workers=1, n_processes_per_worker=4
    )
    wait_until(lambda: all(started(gate, i) for i in range(4)), timeout=60, what="all started")
    release(gate)
    assert pool.results() == [0, 1, 2, 3]


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
