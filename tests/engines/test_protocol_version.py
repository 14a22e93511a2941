"""Message protocol (issue 16, item 2): every task message carries its sender's protocol in a
header; a worker of another protocol refuses it, and the pool's entries (or the job) fail with
a clear error naming both versions, instead of being misread. Real workers on a private Redis.
"""

from __future__ import annotations

import json
import time

import pytest
import redis

import fused_celery as fused
from fused_celery import version
from fused_celery.options import options


@fused.udf
def double(x: int) -> int:
    return 2 * x


@pytest.fixture
def worker(fused_options, celery_workers, monkeypatch):
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    [handle] = celery_workers(n=1, concurrency=1)
    return handle


def test_messages_carry_the_protocol_header(fused_options, redis_url, monkeypatch):
    monkeypatch.setattr(options, "autoscale_submit_check", False)  # m5.large has no worker
    pool = double.map([1], engine="m5.large")  # no worker serves it: the message waits
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while not client.llen("m5.large"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    headers = json.loads(client.lindex("m5.large", 0))["headers"]
    client.close()
    pool.cancel()
    assert headers[version.PROTOCOL_HEADER] == version.PROTOCOL_VERSION
    assert headers[version.VERSION_HEADER] == version.__version__


def test_worker_refuses_a_message_of_another_protocol(worker, monkeypatch):
    assert double.map([1, 2], engine="remote").results() == [2, 4]
    with monkeypatch.context() as other_version:  # (the fixtures' own patches stay)
        other_version.setattr(version, "PROTOCOL_VERSION", version.PROTOCOL_VERSION + 1)
        other_version.setattr(version, "__version__", "9.9.9")
        pool = double.map(list(range(3)), engine="remote")
        pool.wait(timeout=60)
        assert pool.done() and not pool.any_succeeded()
        errors = pool.errors()
        assert sorted(errors) == [0, 1, 2]
        message = str(errors[0])
        assert f"protocol {version.PROTOCOL_VERSION} (fused-celery 9.9.9)" in message, message
        assert "this worker speaks protocol" in message and "same fused-celery version" in message
        assert all(not log for log in pool.logs())  # nothing ran
        assert "refused a message (task fused_celery.run_entries" in worker.log()
    assert double.map([5], engine="remote").results() == [10]  # still serving


def test_protocol_refusal_ignores_other_tasks_and_same_protocol():
    from fused_celery.engines.celery.refused import protocol_refusal

    same = {"task": "fused_celery.run_entries", version.PROTOCOL_HEADER: version.PROTOCOL_VERSION}
    assert protocol_refusal(same) is None
    assert protocol_refusal({"task": "celery.chord_unlock"}) is None
    missing = protocol_refusal({"task": "fused_celery.run_entries"})
    assert missing is not None and "carries no fused-celery message protocol" in str(missing)


def test_a_job_message_of_another_protocol_fails_the_job(worker, monkeypatch, tmp_path):
    import geopandas as gpd
    import numpy as np

    from fused_celery.errors import JobFailedError

    src = gpd.GeoDataFrame(
        {"uid": np.arange(50)},
        geometry=gpd.points_from_xy(np.linspace(0, 1, 50), np.linspace(0, 1, 50)),
        crs=4326,
    )
    monkeypatch.setattr(version, "PROTOCOL_VERSION", version.PROTOCOL_VERSION + 1)
    resp = fused.ingest(src).run_remote(output_table=str(tmp_path / "out"))
    resp.wait_for_job(timeout=120)
    assert resp.status == "Failed"
    with pytest.raises(JobFailedError, match="refused a message of this job") as info:
        resp.get_results()
    assert f"message protocol {version.PROTOCOL_VERSION}" in str(info.value)
    assert not (tmp_path / "out").exists()
