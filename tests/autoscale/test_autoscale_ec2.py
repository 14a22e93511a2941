"""The EC2 actuator against moto in server mode on 127.0.0.1 (reached via AWS_ENDPOINT_URL):
groups found by tag, desired capacity, scale-in protection of busy instances, the launch
template's disk size, backlog metrics in CloudWatch; and the loop publishing the served queue."""

from __future__ import annotations

import io
import json
import uuid

import boto3
import pytest

from fused_celery.autoscale.actuators import MANAGED_TAG, QUEUE_TAG, Ec2Actuator
from fused_celery.autoscale.loop import Autoscaler
from fused_celery.errors import DiskSizeError
from fused_celery.state import workers

pytest_plugins = ["moto_server"]

QUEUE = "m5.large@us-east-1"


def _clients():
    return {name: boto3.client(name) for name in ("autoscaling", "ec2", "cloudwatch")}


@pytest.fixture
def aws(s3_options):
    """boto3 clients on the moto server, and a tagged group (max 4, desired 0) with a launch
    template of a 75 GB disk; a second, untagged group that must be left alone."""
    clients = _clients()
    ec2, asg = clients["ec2"], clients["autoscaling"]
    tag = uuid.uuid4().hex[:8]
    template = ec2.create_launch_template(
        LaunchTemplateName=f"lt-{tag}",
        LaunchTemplateData={
            "ImageId": "ami-12c6146b",
            "InstanceType": "m5.large",
            "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 75}}],
        },
    )["LaunchTemplate"]
    name = f"fused-celery-{tag}"
    for group, tags in ((name, True), (f"other-{tag}", False)):
        asg.create_auto_scaling_group(
            AutoScalingGroupName=group,
            LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "1"},
            MinSize=0,
            MaxSize=4,
            DesiredCapacity=0,
            AvailabilityZones=["us-east-1a"],
            Tags=[
                {"Key": MANAGED_TAG, "Value": "true", "PropagateAtLaunch": True},
                {"Key": QUEUE_TAG, "Value": QUEUE, "PropagateAtLaunch": True},
            ]
            if tags
            else [],
        )
    yield clients, name
    for group in (name, f"other-{tag}"):
        asg.delete_auto_scaling_group(AutoScalingGroupName=group, ForceDelete=True)


def _ours(actuator, name):
    return [g for g in actuator.groups() if g.name == name]


def test_desired_capacity_and_protection(aws):
    clients, name = aws
    actuator = Ec2Actuator()
    [group] = _ours(actuator, name)
    assert (group.queue, group.current, group.max_size) == (QUEUE, 0, 4)
    assert group.slots == 2 and group.disk_size_gb == 75
    actuator.set_capacity(group, 2, [])
    [group] = _ours(actuator, name)
    assert group.current == 2 and len(group.hosts) == 2
    described = clients["ec2"].describe_instances(InstanceIds=list(group.hosts))
    dns = {
        i["InstanceId"]: i["PrivateDnsName"]
        for r in described["Reservations"]
        for i in r["Instances"]
    }
    busy_id, idle_id = sorted(dns)
    busy_worker = f"{QUEUE}-123@{dns[busy_id]}"
    actuator.protect(group, [busy_worker])

    def protected():
        raw = clients["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        return {
            i["InstanceId"]: i["ProtectedFromScaleIn"]
            for i in raw["AutoScalingGroups"][0]["Instances"]
        }

    assert protected() == {busy_id: True, idle_id: False}
    [group] = _ours(actuator, name)
    actuator.protect(group, [])  # idle again: the protection is lifted
    assert protected() == {busy_id: False, idle_id: False}
    actuator.set_capacity(group, 0, [])
    assert _ours(actuator, name)[0].current == 0


def test_loop_on_moto_publishes_served_queue_and_metrics(aws, fused_options, redis_url):
    clients, name = aws
    workers._served_cache.clear()
    out = io.StringIO()
    scaler = Autoscaler(Ec2Actuator(), broker_url=redis_url, out=out)
    scaler.cycle()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    ours = [x for x in lines if x.get("group") == name]
    assert ours and ours[0]["desired"] == 0 and ours[0]["reason"].startswith("steady")
    served = workers.served(scaler.client, QUEUE)
    assert served is not None and served.disk_size_gb == 75
    workers.check_queue(QUEUE, 50)  # served (no worker yet) and the disk is large enough
    workers._served_cache.clear()
    with pytest.raises(DiskSizeError, match="75"):
        workers.check_queue(QUEUE, 100)
    metrics = clients["cloudwatch"].list_metrics(Namespace="FusedCelery")["Metrics"]
    assert {m["MetricName"] for m in metrics} >= {"Ready", "InFlight", "DesiredCapacity"}
