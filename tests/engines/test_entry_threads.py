"""How a message's entries share its threads (``worker._run``): drains are added one at a time,
yet entries that block still run ``threads`` at once, and never more."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fused_celery.engines.celery import worker

# The UDF blocks on a barrier shared through a module the test puts in ``sys.modules``.
UDF = {
    "name": "meet",
    "entrypoint": "meet",
    "code": (
        "def meet(x=0):\n"
        "    import entry_threads_probe as p\n"
        "    with p.lock:\n"
        "        p.now += 1\n"
        "        p.peak = max(p.peak, p.now)\n"
        "    try:\n"
        "        p.barrier.wait(timeout=30)\n"
        "    finally:\n"
        "        with p.lock:\n"
        "            p.now -= 1\n"
        "    return x\n"
    ),
}


class _Probe:
    def __init__(self, parties: int) -> None:
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(parties)
        self.now = 0
        self.peak = 0


class _Recorder:
    def __init__(self) -> None:
        self.outcomes: dict[int, Any] = {}

    def add(self, pos: int, out: Any, status: Any = None, stored: Any = None) -> None:
        self.outcomes[pos] = out

    def tick(self) -> None:
        pass


@pytest.mark.parametrize(("threads", "n"), [(4, 4), (3, 12), (16, 64)])
def test_blocking_entries_run_threads_at_once_and_no_more(
    threads: int, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every group of ``threads`` entries meets at a barrier of ``threads`` parties: the batch
    finishes only if that many run at once (the barrier times out otherwise), and the peak
    count of running entries is exactly ``threads``."""
    import sys

    probe = _Probe(threads)
    monkeypatch.setitem(sys.modules, "entry_threads_probe", probe)
    recorder = _Recorder()
    items = [(i, {"x": {"j": i}}) for i in range(n)]
    assert worker._run(UDF, items, threads, recorder, 60.0) is None  # type: ignore[arg-type]
    assert sorted(recorder.outcomes) == list(range(n))
    assert all(out["ok"] for out in recorder.outcomes.values()), recorder.outcomes
    assert [recorder.outcomes[i]["value"] for i in range(n)] == [{"j": i} for i in range(n)]
    assert probe.peak == threads
