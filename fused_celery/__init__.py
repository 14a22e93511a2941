"""fused-celery: the Fused SDK's ``udf.map`` / ``JobPool`` API on your own Celery cluster.

``import fused_celery as fused`` and keep your Fused code: ``@fused.udf``, ``udf.map``,
``fused.run`` / ``fused.run_async``, ``fused.submit``, ``@fused.cache``, ``fused.load``,
``fused.types``, ``fused.options``, ``fused.JobPool.attach(pool_id)``; job steps
``fused.ingest``, ``fused.map`` and ``fused.JobConfig``. The pool and API modules
(which need pandas) are imported on first use, so that worker processes start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from fused_celery.options import options

# Bound after the submodule import, so ``fused_celery.udf`` is the decorator, not the module.
from fused_celery.udf import Udf, run, run_async, udf, udf_from_code  # noqa: E402
from fused_celery.version import __version__  # noqa: E402

_LAZY = {
    "JobPool": ("fused_celery.pool", "JobPool"),
    "RunResponse": ("fused_celery.jobs.response", "RunResponse"),
    "api": ("fused_celery.api", None),
    "open_table": ("fused_celery.table.read", "open_table"),
    "get_chunks_metadata": ("fused_celery.table.read", "get_chunks_metadata"),
    "get_chunk_from_table": ("fused_celery.table.read", "get_chunk_from_table"),
    "Table": ("fused_celery.table.read", "Table"),
    "types": ("fused_celery.types", None),
    # the names real Fused UDF code uses (the current SDK)
    "submit": ("fused_celery.batch", "submit"),
    "cache": ("fused_celery.call_cache", "cache"),
    "cache_call": ("fused_celery.call_cache", "cache_call"),
    "load": ("fused_celery.udf_loader", "load"),
    "load_async": ("fused_celery.udf_loader", "load_async"),
    "ingest": ("fused_celery.partition.config", "ingest"),
    "GeospatialPartitionJobStepConfig": (
        "fused_celery.partition.config",
        "GeospatialPartitionJobStepConfig",
    ),
    "map": ("fused_celery.steps.map", "map_table"),
    "join": ("fused_celery.steps.join", "join_tables"),
    "join_singlefile": ("fused_celery.steps.join", "join_singlefile"),
    # seed 000 (fused.models.api.job): the names users import
    "JobConfig": ("fused_celery.jobs.config", "JobConfig"),
    "UdfJobStepConfig": ("fused_celery.steps.udf", "UdfJobStepConfig"),
    "MapJobStepConfig": ("fused_celery.steps.map", "MapJobStepConfig"),
    "JoinJobStepConfig": ("fused_celery.steps.join", "JoinJobStepConfig"),
    "JoinSinglefileJobStepConfig": ("fused_celery.steps.join", "JoinSinglefileJobStepConfig"),
    "JobStepConfig": ("fused_celery.jobs.step", "JobStepConfig"),
    "PartitionJobStepConfig": ("fused_celery.partition.config", "PartitionJobStepConfig"),
    "GDALOpenConfig": ("fused_celery.partition.config", "GDALOpenConfig"),
    "SYSTEM_PARAMETER_NAMES": ("fused_celery.job_names", "SYSTEM_PARAMETER_NAMES"),
    "WHITELISTED_INSTANCE_TYPES": ("fused_celery.job_names", "WHITELISTED_INSTANCE_TYPES"),
}

__all__ = ["options", "__version__", "Udf", "run", "run_async", "udf", "udf_from_code", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'fused_celery' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
