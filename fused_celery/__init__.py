"""fused-celery: the Fused SDK's ``udf.map`` / ``JobPool`` API on your own Celery cluster.

``import fused_celery as fused`` and keep your Fused code: ``@fused.udf``, ``udf.map``,
``fused.run``, ``fused.options``, ``fused.JobPool.attach(pool_id)``. Attributes are imported on
first use so that worker processes start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .options import options

__version__ = "0.1.0"

_LAZY = {
    "udf": ("fused_celery.udf", "udf"),
    "Udf": ("fused_celery.udf", "Udf"),
    "udf_from_code": ("fused_celery.udf", "udf_from_code"),
    "run": ("fused_celery.udf", "run"),
    "JobPool": ("fused_celery.pool", "JobPool"),
    "api": ("fused_celery.api", None),
    "types": ("fused_celery.types", None),
}

__all__ = ["options", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'fused_celery' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
