"""The pure part of deploy (issue 16, item 2): desired resources and the diff against observed."""

from __future__ import annotations

import dataclasses

from fused_celery.deploy.plan import (
    Deployment,
    Group,
    GroupRequest,
    LaunchTemplate,
    Parameter,
    RegionFacts,
    SecurityGroup,
    desired,
    diff,
    group_name,
)


def _deployment(**changes) -> Deployment:
    request = GroupRequest(
        queue="m5.large",
        region="us-east-1",
        instance_type="m5.large",
        max_size=3,
        disk_size_gb=100,
        on_demand_base=0,
        on_demand_percentage=100,
        user_data="#!/bin/bash\n",
    )
    base = Deployment(
        name="demo",
        groups=(request,),
        regions={"us-east-1": RegionFacts("vpc-1", ("subnet-b", "subnet-a"))},
        image_id="ami-1",
        bucket=("demo-1-us-east-1", "us-east-1"),
        parameter=("/fused-celery/demo/broker-password", "digest-1"),
        role_policy='{"Version": "2012-10-17"}',
        instance_profile="demo-worker",
        egress=(("tcp", 443, "0.0.0.0/0"), ("tcp", 6379, "0.0.0.0/0")),
        drain_timeout=600,
    )
    return dataclasses.replace(base, **changes)


def test_group_names_follow_the_queue():
    assert group_name("m5.large") == "fused-celery-m5-large"
    assert (
        group_name("m5.large@eu-west-1:org/img.v2") == "fused-celery-m5-large-eu-west-1-org-img-v2"
    )


def test_desired_in_apply_order_and_nothing_to_do_when_observed_matches():
    want = desired(_deployment())
    assert [r.kind for r in want] == [
        "bucket",
        "parameter",
        "instance_role",
        "security_group",
        "launch_template",
        "group",
    ]
    group = want[-1]
    assert isinstance(group, Group) and group.subnets == ("subnet-a", "subnet-b")
    assert dict(group.tags)["fused-celery:queue"] == "m5.large"
    assert diff(want, want) == []
    assert [c.action for c in diff(want, [])] == ["create"] * 6


def test_a_template_change_refreshes_only_a_group_with_instances():
    have = desired(_deployment())
    want = desired(_deployment(image_id="ami-2"))
    assert [(c.action, c.resource.kind) for c in diff(want, have)] == [
        ("update", "launch_template")
    ]
    busy = [dataclasses.replace(r, instances=2) if isinstance(r, Group) else r for r in have]
    changes = diff(want, busy)
    assert [(c.action, c.resource.kind) for c in changes] == [
        ("update", "launch_template"),
        ("refresh", "group"),
    ]
    assert str(changes[0]) == (
        "~ update launch_template fused-celery-m5-large in us-east-1: image_id: ami-1 -> ami-2"
    )


def test_deletes_come_last_groups_first_and_a_secret_is_never_shown():
    have = desired(_deployment())
    want = desired(_deployment(parameter=("/fused-celery/demo/broker-password", "digest-2")))
    [change] = diff(want, have)
    assert str(change) == (
        "~ update parameter /fused-celery/demo/broker-password in us-east-1: new value"
    )
    gone = diff([], have)
    assert [c.resource.kind for c in gone] == [
        "group",
        "launch_template",
        "security_group",
        "instance_role",
        "parameter",
        "bucket",
    ]
    assert all(c.action == "delete" for c in gone)
    assert not any("digest" in str(c) for c in gone)


def test_a_security_group_moving_vpc_is_replaced():
    have = desired(_deployment())
    moved = desired(_deployment(regions={"us-east-1": RegionFacts("vpc-2", ("subnet-c",))}))
    changes = [c for c in diff(moved, have) if isinstance(c.resource, SecurityGroup)]
    assert [c.action for c in changes] == ["delete", "create"]
    assert isinstance(moved[4], LaunchTemplate) and isinstance(moved[1], Parameter)
