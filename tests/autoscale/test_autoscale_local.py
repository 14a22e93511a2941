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
from fused_celery.state import workers

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
    workers._served_cache.clear()  # (a positive answer of an earlier test's Redis is kept 5 s)
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
    cost = pool.cost()  # 200 runs of a 1-slot m5.large worker, at the shipped price
    seconds = cost["by_instance_type"]["m5.large"]["instance_seconds"]
    assert seconds >= 200 * 0.01 and cost["unpriced"] == []
    assert cost["total_usd"] == pytest.approx(seconds / 3600 * 0.096)
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


def test_autoscaler_killed_and_restarted_resumes(fast_scaling, redis_url: str, tmp_path: Path):
    """``fused-celery autoscale`` killed (SIGKILL) while its workers run a pool: the workers
    keep going; a new autoscaler adopts them (after the dead one's leader lock expires), the
    pool completes, and the group goes back to zero."""
    import os
    import signal
    import subprocess
    import sys

    import redis as redis_lib
    from autoscale_helpers import WORKER_ENV

    from fused_celery.autoscale.actuators import local_workers
    from fused_celery.cluster.processes import pid_alive

    env = {
        **os.environ,
        **WORKER_ENV,
        "FUSED_CELERY_AUTOSCALE_LEADER_TTL": "2",
        "FUSED_CELERY_AUTOSCALE_DEFAULTS": json.dumps(
            {"max_size": 2, "scale_in_cooldown": 1.0, "idle_before_zero": 2.0}
        ),
        "FUSED_CELERY_CLUSTER_DIR": str(tmp_path / "cluster"),
    }
    command = [sys.executable, "-m", "fused_celery.cli", "autoscale", "--actuator", "local",
               "--queues", QUEUE, "--interval", "0.5"]  # fmt: skip
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)

    def start(log: Path) -> subprocess.Popen:
        with open(log, "w") as fh:
            return subprocess.Popen(command, env=env, stdout=fh, stderr=subprocess.STDOUT)

    first = start(logs[0])
    try:
        deadline = time.monotonic() + 60
        while b'"event": "decision"' not in logs[0].read_bytes():  # the queue is served now
            assert first.poll() is None and time.monotonic() < deadline, logs[0].read_text()
            time.sleep(0.2)
        path = tmp_path / "runs.txt"
        pool = tally.map(list(range(40)), engine=QUEUE, path=str(path), seconds=0.3)
        deadline = time.monotonic() + 90
        while len(executions(path)) < 3:  # workers started and running entries
            assert time.monotonic() < deadline, logs[0].read_text()
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        adopted = local_workers(client, QUEUE)
        assert len(adopted) == 2 and all(pid_alive(p) for p in adopted.values())
        second = start(logs[1])
        try:
            pool.wait(timeout=180)
            assert pool.results() == [2 * x for x in range(40)]
            deadline = time.monotonic() + 60
            while local_workers(client, QUEUE) or any(pid_alive(p) for p in adopted.values()):
                assert time.monotonic() < deadline, logs[1].read_text()
                time.sleep(0.3)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
        lines = [json.loads(x) for x in logs[1].read_text().splitlines() if x.startswith("{")]
        decisions = [x for x in lines if x.get("event") == "decision"]
        assert decisions[0]["current"] == 2  # it resumed from the workers it observed
        assert decisions[-1]["desired"] == 0
        counts = executions(path)
        assert set(counts) == set(range(40)) and set(counts.values()) == {1}
    finally:
        if first.poll() is None:
            first.kill()
