"""boto3 side of ``deploy``: learn facts, observe a deployment's resources, apply changes.

Credentials, region and endpoints come from boto3's standard chain (``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``..., an instance role; ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``,
which is how the tests point it at moto); none is ever printed. Only resources tagged both
``fused-celery:managed=true`` and ``fused-celery:deployment=<name>`` are observed, so a plan
never changes or deletes anything else.

One concept, hence one module over 600 lines: the AWS side of each resource kind of
:mod:`~fused_celery.deploy.plan` (observe, create, update, delete), kept together so that what is
observed and what is applied stay the same fields. ``StartInstanceRefresh`` is the one call moto
lacks (the tests check it with botocore's Stubber).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote

from fused_celery.deploy.plan import (
    DEPLOYMENT_TAG,
    DRAIN_HOOK,
    IAM_PATH,
    MANAGED_TAG,
    Bucket,
    Change,
    Group,
    InstanceRole,
    LaunchTemplate,
    Parameter,
    RegionFacts,
    Resource,
    SecurityGroup,
    ours,
)
from fused_celery.errors import DeployError

__all__ = ["Aws", "DELETE_RETRY_SECONDS"]

logger = logging.getLogger(__name__)

#: How long a delete waits for a dependency to go (a security group still used by the network
#: interfaces of instances being terminated).
DELETE_RETRY_SECONDS = 600.0

POLICY_NAME = "fused-celery-worker"

TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _pairs(tags: Iterable[dict[str, Any]] | None) -> list[tuple[str, str]]:
    return [(t["Key"], t["Value"]) for t in tags or ()]


def _is_ours(tags: Iterable[tuple[str, str]], name: str) -> bool:
    found = dict(tags)
    return found.get(MANAGED_TAG) == "true" and found.get(DEPLOYMENT_TAG) == name


def _aws_tags(resource: Resource) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in resource.tags]


class Aws:
    """The AWS calls of one deployment.

    name: the deployment's name. session: a ``boto3.session.Session`` (default: a new one,
    boto3's standard chain).
    """

    def __init__(self, name: str, session: Any = None) -> None:
        import boto3

        self.name = name
        self.session = session or boto3.session.Session()
        self._clients: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ clients and facts

    def client(self, service: str, region: str | None = None) -> Any:
        """A cached boto3 client of ``service`` in ``region`` (None: the session's)."""
        key = (service, region or "")
        if key not in self._clients:
            self._clients[key] = self.session.client(service, region_name=region or None)
        return self._clients[key]

    def default_region(self, configured: str | None) -> str:
        """``configured`` (``options.aws_region``), else the session's region; raises
        :class:`DeployError` when neither is set."""
        region = configured or self.session.region_name
        if not region:
            raise DeployError(
                "no AWS region: set FUSED_CELERY_AWS_REGION (or AWS_REGION / AWS_DEFAULT_REGION), "
                "or name one in the queue (m5.large@eu-west-1)"
            )
        return region

    def account(self) -> str:
        """The account id of the credentials (STS GetCallerIdentity)."""
        return self._call("find the AWS account", lambda: self.client("sts").get_caller_identity())[
            "Account"
        ]

    def region_facts(self, region: str, subnet_ids: Sequence[str]) -> RegionFacts:
        """The VPC of ``subnet_ids`` in ``region`` (all in one VPC), or, with none given, the
        default VPC and its default subnets."""
        ec2 = self.client("ec2", region)
        if subnet_ids:
            found = self._call(
                f"describe subnets {', '.join(subnet_ids)} in {region}",
                lambda: ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"],
            )
            vpcs = sorted({s["VpcId"] for s in found})
            if len(vpcs) != 1:
                raise DeployError(
                    f"deploy_subnet_ids of {region} are in {len(vpcs)} VPCs ({', '.join(vpcs)}); "
                    "give subnets of one VPC"
                )
            return RegionFacts(vpcs[0], tuple(sorted(subnet_ids)))
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise DeployError(
                f"{region} has no default VPC: set deploy_subnet_ids, e.g. "
                f'FUSED_CELERY_DEPLOY_SUBNET_IDS=\'{{"{region}": ["subnet-..."]}}\''
            )
        vpc = vpcs[0]["VpcId"]
        subnets = ec2.describe_subnets(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc]},
                {"Name": "default-for-az", "Values": ["true"]},
            ]
        )["Subnets"]
        if not subnets:
            raise DeployError(
                f"the default VPC {vpc} of {region} has no subnet; set deploy_subnet_ids"
            )
        return RegionFacts(vpc, tuple(sorted(s["SubnetId"] for s in subnets)))

    def bucket_state(self, bucket: str) -> str:
        """``missing``, ``ours`` (tagged with this deployment) or ``foreign``."""
        s3 = self.client("s3")
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception as exc:  # noqa: BLE001 - botocore ClientError
            if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                return "missing"
            if _code(exc) in ("403", "Forbidden"):
                raise DeployError(
                    f"bucket {bucket!r} exists but these credentials may not use it; pick "
                    "another deploy_storage_root or deploy_name"
                ) from None
            raise
        return "ours" if _is_ours(self._bucket_tags(bucket), self.name) else "foreign"

    def _bucket_tags(self, bucket: str) -> list[tuple[str, str]]:
        try:
            return _pairs(self.client("s3").get_bucket_tagging(Bucket=bucket)["TagSet"])
        except Exception as exc:  # noqa: BLE001
            if _code(exc) in ("NoSuchTagSet", "NoSuchTagSetError"):
                return []
            raise

    # ------------------------------------------------------------------ observe

    def observe(self, regions: Iterable[str]) -> list[Resource]:
        """Every resource of the deployment in ``regions`` (plus its IAM role and buckets)."""
        found: list[Resource] = []
        found += self._observe_buckets()
        found += self._observe_role()
        for region in sorted(set(regions)):
            found += self._observe_parameters(region)
            groups_sg = self._observe_security_groups(region)
            found += groups_sg
            names = {sg.group_id: sg.name for sg in groups_sg if isinstance(sg, SecurityGroup)}
            found += self._observe_templates(region, names)
            found += self._observe_groups(region)
        return found

    def _observe_buckets(self) -> list[Resource]:
        out: list[Resource] = []
        for b in self.client("s3").list_buckets().get("Buckets", []):
            try:
                tags = self._bucket_tags(b["Name"])
            except Exception as exc:  # noqa: BLE001 - a bucket we may not read is not ours
                logger.debug("bucket %s: tags unreadable (%s)", b["Name"], _code(exc))
                continue
            if _is_ours(tags, self.name):
                where = self.client("s3").get_bucket_location(Bucket=b["Name"])
                found = where.get("LocationConstraint") or "us-east-1"
                out.append(Bucket(region=found, name=b["Name"], tags=ours(tags)))
        return out

    def _observe_role(self) -> list[Resource]:
        iam = self.client("iam")
        out: list[Resource] = []
        for page in iam.get_paginator("list_roles").paginate(PathPrefix=IAM_PATH):
            for role in page["Roles"]:
                tags = _pairs(iam.list_role_tags(RoleName=role["RoleName"])["Tags"])
                if not _is_ours(tags, self.name):
                    continue
                try:
                    doc = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=POLICY_NAME)[
                        "PolicyDocument"
                    ]
                    if isinstance(doc, str):
                        doc = json.loads(unquote(doc))
                    policy = json.dumps(doc, sort_keys=True)
                except Exception as exc:  # noqa: BLE001
                    if _code(exc) != "NoSuchEntity":
                        raise
                    policy = ""
                try:
                    prof = iam.get_instance_profile(InstanceProfileName=role["RoleName"])
                    profile = any(
                        r["RoleName"] == role["RoleName"] for r in prof["InstanceProfile"]["Roles"]
                    )
                except Exception as exc:  # noqa: BLE001
                    if _code(exc) != "NoSuchEntity":
                        raise
                    profile = False
                out.append(
                    InstanceRole(
                        region="",
                        name=role["RoleName"],
                        tags=ours(tags),
                        policy=policy,
                        profile=profile,
                    )
                )
        return out

    def _observe_parameters(self, region: str) -> list[Resource]:
        ssm = self.client("ssm", region)
        out: list[Resource] = []
        path = f"/fused-celery/{self.name}"
        for page in ssm.get_paginator("get_parameters_by_path").paginate(
            Path=path, Recursive=True, WithDecryption=True
        ):
            for p in page["Parameters"]:
                tags = _pairs(
                    ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=p["Name"])[
                        "TagList"
                    ]
                )
                if not _is_ours(tags, self.name):
                    continue
                digest = hashlib.sha256(p["Value"].encode()).hexdigest()
                out.append(Parameter(region=region, name=p["Name"], tags=ours(tags), digest=digest))
        return out

    def _observe_security_groups(self, region: str) -> list[Resource]:
        ec2 = self.client("ec2", region)
        out: list[Resource] = []
        groups = ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{DEPLOYMENT_TAG}", "Values": [self.name]}]
        )["SecurityGroups"]
        for sg in groups:
            tags = _pairs(sg.get("Tags"))
            if not _is_ours(tags, self.name):
                continue
            egress = set()
            for perm in sg.get("IpPermissionsEgress", []):
                for ip in perm.get("IpRanges", []):
                    egress.add((perm["IpProtocol"], int(perm.get("FromPort", -1)), ip["CidrIp"]))
                for ip in perm.get("Ipv6Ranges", []):
                    egress.add((perm["IpProtocol"], int(perm.get("FromPort", -1)), ip["CidrIpv6"]))
            out.append(
                SecurityGroup(
                    region=region,
                    name=sg["GroupName"],
                    tags=ours(tags),
                    vpc_id=sg.get("VpcId", ""),
                    ingress=sum(
                        len(p.get("IpRanges", []))
                        + len(p.get("Ipv6Ranges", []))
                        + len(p.get("UserIdGroupPairs", []))
                        + len(p.get("PrefixListIds", []))
                        for p in sg.get("IpPermissions", [])
                    ),
                    egress=tuple(sorted(egress)),
                    group_id=sg["GroupId"],
                )
            )
        return out

    def _observe_templates(self, region: str, sg_names: dict[str, str]) -> list[Resource]:
        ec2 = self.client("ec2", region)
        out: list[Resource] = []
        for page in ec2.get_paginator("describe_launch_templates").paginate():
            for lt in page["LaunchTemplates"]:
                tags = _pairs(lt.get("Tags"))
                if not _is_ours(tags, self.name):
                    continue
                version = ec2.describe_launch_template_versions(
                    LaunchTemplateId=lt["LaunchTemplateId"], Versions=["$Default"]
                )["LaunchTemplateVersions"][0]
                data = version["LaunchTemplateData"]
                disks = data.get("BlockDeviceMappings") or [{}]
                sgs = data.get("SecurityGroupIds") or []
                user_data = base64.b64decode(data.get("UserData", "")).decode()
                out.append(
                    LaunchTemplate(
                        region=region,
                        name=lt["LaunchTemplateName"],
                        tags=ours(tags),
                        instance_type=data.get("InstanceType", ""),
                        image_id=data.get("ImageId", ""),
                        disk_size_gb=int(disks[0].get("Ebs", {}).get("VolumeSize", 0)),
                        user_data=user_data,
                        security_group=sg_names.get(sgs[0], sgs[0]) if sgs else "",
                        instance_profile=data.get("IamInstanceProfile", {}).get("Name", ""),
                        metadata_hop_limit=int(
                            data.get("MetadataOptions", {}).get("HttpPutResponseHopLimit", 1)
                        ),
                    )
                )
        return out

    def _observe_groups(self, region: str) -> list[Resource]:
        asg = self.client("autoscaling", region)
        out: list[Resource] = []
        for page in asg.get_paginator("describe_auto_scaling_groups").paginate():
            for g in page["AutoScalingGroups"]:
                tags = [(t["Key"], t["Value"]) for t in g.get("Tags", [])]
                if not _is_ours(tags, self.name):
                    continue
                mixed = g.get("MixedInstancesPolicy")
                if mixed:
                    spec = mixed["LaunchTemplate"]["LaunchTemplateSpecification"]
                    dist = mixed.get("InstancesDistribution", {})
                    overrides = mixed["LaunchTemplate"].get("Overrides") or [{}]
                    instance_type = overrides[0].get("InstanceType", "")
                    base = int(dist.get("OnDemandBaseCapacity", 0))
                    pct = int(dist.get("OnDemandPercentageAboveBaseCapacity", 100))
                else:
                    spec = g.get("LaunchTemplate", {})
                    instance_type, base, pct = "", 0, 100
                hooks = asg.describe_lifecycle_hooks(
                    AutoScalingGroupName=g["AutoScalingGroupName"], LifecycleHookNames=[DRAIN_HOOK]
                ).get("LifecycleHooks", [])
                heartbeat = next(
                    (
                        int(h.get("HeartbeatTimeout", 0))
                        for h in hooks
                        if h.get("LifecycleTransition") == "autoscaling:EC2_INSTANCE_TERMINATING"
                    ),
                    0,
                )
                lt_name = spec.get("LaunchTemplateName", "")
                out.append(
                    Group(
                        region=region,
                        name=g["AutoScalingGroupName"],
                        tags=ours(tags),
                        launch_template=lt_name,
                        instance_type=instance_type,
                        min_size=int(g["MinSize"]),
                        max_size=int(g["MaxSize"]),
                        subnets=tuple(
                            sorted(s for s in g.get("VPCZoneIdentifier", "").split(",") if s)
                        ),
                        on_demand_base=base,
                        on_demand_percentage=pct,
                        heartbeat_timeout=heartbeat,
                        instances=len(g.get("Instances", [])),
                    )
                )
        return out

    # ------------------------------------------------------------------ apply

    def apply(
        self,
        changes: Sequence[Change],
        *,
        secret: str | None = None,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        """Run ``changes`` in order (see :func:`~fused_celery.deploy.plan.diff`).

        secret: the broker password for a created/updated :class:`Parameter`. say: called with
        each change's line once it is done. Raises :class:`DeployError` naming the change that
        failed (changes before it stay applied; run ``apply`` again to finish).
        """
        for change in changes:
            r = change.resource
            method = getattr(self, f"_{change.action}_{r.kind}")
            self._call(str(change).split(":")[0], lambda m=method, c=change: m(c, secret))
            say(str(change))

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except DeployError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore errors: name the step and AWS's words
            if type(exc).__module__.startswith(("botocore", "boto3")):
                raise DeployError(f"{what}: {exc}") from None
            raise

    # buckets

    def _create_bucket(self, change: Change, secret: str | None) -> None:
        r = change.resource
        s3 = self.client("s3", r.region)
        kwargs: dict[str, Any] = {"Bucket": r.name}
        if r.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": r.region}
        try:
            s3.create_bucket(**kwargs)
        except Exception as exc:  # noqa: BLE001
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise
        s3.put_public_access_block(
            Bucket=r.name,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        self._update_bucket(change, secret)

    def _update_bucket(self, change: Change, secret: str | None) -> None:
        r = change.resource
        self.client("s3", r.region).put_bucket_tagging(
            Bucket=r.name, Tagging={"TagSet": _aws_tags(r)}
        )

    def _delete_bucket(self, change: Change, secret: str | None) -> None:
        r = change.resource
        s3 = self.client("s3", r.region)
        if s3.list_objects_v2(Bucket=r.name, MaxKeys=1).get("KeyCount", 0):
            logger.warning("kept bucket %s: it holds data (empty it, then destroy again)", r.name)
            raise DeployError(
                f"bucket {r.name} holds data: it is kept (results and tables may be in it). "
                f"Empty it (aws s3 rm --recursive s3://{r.name}) and run destroy again"
            )
        s3.delete_bucket(Bucket=r.name)

    # parameters

    def _create_parameter(self, change: Change, secret: str | None) -> None:
        r = change.resource
        if secret is None:
            raise DeployError(f"no value for the parameter {r.name}")
        self.client("ssm", r.region).put_parameter(
            Name=r.name,
            Value=secret,
            Type="SecureString",
            Description="fused-celery: the broker's password (read by the workers at start)",
            Tags=_aws_tags(r),
        )

    def _update_parameter(self, change: Change, secret: str | None) -> None:
        r = change.resource
        ssm = self.client("ssm", r.region)
        if change.before is not None and change.before.settings().get("digest") != r.settings().get(
            "digest"
        ):
            if secret is None:
                raise DeployError(f"no value for the parameter {r.name}")
            ssm.put_parameter(Name=r.name, Value=secret, Type="SecureString", Overwrite=True)
        ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=r.name, Tags=_aws_tags(r))

    def _delete_parameter(self, change: Change, secret: str | None) -> None:
        r = change.resource
        self.client("ssm", r.region).delete_parameter(Name=r.name)

    # IAM

    def _create_instance_role(self, change: Change, secret: str | None) -> None:
        r = change.resource
        assert isinstance(r, InstanceRole)
        iam = self.client("iam")
        try:
            iam.create_role(
                Path=IAM_PATH,
                RoleName=r.name,
                AssumeRolePolicyDocument=TRUST_POLICY,
                Description="fused-celery workers (created by fused-celery deploy)",
                Tags=_aws_tags(r),
            )
        except Exception as exc:  # noqa: BLE001
            if _code(exc) != "EntityAlreadyExists":
                raise
            raise DeployError(
                f"an IAM role {r.name} exists that this deployment did not create; set "
                "deploy_instance_profile to use it, or choose another deploy_name"
            ) from None
        self._update_instance_role(change, secret)

    def _update_instance_role(self, change: Change, secret: str | None) -> None:
        r = change.resource
        assert isinstance(r, InstanceRole)
        iam = self.client("iam")
        iam.put_role_policy(RoleName=r.name, PolicyName=POLICY_NAME, PolicyDocument=r.policy)
        iam.tag_role(RoleName=r.name, Tags=_aws_tags(r))
        try:
            prof = iam.get_instance_profile(InstanceProfileName=r.name)["InstanceProfile"]
        except Exception as exc:  # noqa: BLE001
            if _code(exc) != "NoSuchEntity":
                raise
            prof = iam.create_instance_profile(
                InstanceProfileName=r.name, Path=IAM_PATH, Tags=_aws_tags(r)
            )["InstanceProfile"]
        if not any(x["RoleName"] == r.name for x in prof.get("Roles", [])):
            iam.add_role_to_instance_profile(InstanceProfileName=r.name, RoleName=r.name)

    def _delete_instance_role(self, change: Change, secret: str | None) -> None:
        r = change.resource
        iam = self.client("iam")

        def gone(fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001
                if _code(exc) != "NoSuchEntity":
                    raise

        gone(
            lambda: iam.remove_role_from_instance_profile(
                InstanceProfileName=r.name, RoleName=r.name
            )
        )
        gone(lambda: iam.delete_instance_profile(InstanceProfileName=r.name))
        gone(lambda: iam.delete_role_policy(RoleName=r.name, PolicyName=POLICY_NAME))
        iam.delete_role(RoleName=r.name)

    # security groups

    def _create_security_group(self, change: Change, secret: str | None) -> None:
        r = change.resource
        assert isinstance(r, SecurityGroup)
        ec2 = self.client("ec2", r.region)
        created = ec2.create_security_group(
            GroupName=r.name,
            Description=f"fused-celery workers of {self.name}: no inbound, broker and HTTPS out",
            VpcId=r.vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": _aws_tags(r)}],
        )
        self._set_egress(ec2, created["GroupId"], r)

    def _update_security_group(self, change: Change, secret: str | None) -> None:
        r = change.resource
        assert isinstance(r, SecurityGroup)
        ec2 = self.client("ec2", r.region)
        sg_id = self._group_id(r.region, r.name)
        ec2.create_tags(Resources=[sg_id], Tags=_aws_tags(r))
        self._set_egress(ec2, sg_id, r)

    def _set_egress(self, ec2: Any, sg_id: str, r: SecurityGroup) -> None:
        """Make the group's rules exactly: no inbound, ``r.egress`` outbound (a new group's
        allow-all egress rule is revoked)."""
        sg = ec2.describe_security_groups(GroupIds=[sg_id])["SecurityGroups"][0]
        if sg.get("IpPermissions"):
            ec2.revoke_security_group_ingress(GroupId=sg_id, IpPermissions=sg["IpPermissions"])
        want, have, revoke = set(r.egress), set(), []
        for perm in sg.get("IpPermissionsEgress", []):
            proto, port = perm["IpProtocol"], int(perm.get("FromPort", -1))
            ports = {k: perm[k] for k in ("FromPort", "ToPort") if k in perm}
            for ip in perm.get("IpRanges", []):
                if (proto, port, ip["CidrIp"]) in want:
                    have.add((proto, port, ip["CidrIp"]))
                else:
                    revoke.append({"IpProtocol": proto, **ports, "IpRanges": [ip]})
            others = {
                k: perm[k]
                for k in ("Ipv6Ranges", "UserIdGroupPairs", "PrefixListIds")
                if perm.get(k)
            }
            if others:
                revoke.append({"IpProtocol": proto, **ports, **others})
        if revoke:
            ec2.revoke_security_group_egress(GroupId=sg_id, IpPermissions=revoke)
        if want - have:
            ec2.authorize_security_group_egress(
                GroupId=sg_id,
                IpPermissions=[
                    {"IpProtocol": p, "FromPort": n, "ToPort": n, "IpRanges": [{"CidrIp": c}]}
                    for p, n, c in sorted(want - have)
                ],
            )

    def _group_id(self, region: str, name: str) -> str:
        found = self.client("ec2", region).describe_security_groups(
            Filters=[
                {"Name": "group-name", "Values": [name]},
                {"Name": f"tag:{DEPLOYMENT_TAG}", "Values": [self.name]},
            ]
        )["SecurityGroups"]
        if not found:
            raise DeployError(f"security group {name} in {region} is gone; run apply again")
        return str(found[0]["GroupId"])

    def _delete_security_group(self, change: Change, secret: str | None) -> None:
        r = change.resource
        assert isinstance(r, SecurityGroup)
        ec2 = self.client("ec2", r.region)
        sg_id = r.group_id or self._group_id(r.region, r.name)
        self._retry_dependency(lambda: ec2.delete_security_group(GroupId=sg_id))

    def _retry_dependency(self, fn: Callable[[], Any]) -> None:
        deadline = time.monotonic() + DELETE_RETRY_SECONDS
        while True:
            try:
                fn()
                return
            except Exception as exc:  # noqa: BLE001
                if _code(exc) not in ("DependencyViolation", "ResourceInUse", "ResourceInUseFault"):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(10)

    # launch templates

    def _template_data(self, r: LaunchTemplate) -> dict[str, Any]:
        sg_id = self._group_id(r.region, r.security_group)
        return {
            "ImageId": r.image_id,
            "InstanceType": r.instance_type,
            "IamInstanceProfile": {"Name": r.instance_profile},
            "SecurityGroupIds": [sg_id],
            "UserData": base64.b64encode(r.user_data.encode()).decode(),
            "BlockDeviceMappings": [
                {
                    "DeviceName": "/dev/xvda",
                    "Ebs": {
                        "VolumeSize": r.disk_size_gb,
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                        "Encrypted": True,
                    },
                }
            ],
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": r.metadata_hop_limit,
            },
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": _aws_tags(r)},
                {"ResourceType": "volume", "Tags": _aws_tags(r)},
            ],
        }

    def _create_launch_template(self, change: Change, secret: str | None) -> None:
        r = change.resource
        assert isinstance(r, LaunchTemplate)
        self.client("ec2", r.region).create_launch_template(
            LaunchTemplateName=r.name,
            VersionDescription=f"fused-celery deploy ({self.name})",
            LaunchTemplateData=self._template_data(r),
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": _aws_tags(r)}],
        )

    def _update_launch_template(self, change: Change, secret: str | None) -> None:
        """A new version, made the default (the group follows ``$Default``)."""
        r = change.resource
        assert isinstance(r, LaunchTemplate)
        ec2 = self.client("ec2", r.region)
        lt = ec2.describe_launch_templates(LaunchTemplateNames=[r.name])["LaunchTemplates"][0]
        version = ec2.create_launch_template_version(
            LaunchTemplateId=lt["LaunchTemplateId"],
            VersionDescription=f"fused-celery deploy ({self.name})",
            LaunchTemplateData=self._template_data(r),
        )["LaunchTemplateVersion"]["VersionNumber"]
        ec2.modify_launch_template(
            LaunchTemplateId=lt["LaunchTemplateId"], DefaultVersion=str(version)
        )
        ec2.create_tags(Resources=[lt["LaunchTemplateId"]], Tags=_aws_tags(r))

    def _delete_launch_template(self, change: Change, secret: str | None) -> None:
        r = change.resource
        self.client("ec2", r.region).delete_launch_template(LaunchTemplateName=r.name)

    # groups

    def _group_settings(self, r: Group) -> dict[str, Any]:
        template = {"LaunchTemplateName": r.launch_template, "Version": "$Default"}
        settings: dict[str, Any] = {
            "MinSize": r.min_size,
            "MaxSize": r.max_size,
            "VPCZoneIdentifier": ",".join(r.subnets),
        }
        if r.on_demand_percentage < 100:
            settings["MixedInstancesPolicy"] = {
                "LaunchTemplate": {
                    "LaunchTemplateSpecification": template,
                    "Overrides": [{"InstanceType": r.instance_type}],
                },
                "InstancesDistribution": {
                    "OnDemandBaseCapacity": r.on_demand_base,
                    "OnDemandPercentageAboveBaseCapacity": r.on_demand_percentage,
                    "SpotAllocationStrategy": "price-capacity-optimized",
                },
            }
            settings["CapacityRebalance"] = True
        else:
            settings["LaunchTemplate"] = template
        return settings

    def _put_hook(self, r: Group) -> None:
        self.client("autoscaling", r.region).put_lifecycle_hook(
            LifecycleHookName=DRAIN_HOOK,
            AutoScalingGroupName=r.name,
            LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
            HeartbeatTimeout=r.heartbeat_timeout,
            DefaultResult="CONTINUE",
        )

    def _group_tags(self, r: Group) -> list[dict[str, Any]]:
        return [
            {
                "ResourceId": r.name,
                "ResourceType": "auto-scaling-group",
                "Key": k,
                "Value": v,
                "PropagateAtLaunch": True,
            }
            for k, v in r.tags
        ]

    def _create_group(self, change: Change, secret: str | None) -> None:
        r = change.resource
        assert isinstance(r, Group)
        self.client("autoscaling", r.region).create_auto_scaling_group(
            AutoScalingGroupName=r.name,
            DesiredCapacity=0,
            Tags=self._group_tags(r),
            **self._group_settings(r),
        )
        self._put_hook(r)

    def _update_group(self, change: Change, secret: str | None) -> None:
        r = change.resource
        assert isinstance(r, Group)
        asg = self.client("autoscaling", r.region)
        settings = self._group_settings(r)
        if "LaunchTemplate" in settings and (
            change.before and change.before.settings().get("on_demand_percentage", 100) < 100
        ):
            settings["CapacityRebalance"] = False
        asg.update_auto_scaling_group(AutoScalingGroupName=r.name, **settings)
        asg.create_or_update_tags(Tags=self._group_tags(r))
        if change.before is not None:
            stale = dict(change.before.tags).keys() - dict(r.tags).keys()
            if stale:
                asg.delete_tags(
                    Tags=[
                        {"ResourceId": r.name, "ResourceType": "auto-scaling-group", "Key": k}
                        for k in stale
                    ]
                )
        self._put_hook(r)

    def _refresh_group(self, change: Change, secret: str | None) -> None:
        """Replace the group's instances with ones of the new launch template version. Each
        instance terminated goes through the drain hook first, so its worker finishes (or hands
        back) its entries."""
        r = change.resource
        self.client("autoscaling", r.region).start_instance_refresh(
            AutoScalingGroupName=r.name,
            Strategy="Rolling",
            Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 300, "SkipMatching": True},
        )

    def _delete_group(self, change: Change, secret: str | None) -> None:
        r = change.resource
        self.client("autoscaling", r.region).delete_auto_scaling_group(
            AutoScalingGroupName=r.name, ForceDelete=True
        )
