"""``deploy plan | apply | destroy``: observe, diff, apply (what the CLI runs).

:func:`prepare` learns the facts (account, regions' VPCs and subnets, whether the storage bucket
is deploy's), builds the desired resources from the options, observes what the deployment
already has and diffs the two. :func:`apply` runs the changes; :func:`destroy_changes` lists the
deletes of everything tagged with the deployment. :func:`broker_warnings` checks the broker's
eviction policy from here when it can.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fused_celery.deploy.aws import Aws
from fused_celery.deploy.config import Facts, deployment, group_regions, storage_bucket
from fused_celery.deploy.plan import Change, Deployment, desired, diff
from fused_celery.options import Options, mask_url

__all__ = ["Prepared", "apply", "broker_warnings", "destroy_changes", "prepare"]


@dataclass
class Prepared:
    """A computed plan: the AWS calls object, the deployment, the changes, and the broker
    password to store (None when no parameter is written)."""

    aws: Aws
    deployment: Deployment
    changes: list[Change]
    secret: str | None


def _regions(opts: Options, aws: Aws) -> tuple[str, dict[str, str], set[str]]:
    default = aws.default_region(opts.aws_region)
    queues = group_regions(opts, default)
    return default, queues, {default, *queues.values(), *opts.deploy_subnet_ids}


def prepare(opts: Options, session: Any = None) -> Prepared:
    """The plan for ``opts`` (see the module docstring); raises
    :class:`~fused_celery.errors.DeployError` for a missing or wrong option or a refused call."""
    aws = Aws(opts.deploy_name, session)
    default, queues, regions = _regions(opts, aws)
    account = aws.account()
    facts_regions = {
        r: aws.region_facts(r, opts.deploy_subnet_ids.get(r, ()))
        for r in sorted(set(queues.values()))
    }
    _, bucket = storage_bucket(opts, account, default)
    facts = Facts(
        account, default, facts_regions, bucket_managed=aws.bucket_state(bucket) != "foreign"
    )
    dep, secret = deployment(opts, facts)
    changes = diff(desired(dep), aws.observe(regions))
    return Prepared(aws, dep, changes, secret)


def apply(prepared: Prepared, say: Callable[[str], None] = lambda _: None) -> None:
    """Run the prepared changes (``say`` gets each one's line when done)."""
    prepared.aws.apply(prepared.changes, secret=prepared.secret, say=say)


def destroy_changes(opts: Options, session: Any = None) -> tuple[Aws, list[Change]]:
    """The deletes of every resource tagged with ``opts.deploy_name`` in the regions the options
    name (the default region, the queues' and ``deploy_subnet_ids``' regions)."""
    aws = Aws(opts.deploy_name, session)
    _, _, regions = _regions(opts, aws)
    return aws, diff([], aws.observe(regions))


def broker_warnings(opts: Options, timeout: float = 3.0) -> list[str]:
    """Check the workers' broker from here: raises
    :class:`~fused_celery.errors.EvictionPolicyError` when its ``maxmemory-policy`` is not
    ``noeviction``; returns warnings when it cannot be checked (unreachable from this machine,
    as an ElastiCache inside a VPC is, or ``CONFIG`` unavailable)."""
    import redis

    from fused_celery.state.connection import check_eviction_policy

    url = opts.deploy_broker_url or opts.broker_url
    if not url:
        return []
    try:
        warning = check_eviction_policy(url, timeout=timeout)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return [
            f"the broker at {mask_url(url)} does not answer from this machine, so its "
            "maxmemory-policy is not checked here; the workers check it when they start and "
            "refuse to run unless it is noeviction"
        ]
    return [warning] if warning else []
