"""The deployment plan: the AWS resources a deployment needs, and the changes that get there.

Pure (no I/O): :func:`desired` turns a :class:`Deployment` (the deploy options, resolved with
a few facts about the account by :mod:`fused_celery.deploy.config`) into typed resource specs;
:func:`diff` compares them with the resources observed in AWS (:mod:`fused_celery.deploy.aws`
builds the same types from what AWS reports) and lists the :class:`Change` s, in the order they
must be applied. ``apply`` runs them; a second ``plan`` then finds nothing to change.

Hand-written rather than Terraform/CloudFormation: the deployment is a handful of resources
whose settings come from ``fused_celery.options``, and the whole loop (observe, diff, apply)
has to run from ``pip install fused-celery`` alone and against moto in the tests.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "BROKER_PASSWORD_SUFFIX",
    "DEPLOYMENT_TAG",
    "DRAIN_HOOK",
    "MANAGED_TAG",
    "QUEUE_TAG",
    "Bucket",
    "Change",
    "Deployment",
    "Group",
    "GroupRequest",
    "InstanceRole",
    "LaunchTemplate",
    "Parameter",
    "RegionFacts",
    "Resource",
    "SecurityGroup",
    "desired",
    "diff",
    "group_name",
]

MANAGED_TAG = "fused-celery:managed"
DEPLOYMENT_TAG = "fused-celery:deployment"
QUEUE_TAG = "fused-celery:queue"
DISK_TAG = "fused-celery:disk-size-gb"
#: The termination lifecycle hook of every group (the worker drains, then completes it).
DRAIN_HOOK = "fused-celery-drain"
#: ``/fused-celery/<deployment>`` + this: the SSM parameter holding the broker's password.
BROKER_PASSWORD_SUFFIX = "broker-password"
#: The path of the IAM role and instance profile ``deploy`` creates.
IAM_PATH = "/fused-celery/"

_NOT_NAME = re.compile(r"[^A-Za-z0-9-]")

Tags = tuple[tuple[str, str], ...]


def group_name(queue: str) -> str:
    """The Auto Scaling group (and launch template) of ``queue``: ``fused-celery-<queue>`` with
    every character but letters, digits and ``-`` replaced by ``-``."""
    return f"fused-celery-{_NOT_NAME.sub('-', queue)}"


def _tags(pairs: Iterable[tuple[str, str]]) -> Tags:
    return tuple(sorted(dict(pairs).items()))


def ours(tags: Iterable[tuple[str, str]]) -> Tags:
    """The ``fused-celery:*`` tags among ``tags`` (the ones a plan compares), sorted."""
    return _tags((k, v) for k, v in tags if k.startswith("fused-celery:"))


# -- resources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """One AWS resource of a deployment. ``region`` is ``""`` for global ones (IAM).

    Fields declared with ``compare=False`` are facts (ids, instance counts), not settings: a
    plan never changes a resource for them.
    """

    kind: ClassVar[str] = "resource"
    #: Apply order: lower first when creating/updating, higher first when deleting.
    order: ClassVar[int] = 0

    region: str
    name: str
    tags: Tags = ()

    @property
    def key(self) -> tuple[str, str, str]:
        """``(kind, region, name)``: what identifies the resource across plan and observation."""
        return (self.kind, self.region, self.name)

    def settings(self) -> dict[str, Any]:
        """The compared settings (every field but ``region``/``name`` and ``compare=False``)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.compare and f.name not in ("region", "name")
        }

    def describe(self) -> str:
        """One line for ``plan``: the settings that matter (never a secret)."""
        return ""

    def where(self) -> str:
        return f" in {self.region}" if self.region else ""


@dataclass(frozen=True)
class Bucket(Resource):
    """The S3 bucket ``deploy`` created as the storage root (one it was given is not one)."""

    kind: ClassVar[str] = "bucket"
    order: ClassVar[int] = 0


@dataclass(frozen=True)
class Parameter(Resource):
    """The SSM SecureString holding the broker's password, in a region with groups.
    ``digest``: sha256 of the value (the value itself never enters a plan)."""

    kind: ClassVar[str] = "parameter"
    order: ClassVar[int] = 1
    digest: str = ""

    def describe(self) -> str:
        return "SecureString (the broker's password)"


@dataclass(frozen=True)
class InstanceRole(Resource):
    """The workers' IAM role, its inline policy (``policy``: canonical JSON) and the instance
    profile of the same name. Global (``region`` ``""``)."""

    kind: ClassVar[str] = "instance_role"
    order: ClassVar[int] = 2
    policy: str = ""
    profile: bool = True

    def describe(self) -> str:
        return f"role and instance profile, path {IAM_PATH}"


@dataclass(frozen=True)
class SecurityGroup(Resource):
    """The workers' security group in a region: no inbound rule, outbound ``egress`` only
    (``(protocol, port, cidr)`` triples)."""

    kind: ClassVar[str] = "security_group"
    order: ClassVar[int] = 3
    vpc_id: str = ""
    ingress: int = 0
    egress: tuple[tuple[str, int, str], ...] = ()
    group_id: str = field(default="", compare=False)

    def describe(self) -> str:
        rules = ", ".join(f"{p}/{port} to {cidr}" for p, port, cidr in self.egress)
        return f"{self.vpc_id}; inbound none; outbound {rules}"


@dataclass(frozen=True)
class LaunchTemplate(Resource):
    """A queue's launch template (``security_group`` and ``instance_profile`` by name).
    ``user_data``: the instance script (plain text; it holds no secret)."""

    kind: ClassVar[str] = "launch_template"
    order: ClassVar[int] = 4
    instance_type: str = ""
    image_id: str = ""
    disk_size_gb: int = 0
    user_data: str = ""
    security_group: str = ""
    instance_profile: str = ""
    metadata_hop_limit: int = 1

    def describe(self) -> str:
        return f"{self.instance_type}, {self.disk_size_gb} GiB, image {self.image_id}"


@dataclass(frozen=True)
class Group(Resource):
    """A queue's Auto Scaling group (min 0), its termination lifecycle hook
    (:data:`DRAIN_HOOK`, ``heartbeat_timeout`` s) and, when ``on_demand_percentage`` is below
    100, a mixed instances policy (spot above the on-demand share)."""

    kind: ClassVar[str] = "group"
    order: ClassVar[int] = 5
    launch_template: str = ""
    instance_type: str = field(default="", compare=False)  # follows from the queue's name
    min_size: int = 0
    max_size: int = 0
    subnets: tuple[str, ...] = ()
    on_demand_base: int = 0
    on_demand_percentage: int = 100
    heartbeat_timeout: int = 0
    instances: int = field(default=0, compare=False)

    def describe(self) -> str:
        spot = (
            f", spot above {self.on_demand_base} + {self.on_demand_percentage}% on demand"
            if self.on_demand_percentage < 100
            else ""
        )
        return (
            f"min {self.min_size} max {self.max_size}, subnets {','.join(self.subnets)}, "
            f"drain hook {self.heartbeat_timeout} s{spot}"
        )


# -- what a deployment asks for -------------------------------------------------------------------


@dataclass(frozen=True)
class RegionFacts:
    """What ``deploy`` found in a region: the VPC and the subnets its groups use."""

    vpc_id: str
    subnet_ids: tuple[str, ...]


@dataclass(frozen=True)
class GroupRequest:
    """One queue's group as the options ask for it (user data already rendered)."""

    queue: str
    region: str
    instance_type: str
    max_size: int
    disk_size_gb: int
    on_demand_base: int
    on_demand_percentage: int
    user_data: str
    container: bool = False


@dataclass(frozen=True)
class Deployment:
    """Everything :func:`desired` needs (built by :func:`fused_celery.deploy.config.deployment`).

    name: the deployment's name (tag ``fused-celery:deployment``).
    groups: one request per queue. regions: facts of every region with groups.
    image_id: the AMI (or ``resolve:ssm:`` alias). bucket: ``(name, region)`` of the storage
    bucket to create, or None (a given bucket is not managed). parameter: ``(name, digest)`` of
    the broker password parameter to keep, or None. role_policy: the workers' policy (JSON), or
    None when ``instance_profile`` names an existing profile. egress: ``(protocol, port, cidr)``.
    drain_timeout: the lifecycle hook's heartbeat timeout (s). storage_root: the workers'
    ``s3://`` storage root (clients use the same).
    """

    name: str
    groups: tuple[GroupRequest, ...]
    regions: dict[str, RegionFacts]
    image_id: str
    bucket: tuple[str, str] | None
    parameter: tuple[str, str] | None
    role_policy: str | None
    instance_profile: str
    egress: tuple[tuple[str, int, str], ...]
    drain_timeout: int
    storage_root: str = ""

    @property
    def base_tags(self) -> Tags:
        """``fused-celery:managed=true`` and ``fused-celery:deployment=<name>``."""
        return _tags([(MANAGED_TAG, "true"), (DEPLOYMENT_TAG, self.name)])


def security_group_name(deployment: str) -> str:
    """The workers' security group of deployment ``deployment``."""
    return f"{deployment}-workers"


def desired(dep: Deployment) -> list[Resource]:
    """The resources ``dep`` needs, in apply order."""
    base = dep.base_tags
    out: list[Resource] = []
    if dep.bucket is not None:
        out.append(Bucket(region=dep.bucket[1], name=dep.bucket[0], tags=base))
    regions = sorted({g.region for g in dep.groups})
    if dep.parameter is not None:
        name, digest = dep.parameter
        out += [Parameter(region=r, name=name, tags=base, digest=digest) for r in regions]
    if dep.role_policy is not None:
        out.append(
            InstanceRole(region="", name=dep.instance_profile, tags=base, policy=dep.role_policy)
        )
    sg = security_group_name(dep.name)
    for region in regions:
        facts = dep.regions[region]
        out.append(
            SecurityGroup(region=region, name=sg, tags=base, vpc_id=facts.vpc_id, egress=dep.egress)
        )
    for g in sorted(dep.groups, key=lambda g: (g.region, g.queue)):
        name = group_name(g.queue)
        tags = _tags([*base, (QUEUE_TAG, g.queue), (DISK_TAG, str(g.disk_size_gb))])
        out.append(
            LaunchTemplate(
                region=g.region,
                name=name,
                tags=tags,
                instance_type=g.instance_type,
                image_id=dep.image_id,
                disk_size_gb=g.disk_size_gb,
                user_data=g.user_data,
                security_group=sg,
                instance_profile=dep.instance_profile,
                metadata_hop_limit=2 if g.container else 1,
            )
        )
        out.append(
            Group(
                region=g.region,
                name=name,
                tags=tags,
                launch_template=name,
                instance_type=g.instance_type,
                min_size=0,
                max_size=g.max_size,
                subnets=tuple(sorted(dep.regions[g.region].subnet_ids)),
                on_demand_base=g.on_demand_base if g.on_demand_percentage < 100 else 0,
                on_demand_percentage=g.on_demand_percentage,
                heartbeat_timeout=dep.drain_timeout,
            )
        )
    return out


# -- changes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One step of a plan.

    action: ``create``, ``update``, ``delete`` or ``refresh`` (an instance refresh of a group
    whose launch template changed: its instances are replaced, each drained first).
    resource: the desired resource (create, update, refresh) or the observed one (delete).
    before: the observed resource of an update (else None). details: what changes, in words.
    """

    action: str
    resource: Resource
    before: Resource | None = None
    details: tuple[str, ...] = ()

    def __str__(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-", "refresh": "↻"}[self.action]
        r = self.resource
        text = f"{sign} {self.action} {r.kind} {r.name}{r.where()}"
        if self.details:
            text += ": " + "; ".join(self.details)
        elif self.action == "create" and r.describe():
            text += ": " + r.describe()
        return text


_SECRET_FIELDS = {"digest"}
_LONG_FIELDS = {"user_data", "policy"}


def _changed(before: Resource, after: Resource) -> tuple[str, ...]:
    """Field-by-field differences, in words (never a secret or a long text)."""
    old, new = before.settings(), after.settings()
    out = []
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if key in _SECRET_FIELDS:
            out.append("new value")
        elif key in _LONG_FIELDS:
            out.append(f"{key} changed")
        else:
            out.append(f"{key}: {_show(old.get(key))} -> {_show(value)}")
    return tuple(out)


def _show(value: Any) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return ",".join(
            "=".join(map(str, v)) if len(v) == 2 else "/".join(map(str, v)) for v in value
        )
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "-"
    return str(value)


def diff(want: Sequence[Resource], have: Sequence[Resource]) -> list[Change]:
    """The changes that turn ``have`` (observed, all tagged with the deployment) into ``want``.

    Creates and updates come in apply order (bucket, parameter, role, security group, launch
    template, group), then the instance refreshes of groups with instances whose launch template
    changes, then deletes in reverse order (groups before their templates and security groups).
    A security group whose VPC changes is deleted and created again; anything else is updated in
    place. Empty when ``have`` already matches.
    """
    observed = {r.key: r for r in have}
    wanted = {r.key for r in want}
    changes: list[Change] = []
    refresh: list[Change] = []
    updated_templates: set[tuple[str, str]] = set()
    for r in sorted(want, key=lambda r: r.order):
        old = observed.get(r.key)
        if old is None:
            changes.append(Change("create", r))
            continue
        if old.settings() == r.settings():
            continue
        if (
            isinstance(r, SecurityGroup)
            and isinstance(old, SecurityGroup)
            and old.vpc_id != r.vpc_id
        ):
            changes += [Change("delete", old), Change("create", r)]
            continue
        changes.append(Change("update", r, before=old, details=_changed(old, r)))
        if isinstance(r, LaunchTemplate):
            updated_templates.add((r.region, r.name))
    for r in want:
        old = observed.get(r.key)
        if (
            isinstance(r, Group)
            and isinstance(old, Group)
            and old.instances > 0
            and (r.region, r.launch_template) in updated_templates
        ):
            refresh.append(
                Change(
                    "refresh", r, details=(f"replace {old.instances} instance(s), draining each",)
                )
            )
    gone = [r for key, r in observed.items() if key not in wanted]
    deletes = [Change("delete", r) for r in sorted(gone, key=lambda r: -r.order)]
    return changes + refresh + deletes
