"""From the deploy options to a :class:`~fused_celery.deploy.plan.Deployment`.

Reads ``fused_celery.options`` (``deploy_*``, ``aws_region``, ``broker_url``) and a few facts
that only AWS knows (:class:`Facts`: the account, each region's VPC and subnets), validates them
(:class:`~fused_celery.errors.DeployError` naming the option and the fix) and renders each
queue's user data. No AWS call here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from fused_celery.deploy.plan import (
    BROKER_PASSWORD_SUFFIX,
    Deployment,
    GroupRequest,
    RegionFacts,
)
from fused_celery.deploy.user_data import render
from fused_celery.errors import DeployError
from fused_celery.options import DeployGroup, Options, mask_url
from fused_celery.queues import parse_queue
from fused_celery.version import __version__

__all__ = [
    "Facts",
    "broker_parts",
    "deployment",
    "group_regions",
    "password_parameter",
    "pinned_package",
    "storage_bucket",
    "with_password",
    "worker_env",
]

#: The distribution ``deploy`` pins on the instances (at this client's version).
PACKAGE = "fused-celery"


@dataclass(frozen=True)
class Facts:
    """What ``deploy`` learnt from AWS: the account id, the default region, each region's VPC
    and subnets (:class:`~fused_celery.deploy.plan.RegionFacts`), and whether the storage
    bucket is deploy's to manage (``bucket_managed``: it does not exist yet, or deploy created
    it; a bucket someone else made is used, never changed or deleted)."""

    account: str
    default_region: str
    regions: dict[str, RegionFacts]
    bucket_managed: bool = True


def pinned_package() -> str:
    """``fused-celery==<this client's version>``: the workers run exactly the client's code."""
    return f"{PACKAGE}=={__version__}"


def group_regions(opts: Options, default_region: str) -> dict[str, str]:
    """Queue -> region of each group asked for in ``deploy_groups`` (``default_region`` for a
    queue naming none). Raises :class:`DeployError` for a malformed queue name."""
    out = {}
    for queue in opts.deploy_groups:
        try:
            spec = parse_queue(queue)
        except ValueError as exc:
            raise DeployError(f"deploy_groups: {exc}") from None
        if spec.instance_type is None:
            raise DeployError(
                f"deploy_groups: queue {queue!r} has no instance type; name an instance type "
                "queue such as 'm5.large' or 'm5.large@eu-west-1'"
            )
        out[queue] = spec.region or default_region
    return out


def broker_parts(url: str | None) -> tuple[str, str | None, int]:
    """``(url without its password, password or None, port)`` of the workers' broker URL.

    Raises :class:`DeployError` when there is no URL or it is not a Redis URL on a host.
    """
    if not url:
        raise DeployError(
            "no broker for the workers: set FUSED_CELERY_DEPLOY_BROKER_URL (or "
            "FUSED_CELERY_BROKER_URL), e.g. rediss://:password@my-redis.xxxx.cache.amazonaws.com:6379/0"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise DeployError(
            f"deploy_broker_url {mask_url(url)!r} is not a redis:// or rediss:// URL with a host "
            "that the instances can reach"
        )
    if parts.hostname in ("127.0.0.1", "localhost", "::1"):
        raise DeployError(
            f"deploy_broker_url {mask_url(url)!r} is a loopback address: the instances cannot "
            "reach it; give the broker's address in the VPC (e.g. an ElastiCache endpoint)"
        )
    password = unquote(parts.password) if parts.password else None
    user = parts.username or ""
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = (f"{user}@" if user else "") + host + (f":{parts.port}" if parts.port else "")
    bare = urlunsplit(parts._replace(netloc=netloc))
    default_port = 6379
    return bare, password, parts.port or default_port


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` put into its ``user:password@`` part (URL-quoted)."""
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def password_parameter(opts: Options) -> str:
    """The SSM parameter the workers read the broker password from."""
    return (
        opts.deploy_broker_password_parameter
        or f"/fused-celery/{opts.deploy_name}/{BROKER_PASSWORD_SUFFIX}"
    )


def storage_bucket(opts: Options, account: str, region: str) -> tuple[str, str]:
    """``(storage root URL, bucket)``: ``deploy_storage_root`` (an ``s3://`` URL, else
    :class:`DeployError`), or else ``s3://<deploy_name>-<account>-<region>``."""
    root = opts.deploy_storage_root
    if root is None:
        bucket = f"{opts.deploy_name}-{account}-{region}"
        return f"s3://{bucket}", bucket
    if not root.startswith("s3://") or not root[5:].strip("/"):
        raise DeployError(
            f"deploy_storage_root {root!r} is not an s3://bucket[/prefix] URL: workers on many "
            "hosts need storage they all see (unset it to let deploy create a bucket)"
        )
    return root.rstrip("/"), root[5:].split("/", 1)[0]


def worker_env(
    *, broker: str, storage_root: str, region: str, parameter: str | None
) -> dict[str, str]:
    """The settings of a deployed worker (no secret): ``broker`` without its password, the SSM
    ``parameter`` holding it (None: the broker has none), the shared ``storage_root`` (required:
    ``deploy_require_shared_storage``) and the ``region``."""
    env = {
        "FUSED_CELERY_BROKER_URL": broker,
        "FUSED_CELERY_STORAGE_ROOT": storage_root,
        "FUSED_CELERY_DEPLOY_REQUIRE_SHARED_STORAGE": "1",
        "FUSED_CELERY_AWS_REGION": region,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }
    if parameter:
        env["FUSED_CELERY_DEPLOY_BROKER_PASSWORD_PARAMETER"] = parameter
    return env


def _policy(opts: Options, facts: Facts, bucket: str, root: str, images: bool) -> str:
    """The workers' IAM policy (least privilege), canonical JSON."""
    prefix = root[5:].split("/", 1)[1] + "/" if "/" in root[5:] else ""
    parameter = password_parameter(opts).lstrip("/")
    statements = [
        {
            "Sid": "ReadBrokerPassword",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter"],
            "Resource": [f"arn:aws:ssm:*:{facts.account}:parameter/{parameter}"],
        },
        {
            "Sid": "ListStorage",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": [f"arn:aws:s3:::{bucket}"],
        },
        {
            "Sid": "ReadWriteStorage",
            "Effect": "Allow",
            "Action": [
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
            ],
            "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*"],
        },
        {
            "Sid": "DrainOnTermination",
            "Effect": "Allow",
            "Action": [
                "autoscaling:CompleteLifecycleAction",
                "autoscaling:RecordLifecycleActionHeartbeat",
            ],
            "Resource": [
                f"arn:aws:autoscaling:*:{facts.account}:autoScalingGroup:*:"
                "autoScalingGroupName/fused-celery-*"
            ],
            "Condition": {
                "StringEquals": {
                    "autoscaling:ResourceTag/fused-celery:deployment": opts.deploy_name
                }
            },
        },
    ]
    if images:
        statements += [
            {
                "Sid": "RegistryLogin",
                "Effect": "Allow",
                "Action": ["ecr:GetAuthorizationToken"],
                "Resource": ["*"],
            },
            {
                "Sid": "PullImages",
                "Effect": "Allow",
                "Action": [
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchCheckLayerAvailability",
                ],
                "Resource": [f"arn:aws:ecr:*:{facts.account}:repository/*"],
            },
        ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def deployment(opts: Options, facts: Facts) -> tuple[Deployment, str | None]:
    """The :class:`Deployment` the options ask for, and the broker password to store (None when
    the URL has none or ``deploy_broker_password_parameter`` names an existing parameter).

    Raises :class:`DeployError` for a missing or wrong option.
    """
    regions = group_regions(opts, facts.default_region)
    if not regions:
        raise DeployError(
            "deploy_groups is empty: name the queues to deploy, e.g. "
            'FUSED_CELERY_DEPLOY_GROUPS=\'{"m5.large": {"max_size": 10}}\''
        )
    bare, password, port = broker_parts(opts.deploy_broker_url or opts.broker_url)
    root, bucket = storage_bucket(opts, facts.account, facts.default_region)
    given_parameter = opts.deploy_broker_password_parameter
    parameter = None
    if password is not None and not given_parameter:
        digest = hashlib.sha256(password.encode()).hexdigest()
        parameter = (password_parameter(opts), digest)
    for pkg in opts.deploy_extra_packages:
        if not pkg.strip() or pkg.strip().startswith("-"):
            raise DeployError(f"deploy_extra_packages: {pkg!r} is not a pip requirement")
    packages = [pinned_package(), *opts.deploy_extra_packages]
    requests = []
    for queue, region in sorted(regions.items()):
        spec = parse_queue(queue)
        settings: DeployGroup = opts.deploy_groups[queue]
        env = worker_env(
            broker=bare,
            storage_root=root,
            region=region,
            parameter=password_parameter(opts) if password is not None or given_parameter else None,
        )
        user_data = render(
            queue=queue,
            env=env,
            packages=packages,
            image=spec.image_name,
            concurrency=settings.concurrency,
            stop_timeout=opts.deploy_drain_timeout,
        )
        requests.append(
            GroupRequest(
                queue=queue,
                region=region,
                instance_type=spec.instance_type or "",
                max_size=settings.max_size,
                disk_size_gb=settings.disk_size_gb,
                on_demand_base=settings.on_demand_base,
                on_demand_percentage=settings.on_demand_percentage,
                user_data=user_data,
                container=spec.image_name is not None,
            )
        )
    missing = sorted(set(regions.values()) - set(facts.regions))
    if missing:
        raise DeployError(f"no VPC facts for region(s) {', '.join(missing)}")
    images = any(r.container for r in requests)
    profile = opts.deploy_instance_profile
    dep = Deployment(
        name=opts.deploy_name,
        groups=tuple(requests),
        regions=dict(facts.regions),
        image_id=opts.deploy_ami_id,
        bucket=(bucket, facts.default_region) if facts.bucket_managed else None,
        parameter=parameter,
        role_policy=None if profile else _policy(opts, facts, bucket, root, images),
        instance_profile=profile or f"{opts.deploy_name}-worker",
        egress=tuple(
            sorted({("tcp", port, opts.deploy_egress_cidr), ("tcp", 443, opts.deploy_egress_cidr)})
        ),
        drain_timeout=opts.deploy_drain_timeout,
        storage_root=root,
    )
    return dep, (password if parameter is not None else None)
