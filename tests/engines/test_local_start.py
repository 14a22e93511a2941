"""The local engine's worker processes, forked (``local_start_method`` "fork", and "auto" from a
one-thread caller) or fresh interpreters ("spawn"): same results, and the same behaviour when an
entry kills its process, overruns its time limit or is cancelled; no worker outlives its pool."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import udfs_sample as s

from fused_celery.cluster.processes import descendants
from fused_celery.engines.local_process import can_fork
from fused_celery.errors import UdfTimeoutError, UdfWorkerLostError
from fused_celery.options import options


@pytest.fixture(params=["fork", "spawn"])
def method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path) -> str:
    monkeypatch.setattr(options, "local_start_method", request.param)
    monkeypatch.setattr(options, "cache_dir", str(tmp_path / "udf-cache"))
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    return request.param


def children() -> set[int]:
    """The live (not zombie) descendants of this process."""
    return set(descendants(os.getpid()))


def wait_until(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_results_and_how_the_workers_started(method: str) -> None:
    before = children()
    pool = s.started_as.map(list(range(20)), engine="local", max_workers=2)
    assert pool.results() == [method] * 20
    assert wait_until(lambda: children() <= before), children() - before  # none outlives it
    assert s.square.map(list(range(50)), engine="local").results() == [i * i for i in range(50)]


def test_an_entry_that_kills_its_process_fails_alone(method: str) -> None:
    pool = s.die_on.map(list(range(40)), bad=25, engine="local", max_retry=1)
    pool.wait()
    errors = pool.errors()
    assert list(errors) == [25] and isinstance(errors[25], UdfWorkerLostError)
    assert pool.status().to_dict() == {"success": 39, "error": 1}


def test_timeout_kills_the_worker_and_the_rest_finishes(method: str, monkeypatch, tmp_path):
    monkeypatch.setattr(options, "task_time_limit", 3.0)
    pool = s.slow_once.map([0, 1, 2], path=str(tmp_path), engine="local", max_retry=0)
    pool.wait()
    assert pool.status().to_dict() == {"success": 2, "timeout": 1}
    assert isinstance(pool.errors()[1], UdfTimeoutError)


def test_cancel_stops_pending_entries(method: str) -> None:
    pool = s.sleeper.map(list(range(40)), seconds=0.2, engine="local", max_workers=2)
    time.sleep(0.3)
    pool.cancel()
    pool.wait()
    counts = pool.status().to_dict()
    assert counts.get("cancelled", 0) > 0 and sum(counts.values()) == 40


def test_auto_forks_only_from_a_one_thread_process() -> None:
    assert not can_fork("spawn")
    assert can_fork("fork")
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not can_fork("auto")  # a second thread: a fresh interpreter instead
    finally:
        stop.set()
        other.join()
    assert can_fork("auto") == (threading.active_count() == 1)


def test_a_forked_worker_writes_nothing_twice_and_auto_forks_in_a_script(tmp_path) -> None:
    """A caller's unflushed output is not written again by its forked workers; a plain script
    (one thread) gets forked workers with the default start method."""
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.path.insert(0, sys.argv[1])
            import udfs_sample as s
            print("before the map", end="")  # unflushed when the workers start
            print(s.started_as.map(list(range(6)), engine="local").results())
            """
        )
    )
    tests_dir = os.path.dirname(os.path.dirname(__file__))
    out = subprocess.run(
        [sys.executable, str(script), tests_dir],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.count("before the map") == 1, out
    assert "['fork', 'fork', 'fork', 'fork', 'fork', 'fork']" in out
