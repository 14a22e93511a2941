"""Names of the reference SDK's ``fused.models.api.job`` (seed 000) that user code imports and
that have no other home here: :data:`SYSTEM_PARAMETER_NAMES` and :data:`WHITELISTED_INSTANCE_TYPES`.
Both are exported at the package top level (``fused.WHITELISTED_INSTANCE_TYPES``)."""

from __future__ import annotations

from typing import Literal

from fused_celery.options import WHITELISTED_INSTANCE_TYPES as WHITELISTED_INSTANCE_TYPES_values

__all__ = [
    "SYSTEM_PARAMETER_NAMES",
    "WHITELISTED_INSTANCE_TYPES",
    "WHITELISTED_INSTANCE_TYPES_values",
]

SYSTEM_PARAMETER_NAMES: set[str] = {"output", "context"}
"""Parameter names that will be provided by the Fused system (as in the reference SDK)."""

WHITELISTED_INSTANCE_TYPES = Literal[WHITELISTED_INSTANCE_TYPES_values]  # type: ignore[valid-type]
"""The instance types a job step or map may ask for, as a ``Literal`` type (the reference SDK's
form, for annotations such as ``instance_type: Optional[WHITELISTED_INSTANCE_TYPES]``);
``typing.get_args(WHITELISTED_INSTANCE_TYPES)`` lists them. Each one is a Celery queue."""
