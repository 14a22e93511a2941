"""The autoscaler end to end on this machine: the local actuator starts and stops real
``fused-celery worker`` processes for an instance type's queue, from zero and back to zero.
Executions are counted through the UDF's side-effect file: nothing lost, nothing duplicated."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from autoscale_helpers import executions, kill_recorded_workers, local_scaler, tally

from fused_celery.errors import QueueNotServedError
from fused_celery.options import AutoscaleGroupOptions, options

QUEUE = "m5.large"

pytestmark = pytest.mark.slow


@pytest.fixture
def fast_scaling(fused_options, monkeypatch: pytest.MonkeyPatch, redis_url: str):
    """Seconds, not minutes: cooldown 1 s, idle 2 s; the recorded workers are stopped after."""
    monkeypatch.setattr(options, "autoscale_interval", 0.5)
    monkeypatch.setattr(
        options,
        "autoscale_defaults",
        AutoscaleGroupOptions(max_size=2, scale_in_cooldown=1.0, idle_before_zero=2.0),
    )
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    yield
    kill_recorded_workers(redis_url, [QUEUE])


def _cycle_until(scaler, actuator, predicate, timeout: float, pause: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        scaler.cycle()
        group = actuator.groups()[0]
        if predicate(group):
            return group
        assert time.monotonic() < deadline, f"not reached: {group}"
        time.sleep(pause)


def test_submit_to_a_queue_nothing_serves_fails_fast(fast_scaling):
    started = time.monotonic()
    with pytest.raises(QueueNotServedError, match="m5.large") as caught:
        tally.map([1], engine=QUEUE, path="/dev/null")
    assert "fused-celery worker --queues m5.large" in str(caught.value)
    assert time.monotonic() - started < 10  # not pending forever


def test_zero_to_n_to_zero(fast_scaling, redis_url: str, tmp_path: Path):
    scaler, actuator, out = local_scaler(redis_url, [QUEUE], tmp_path / "workers")
    scaler.cycle()  # no work: nothing runs, but the queue is now served
    assert actuator.groups()[0].current == 0
    path = tmp_path / "runs.txt"
    pool = tally.map(list(range(200)), engine=QUEUE, path=str(path), seconds=0.01)
    scaler.cycle()
    scaler.cycle()
    group = actuator.groups()[0]
    assert group.current == 2  # within two cycles of the submit
    decisions = [json.loads(line) for line in out.getvalue().splitlines()]
    assert any(d["desired"] == 2 and d["acted"] for d in decisions)
    _cycle_until(scaler, actuator, lambda g: pool.done(), timeout=120)
    assert pool.results() == [2 * x for x in range(200)]
    group = _cycle_until(scaler, actuator, lambda g: g.current == 0 and not g.draining, 60)
    assert group.hosts == ()
    counts = executions(path)
    assert set(counts) == set(range(200)) and set(counts.values()) == {1}
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last["idle_instance_seconds_total"] > 0  # idle time is reported apart


def test_scale_in_while_entries_run_drains_the_busy_worker(
    fast_scaling, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    scaler, actuator, _ = local_scaler(redis_url, [QUEUE], tmp_path / "workers")
    scaler.cycle()
    path = tmp_path / "runs.txt"
    pool = tally.map(list(range(8)), engine=QUEUE, path=str(path), seconds=1.5)
    _cycle_until(scaler, actuator, lambda g: g.current == 2, timeout=30)
    _cycle_until(scaler, actuator, lambda g: len(pool.running()) == 2, timeout=90, pause=0.2)
    monkeypatch.setattr(options, "autoscale_groups", {QUEUE: AutoscaleGroupOptions(max_size=1)})
    group = _cycle_until(scaler, actuator, lambda g: g.draining == 1, timeout=10, pause=0.1)
    assert group.current == 1  # one worker leaves while both run an entry: it drains
    _cycle_until(scaler, actuator, lambda g: pool.done(), timeout=120)
    assert pool.results() == [2 * x for x in range(8)]
    counts = executions(path)
    assert set(counts) == set(range(8)) and set(counts.values()) == {1}
