"""Queue names: where a task is routed, ``<instance_type>[@<region>][:<image_name>]``.

One queue per (instance type, region, image); one worker group (an EC2 Auto Scaling group, or
local ``fused-celery worker`` processes) serves each queue. The default queue
(:data:`~fused_celery.options.DEFAULT_QUEUE`, ``fused``) has no instance type. Pure: the
autoscaler, ``deploy`` and the engines name queues through this module only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fused_celery.errors import InstanceTypeError
from fused_celery.options import DEFAULT_QUEUE, WHITELISTED_INSTANCE_TYPES

__all__ = ["QueueSpec", "parse_queue", "queue_name"]

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/\-]{0,254}$")


@dataclass(frozen=True)
class QueueSpec:
    """What a queue's workers are: instance type (None for the default queue), region and image
    (None: the deployment's default)."""

    instance_type: str | None
    region: str | None = None
    image_name: str | None = None

    @property
    def name(self) -> str:
        """The queue's name (see :func:`queue_name`)."""
        return queue_name(self.instance_type, self.region, self.image_name)


def queue_name(
    instance_type: str | None, region: str | None = None, image_name: str | None = None
) -> str:
    """The queue for ``instance_type`` (a whitelisted type, or None for ``fused``), optional
    ``region`` (e.g. ``eu-west-1``) and ``image_name`` (a container image or AMI name).

    Raises :class:`~fused_celery.errors.InstanceTypeError` for a type not whitelisted and
    ``ValueError`` for a malformed region or image name, or a region/image without a type.
    """
    if instance_type is None:
        if region or image_name:
            raise ValueError(
                "region and image_name route to an instance type's workers; "
                "give instance_type too (e.g. instance_type='m5.large')"
            )
        return DEFAULT_QUEUE
    if instance_type not in WHITELISTED_INSTANCE_TYPES:
        raise InstanceTypeError(
            f"instance type {instance_type!r} is not whitelisted; "
            f"use one of: {', '.join(WHITELISTED_INSTANCE_TYPES)}"
        )
    name = instance_type
    if region:
        if not _REGION.match(region):
            raise ValueError(f"region {region!r} is not an AWS region name (e.g. 'eu-west-1')")
        name += f"@{region}"
    if image_name:
        if not _IMAGE.match(image_name) or ":" in image_name or "@" in image_name:
            raise ValueError(
                f"image_name {image_name!r} is not usable in a queue name: letters, digits, "
                "'.', '_', '-', '/' only (no ':' or '@'; put a tag in the image's name)"
            )
        name += f":{image_name}"
    return name


def parse_queue(name: str) -> QueueSpec:
    """The :class:`QueueSpec` of a queue name made by :func:`queue_name` (``ValueError`` if not)."""
    if name == DEFAULT_QUEUE:
        return QueueSpec(None)
    rest, _, image = name.partition(":")
    instance_type, _, region = rest.partition("@")
    spec = QueueSpec(instance_type, region or None, image or None)
    try:
        ok = queue_name(spec.instance_type, spec.region, spec.image_name) == name
    except ValueError as exc:
        raise ValueError(
            f"{name!r} is not a queue name of the form type[@region][:image]: {exc}"
        ) from None
    if not ok:
        raise ValueError(f"{name!r} is not a queue name of the form type[@region][:image]")
    return spec
