"""Graceful drain: metadata notices (a loopback IMDSv2 server), the lifecycle action (botocore's
Stubber: moto has no CompleteLifecycleAction), and a worker that drains on a spot notice while
its pool completes on another worker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import boto3
import pytest
from autoscale_helpers import WORKER_ENV, executions, tally
from botocore.stub import Stubber
from metadata_server import MetadataServer

from fused_celery.autoscale.actuators import Ec2Actuator, Group
from fused_celery.autoscale.drain import DrainWatcher, MetadataClient, complete_lifecycle_action
from fused_celery.options import options

QUEUE = "m5.large"


@pytest.fixture
def metadata():
    server = MetadataServer().start()
    yield server
    server.stop()


def test_metadata_notices(metadata):
    client = MetadataClient(metadata.url + "/a")
    assert client.available() and client.notice() is None
    metadata.lifecycle["a"] = "Terminated"
    assert client.notice().kind == "lifecycle"
    metadata.spot["a"] = {"action": "terminate", "time": "2026-12-06T21:00:00Z"}
    notice = client.notice()
    assert notice.kind == "spot" and "2026-12-06T21:00:00Z" in notice.detail
    assert client.instance_id() == "i-a"
    assert all("X-aws" not in r for r in metadata.requests)  # (headers, not paths)
    assert metadata.requests.count("PUT /a/latest/api/token") == 1  # the token is reused
    assert not MetadataClient("http://127.0.0.1:9", timeout=0.5).available()


def test_watcher_calls_back_once(metadata):
    seen = []
    done = threading.Event()
    watcher = DrainWatcher(
        MetadataClient(metadata.url + "/b"), 0.05, lambda n: (seen.append(n), done.set())
    ).start()
    time.sleep(0.3)
    assert not seen
    metadata.spot["b"] = {"action": "stop", "time": "soon"}
    assert done.wait(10)
    time.sleep(0.3)
    watcher.stop()
    assert len(seen) == 1 and seen[0].kind == "spot"


def _autoscaling():
    return boto3.client(
        "autoscaling", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )


def test_complete_lifecycle_action_with_stubber():
    """moto has no CompleteLifecycleAction: the calls are checked with botocore's Stubber."""
    client = _autoscaling()
    with Stubber(client) as stub:
        stub.add_response(
            "describe_auto_scaling_instances",
            {"AutoScalingInstances": [{
                "InstanceId": "i-1", "AutoScalingGroupName": "fused-celery-m5-large",
                "AvailabilityZone": "us-east-1a", "LifecycleState": "Terminating:Wait",
                "HealthStatus": "HEALTHY", "ProtectedFromScaleIn": False,
            }]},
            {"InstanceIds": ["i-1"]},
        )  # fmt: skip
        stub.add_response(
            "complete_lifecycle_action",
            {},
            {
                "LifecycleHookName": "fused-celery-drain",
                "AutoScalingGroupName": "fused-celery-m5-large",
                "LifecycleActionResult": "CONTINUE",
                "InstanceId": "i-1",
            },
        )
        assert complete_lifecycle_action("i-1", "fused-celery-drain", client=client)
        stub.add_response(
            "describe_auto_scaling_instances",
            {"AutoScalingInstances": []},
            {"InstanceIds": ["i-2"]},
        )
        assert not complete_lifecycle_action("i-2", "fused-celery-drain", client=client)
        stub.assert_no_pending_responses()


def test_autoscaler_completes_lifecycle_of_drained_instances_with_stubber():
    """An instance in Terminating:Wait whose worker left is let go; one whose worker still
    runs is not (Stubber: moto has neither lifecycle wait states nor CompleteLifecycleAction)."""
    autoscaling = _autoscaling()
    ec2 = boto3.client(
        "ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    actuator = Ec2Actuator(autoscaling=autoscaling, ec2=ec2, cloudwatch=object())
    group = Group(QUEUE, "fused-celery-m5-large", 2, 0, 4, 2, draining=2)
    actuator._raw[QUEUE] = {"Instances": [
        {"InstanceId": "i-gone", "LifecycleState": "Terminating:Wait"},
        {"InstanceId": "i-busy", "LifecycleState": "Terminating:Wait"},
    ]}  # fmt: skip
    with Stubber(autoscaling) as a_stub, Stubber(ec2) as e_stub:
        e_stub.add_response(
            "describe_instances",
            {"Reservations": [{"Instances": [
                {"InstanceId": "i-gone", "PrivateDnsName": "ip-10-0-0-1.ec2.internal"},
                {"InstanceId": "i-busy", "PrivateDnsName": "ip-10-0-0-2.ec2.internal"},
            ]}]},
            {"InstanceIds": ["i-gone", "i-busy"]},
        )  # fmt: skip
        a_stub.add_response(
            "complete_lifecycle_action",
            {},
            {
                "LifecycleHookName": options.drain_lifecycle_hook,
                "AutoScalingGroupName": "fused-celery-m5-large",
                "LifecycleActionResult": "CONTINUE",
                "InstanceId": "i-gone",
            },
        )
        done = actuator.complete_drained(group, ["m5.large-12@ip-10-0-0-2.ec2.internal"])
        assert done == ["i-gone"]
        a_stub.assert_no_pending_responses()


@pytest.mark.slow
def test_spot_notice_mid_pool_drains_the_worker(
    fused_options, celery_workers, metadata, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    base = {
        **WORKER_ENV,
        "FUSED_CELERY_DRAIN_WATCH": "1",
        "FUSED_CELERY_DRAIN_POLL_INTERVAL": "0.2",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    [noticed] = celery_workers(
        1, queues=(QUEUE,), env={**base, "FUSED_CELERY_DRAIN_METADATA_URL": metadata.url + "/w1"}
    )
    [other] = celery_workers(
        1, queues=(QUEUE,), env={**base, "FUSED_CELERY_DRAIN_METADATA_URL": metadata.url + "/w2"}
    )
    path = tmp_path / "runs.txt"
    pool = tally.map(list(range(30)), engine=QUEUE, path=str(path), seconds=0.3)
    deadline = time.monotonic() + 60
    while sum(executions(path).values()) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    metadata.spot["w1"] = {"action": "terminate", "time": "2026-12-06T21:02:00Z"}
    deadline = time.monotonic() + 60
    while noticed.alive():
        assert time.monotonic() < deadline, noticed.log()[-3000:]
        time.sleep(0.1)
    assert "spot interruption" in noticed.log()
    pool.wait(timeout=120)
    assert other.alive()
    assert pool.results() == [2 * x for x in range(30)]
    counts = executions(path)
    assert set(counts) == set(range(30)) and set(counts.values()) == {1}
    hosts = set(pool._engine.hosts().values())
    assert other.hostname in hosts  # the pool completed on the other worker
    assert "GET /w1/latest/meta-data/instance-id" in metadata.requests  # then the lifecycle
