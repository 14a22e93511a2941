"""The loop's leader lock and its dry run (no workers need to start for either)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import redis

from fused_celery.autoscale.actuators import LocalActuator, local_workers
from fused_celery.autoscale.loop import Autoscaler
from fused_celery.engines import PoolSpec
from fused_celery.engines.celery.client import CeleryEngine
from fused_celery.options import options
from fused_celery.state import keys

QUEUE = "r5.large"


def _scaler(redis_url: str, owner: str) -> tuple[Autoscaler, io.StringIO]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    out = io.StringIO()
    actuator = LocalActuator([QUEUE], client)
    return Autoscaler(actuator, broker_url=redis_url, out=out, owner=owner), out


def test_only_the_leader_acts(fused_options, redis_url):
    first, first_out = _scaler(redis_url, "first")
    second, second_out = _scaler(redis_url, "second")
    assert first.cycle()[0]["event"] == "decision"
    standby = second.cycle()[0]
    assert standby["event"] == "standby" and standby["leader"] == "first"
    assert first.cycle()[0]["event"] == "decision"  # renewing its own lock
    first.release()
    assert second.cycle()[0]["event"] == "decision"
    ttl = redis.Redis.from_url(redis_url).pttl(keys.AUTOSCALE_LEADER)
    assert 0 < ttl <= options.autoscale_leader_ttl * 1000


def test_dry_run_decides_and_changes_nothing(fused_options, redis_url, monkeypatch, tmp_path):
    monkeypatch.setattr(options, "autoscale_submit_check", False)
    spec = PoolSpec(
        udf={"name": "u", "entrypoint": "u", "code": "def u(x):\n    return x\n"},
        args=[{"x": i} for i in range(6)],
        encoded=[{"x": {"j": i}} for i in range(6)],
        queue=QUEUE,
    )
    CeleryEngine(spec).submit()
    command = [sys.executable, "-m", "fused_celery.cli", "autoscale", "--actuator", "local",
               "--queues", QUEUE, "--interval", "0.1", "--dry-run", "--cycles", "2"]  # fmt: skip
    env = {**os.environ, "FUSED_CELERY_CLUSTER_DIR": str(tmp_path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert [x["event"] for x in lines] == ["decision", "decision"]
    assert all(x["dry_run"] and not x["acted"] and x["desired"] == 4 for x in lines)
    assert lines[0]["ready"] == 6 and lines[0]["reason"].startswith("scale out")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert local_workers(client, QUEUE) == {}
    assert client.get(keys.AUTOSCALE_LEADER) is None and not client.exists(keys.AUTOSCALE_SERVED)
