"""Timed-out entries really stop (issue "Nothing lost, nothing leaked", 3): with
``n_processes_per_worker > 1`` an entry past its time limit runs on a thread that no signal
stops; its process is replaced by the hard limit, so its side effects stop within it, and the
other entries of the pool finish."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import fused_celery as fused
from fused_celery.options import options

SOFT, HARD = 1.5, 4.0


@fused.udf
def runaway(i: int, path: str = ""):
    import time

    if i != 0:
        return i
    for _ in range(600):  # 60 s, far past the limits, unless its process is stopped
        with open(path, "a") as out:
            out.write(f"{time.time()}\n")
        time.sleep(0.1)
    return -1


def _stamps(path: Path) -> list[float]:
    return [float(x) for x in path.read_text().split()] if path.exists() else []


def _settled(path: Path, quiet: float = 1.0, timeout: float = 60.0) -> list[float]:
    """The side-effect file once it has not grown for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    last = _stamps(path)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = _stamps(path)
        if len(now) == len(last):
            return now
        last = now
    raise AssertionError(f"{path} still grows after {timeout} s: the timed-out entry runs on")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "remote"])
def test_a_timed_out_batched_entry_stops_within_the_hard_limit(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(options, "task_soft_time_limit", SOFT)
    monkeypatch.setattr(options, "task_time_limit", HARD)
    monkeypatch.setattr(options, "cache_dir", str(tmp_path / "cache"))
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    if engine == "remote":
        request.getfixturevalue("fused_options")
        request.getfixturevalue("celery_workers")(n=1, concurrency=2)
    else:
        monkeypatch.setattr(options, "broker_url", None)
    path = tmp_path / "side-effects.txt"
    pool = runaway.map(
        list(range(6)),
        engine=engine,
        n_processes_per_worker=2,
        max_retry=0,
        cache=False,
        path=str(path),
    )
    pool.wait(timeout=60)
    statuses = pool.status()
    assert pool._statuses()[0] == "timeout", statuses
    assert pool._statuses()[1:] == ["success"] * 5, statuses
    assert pool.results(return_exceptions=True)[1:] == [1, 2, 3, 4, 5]
    stamps = _settled(path)
    ran = stamps[-1] - stamps[0]
    print(f"{engine}: side effects for {ran:.2f} s (soft limit {SOFT} s, hard {HARD} s)")
    assert ran < HARD + 2.0
