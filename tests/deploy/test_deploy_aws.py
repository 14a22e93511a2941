"""``fused-celery deploy`` against moto in server mode on 127.0.0.1 (issue 16, items 2 and 3).

boto3 reaches moto through ``AWS_ENDPOINT_URL`` (the ``s3_options`` fixture sets it with test
credentials), as it reaches AWS through its standard chain. moto has no
``StartInstanceRefresh``: that one call is checked with botocore's Stubber
(:func:`test_template_change_refreshes_a_group_with_instances`).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid

import boto3
import pytest
from botocore.stub import Stubber

from fused_celery.deploy import run
from fused_celery.deploy.plan import DRAIN_HOOK, LaunchTemplate
from fused_celery.errors import DeployError
from fused_celery.options import Options
from fused_celery.version import __version__

pytest_plugins = ["moto_server"]

REGION = "us-east-1"
PASSWORD = "s3cret-Pa55word"
BROKER = f"rediss://:{PASSWORD}@broker.internal.example:6380/0"


@pytest.fixture
def aws(s3_options):
    """boto3 clients on the moto server (the environment ``deploy`` sees as well). Group names
    are per queue, not per deployment, so every deployment a test makes is destroyed after it
    (its bucket emptied first)."""
    yield lambda service: boto3.client(service, region_name=REGION)
    for name in _made:
        deployment, changes = run.destroy_changes(deploy_options(name))
        for change in changes:
            if change.resource.kind == "bucket":
                boto3.resource("s3", region_name=REGION).Bucket(
                    change.resource.name
                ).objects.all().delete()
        deployment.apply(changes)
    _made.clear()


_made: list[str] = []


def deploy_options(name: str, **extra) -> Options:
    settings = {
        "deploy_name": name,
        "aws_region": REGION,
        "broker_url": BROKER,
        "deploy_groups": {
            "m5.large": {"max_size": 4, "disk_size_gb": 120},
            "r5.large": {"max_size": 2, "on_demand_percentage": 25, "on_demand_base": 1},
        },
        "deploy_extra_packages": ["rasterio>=1.3"],
    }
    settings.update(extra)
    return Options(**settings)


def _name() -> str:
    name = f"t{uuid.uuid4().hex[:8]}"
    _made.append(name)
    return name


def _groups(aws, deployment: str) -> dict[str, dict]:
    out = {}
    for page in aws("autoscaling").get_paginator("describe_auto_scaling_groups").paginate():
        for g in page["AutoScalingGroups"]:
            tags = {t["Key"]: t["Value"] for t in g["Tags"]}
            if tags.get("fused-celery:deployment") == deployment:
                out[g["AutoScalingGroupName"]] = g
    return out


def _templates(aws, deployment: str) -> dict[str, dict]:
    out = {}
    for lt in aws("ec2").describe_launch_templates()["LaunchTemplates"]:
        tags = {t["Key"]: t["Value"] for t in lt.get("Tags", [])}
        if tags.get("fused-celery:deployment") == deployment:
            out[lt["LaunchTemplateName"]] = lt
    return out


def test_apply_twice_creates_everything_once_with_the_right_settings(aws):
    name = _name()
    opts = deploy_options(name)
    first = run.prepare(opts)
    assert [c.action for c in first.changes] == ["create"] * 8
    run.apply(first)
    again = run.prepare(opts)
    assert again.changes == []  # apply is idempotent: nothing left to change
    run.apply(again)

    groups = _groups(aws, name)
    templates = _templates(aws, name)
    assert sorted(groups) == sorted(templates) == ["fused-celery-m5-large", "fused-celery-r5-large"]

    ec2 = aws("ec2")
    data = ec2.describe_launch_template_versions(
        LaunchTemplateName="fused-celery-m5-large", Versions=["$Default"]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["InstanceType"] == "m5.large"
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 120
    assert data["IamInstanceProfile"]["Name"] == f"{name}-worker"
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    script = base64.b64decode(data["UserData"]).decode()
    assert f"install --no-cache-dir fused-celery=={__version__} 'rasterio>=1.3'\n" in script
    assert "fused-celery worker --queues m5.large" in script
    assert (
        PASSWORD not in script
        and "FUSED_CELERY_BROKER_URL=rediss://broker.internal.example:6380/0" in script
    )

    m5 = groups["fused-celery-m5-large"]
    assert (m5["MinSize"], m5["MaxSize"], m5["DesiredCapacity"]) == (0, 4, 0)
    assert m5["LaunchTemplate"]["LaunchTemplateName"] == "fused-celery-m5-large"
    tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in m5["Tags"]}
    assert tags["fused-celery:managed"] == ("true", True)
    assert tags["fused-celery:queue"] == ("m5.large", True)
    assert tags["fused-celery:deployment"] == (name, True)
    [hook] = aws("autoscaling").describe_lifecycle_hooks(
        AutoScalingGroupName="fused-celery-m5-large"
    )["LifecycleHooks"]
    assert hook["LifecycleHookName"] == DRAIN_HOOK
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["HeartbeatTimeout"] == 3600
    r5 = groups["fused-celery-r5-large"]
    dist = r5["MixedInstancesPolicy"]["InstancesDistribution"]
    assert (dist["OnDemandBaseCapacity"], dist["OnDemandPercentageAboveBaseCapacity"]) == (1, 25)
    assert r5["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"] == [
        {"InstanceType": "r5.large"}
    ]

    [sg] = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"{name}-workers"]}]
    )["SecurityGroups"]
    assert sg["IpPermissions"] == []
    egress = sorted(
        (p["IpProtocol"], p["FromPort"], p["ToPort"], r["CidrIp"])
        for p in sg["IpPermissionsEgress"]
        for r in p["IpRanges"]
    )
    assert egress == [("tcp", 443, 443, "0.0.0.0/0"), ("tcp", 6380, 6380, "0.0.0.0/0")]
    assert data["SecurityGroupIds"] == [sg["GroupId"]]

    param = aws("ssm").get_parameter(
        Name=f"/fused-celery/{name}/broker-password", WithDecryption=True
    )
    assert param["Parameter"]["Type"] == "SecureString" and param["Parameter"]["Value"] == PASSWORD

    iam = aws("iam")
    policy = iam.get_role_policy(RoleName=f"{name}-worker", PolicyName="fused-celery-worker")[
        "PolicyDocument"
    ]
    text = json.dumps(policy)
    assert f"parameter/fused-celery/{name}/broker-password" in text and '"*"' not in text
    profile = iam.get_instance_profile(InstanceProfileName=f"{name}-worker")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [f"{name}-worker"]

    bucket = f"{name}-123456789012-{REGION}"
    tagset = {t["Key"]: t["Value"] for t in aws("s3").get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tagset == {"fused-celery:managed": "true", "fused-celery:deployment": name}
    assert f"FUSED_CELERY_STORAGE_ROOT=s3://{bucket}" in script


def test_changing_an_option_updates_in_place(aws):
    name = _name()
    run.apply(run.prepare(deploy_options(name)))
    changed = deploy_options(
        name,
        deploy_groups={"m5.large": {"max_size": 9, "disk_size_gb": 120}},
        deploy_drain_timeout=900,
        deploy_egress_cidr="10.0.0.0/8",
    )
    plan = run.prepare(changed)
    lines = [str(c) for c in plan.changes]
    assert (
        "~ update group fused-celery-m5-large in us-east-1: max_size: 4 -> 9; "
        "heartbeat_timeout: 3600 -> 900" in lines
    )
    assert (
        "~ update launch_template fused-celery-m5-large in us-east-1: user_data changed" in lines
    )  # stop timeout
    assert any(line.startswith("- delete group fused-celery-r5-large") for line in lines)
    assert any(line.startswith(f"~ update security_group {name}-workers") for line in lines)
    assert not any(c.action == "refresh" for c in plan.changes)  # the group has no instance
    run.apply(plan)
    assert run.prepare(changed).changes == []
    assert sorted(_groups(aws, name)) == ["fused-celery-m5-large"]
    [sg] = aws("ec2").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"{name}-workers"]}]
    )["SecurityGroups"]
    egress = sorted(
        (p["FromPort"], r["CidrIp"]) for p in sg["IpPermissionsEgress"] for r in p["IpRanges"]
    )
    assert egress == [(443, "10.0.0.0/8"), (6380, "10.0.0.0/8")]
    versions = aws("ec2").describe_launch_template_versions(
        LaunchTemplateName="fused-celery-m5-large"
    )
    assert len(versions["LaunchTemplateVersions"]) == 2  # a new version, made the default


def test_template_change_refreshes_a_group_with_instances(aws):
    """moto lacks StartInstanceRefresh: the call is checked with botocore's Stubber."""
    name = _name()
    ami = aws("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    opts = deploy_options(name, deploy_ami_id=ami, deploy_groups={"m5.large": {"max_size": 2}})
    run.apply(run.prepare(opts))
    aws("autoscaling").set_desired_capacity(
        AutoScalingGroupName="fused-celery-m5-large", DesiredCapacity=1
    )
    bigger = deploy_options(
        name, deploy_ami_id=ami, deploy_groups={"m5.large": {"max_size": 2, "disk_size_gb": 300}}
    )
    plan = run.prepare(bigger)
    assert [(c.action, c.resource.kind) for c in plan.changes] == [
        ("update", "launch_template"),
        ("update", "group"),  # its fused-celery:disk-size-gb tag
        ("refresh", "group"),
    ]
    assert "fused-celery:disk-size-gb=300" in str(plan.changes[1])
    *updates, refresh = plan.changes
    plan.aws.apply(updates)
    assert str(refresh) == (
        "↻ refresh group fused-celery-m5-large in us-east-1: replace 1 instance(s), draining each"
    )
    stubbed = boto3.client("autoscaling", region_name=REGION)
    with Stubber(stubbed) as stub:
        stub.add_response(
            "start_instance_refresh",
            {"InstanceRefreshId": "refresh-1"},
            {
                "AutoScalingGroupName": "fused-celery-m5-large",
                "Strategy": "Rolling",
                "Preferences": {
                    "MinHealthyPercentage": 50,
                    "InstanceWarmup": 300,
                    "SkipMatching": True,
                },
            },
        )
        plan.aws._clients[("autoscaling", REGION)] = stubbed
        plan.aws.apply([refresh])
        stub.assert_no_pending_responses()
    data = aws("ec2").describe_launch_template_versions(
        LaunchTemplateName="fused-celery-m5-large", Versions=["$Default"]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 300


def test_destroy_removes_only_what_the_deployment_created(aws):
    name, other = _name(), _name()
    run.apply(run.prepare(deploy_options(name)))
    run.apply(run.prepare(deploy_options(other, deploy_groups={"r5.xlarge": {}})))
    # made by hand: a bucket and a group with a launch template, untagged
    s3, ec2, asg = aws("s3"), aws("ec2"), aws("autoscaling")
    s3.create_bucket(Bucket=f"{name}-by-hand")
    ec2.create_launch_template(
        LaunchTemplateName=f"{name}-by-hand",
        LaunchTemplateData={"InstanceType": "m5.large", "ImageId": "ami-12345678"},
    )
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    asg.create_auto_scaling_group(
        AutoScalingGroupName=f"{name}-by-hand",
        MinSize=0,
        MaxSize=1,
        LaunchTemplate={"LaunchTemplateName": f"{name}-by-hand"},
        VPCZoneIdentifier=subnet,
    )
    aws_, changes = run.destroy_changes(deploy_options(name))
    assert {c.action for c in changes} == {"delete"}
    assert [c.resource.kind for c in changes][:2] == ["group", "group"]  # groups before templates
    aws_.apply(changes)
    assert _groups(aws, name) == {} and _templates(aws, name) == {}
    assert run.destroy_changes(deploy_options(name))[1] == []  # nothing tagged is left
    with pytest.raises(Exception, match="ParameterNotFound"):
        aws("ssm").get_parameter(Name=f"/fused-celery/{name}/broker-password")
    assert not ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"{name}-workers"]}]
    )["SecurityGroups"]
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert f"{name}-by-hand" in buckets and f"{name}-123456789012-{REGION}" not in buckets
    assert asg.describe_auto_scaling_groups(AutoScalingGroupNames=[f"{name}-by-hand"])[
        "AutoScalingGroups"
    ]
    assert sorted(_groups(aws, other)) == ["fused-celery-r5-xlarge"]  # the other deployment stays


def test_destroy_keeps_a_bucket_that_holds_data(aws):
    name = _name()
    run.apply(run.prepare(deploy_options(name)))
    bucket = f"{name}-123456789012-{REGION}"
    aws("s3").put_object(Bucket=bucket, Key="results/x.parquet", Body=b"data")
    deployment, changes = run.destroy_changes(deploy_options(name))
    with pytest.raises(DeployError, match="holds data: it is kept"):
        deployment.apply(changes)
    assert aws("s3").get_object(Bucket=bucket, Key="results/x.parquet")["Body"].read() == b"data"


def test_a_given_bucket_is_used_not_managed(aws, s3_bucket):
    name = _name()
    opts = deploy_options(name, deploy_storage_root=f"{s3_bucket}/fc")
    plan = run.prepare(opts)
    assert "bucket" not in {c.resource.kind for c in plan.changes}
    [lt] = [c.resource for c in plan.changes if isinstance(c.resource, LaunchTemplate)][:1]
    assert f"FUSED_CELERY_STORAGE_ROOT={s3_bucket}/fc\n" in lt.user_data
    run.apply(plan)
    bucket = s3_bucket[5:]
    deployment, changes = run.destroy_changes(opts)
    deployment.apply(changes)
    assert bucket in {b["Name"] for b in aws("s3").list_buckets()["Buckets"]}


def test_wrong_options_are_clear_errors(aws):
    with pytest.raises(DeployError, match="deploy_groups is empty"):
        run.prepare(Options(deploy_name="empty", aws_region=REGION, broker_url=BROKER))
    with pytest.raises(DeployError, match="loopback"):
        run.prepare(deploy_options(_name(), broker_url="redis://127.0.0.1:6379/0"))
    with pytest.raises(DeployError, match="not an s3://bucket"):
        run.prepare(deploy_options(_name(), deploy_storage_root="/data/fused"))
    with pytest.raises(DeployError, match="not whitelisted"):
        run.prepare(deploy_options(_name(), deploy_groups={"t2.nano": {}}))


@pytest.mark.slow
def test_cli_plan_apply_destroy_prints_no_secret(aws, s3_options, clean_env):
    name = _name()
    env = {
        **clean_env,
        **s3_options,
        "FUSED_CELERY_BROKER_URL": BROKER,
        "FUSED_CELERY_DEPLOY_NAME": name,
        "FUSED_CELERY_DEPLOY_GROUPS": json.dumps({"m5.large": {"max_size": 3}}),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fused_celery.cli", "deploy", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    plan = cli("plan")
    assert plan.returncode == 0, plan.stderr
    assert "+ create group fused-celery-m5-large in us-east-1: min 0 max 3" in plan.stdout
    assert "6 change(s)" in plan.stdout
    applied = cli("apply")
    assert applied.returncode == 0, applied.stderr
    again = cli("plan")
    assert "is up to date: nothing to change" in again.stdout
    refused = cli("destroy")
    assert refused.returncode == 1 and "run again with --yes" in refused.stdout
    destroyed = cli("destroy", "--yes")
    assert destroyed.returncode == 0, destroyed.stderr
    assert "- delete group fused-celery-m5-large" in destroyed.stdout
    for result in (plan, applied, again, refused, destroyed):
        assert PASSWORD not in result.stdout + result.stderr
        assert "testing" not in result.stdout + result.stderr  # the credentials
