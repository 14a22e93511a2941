"""The step models' names, fields, signatures and defaults: seed 000 / API.md §4, and the
reference SDK (``fused``, when installed) for the names it has."""

from __future__ import annotations

import inspect

import pytest

import fused_celery as fused
from fused_celery.jobs.config import JobConfig
from fused_celery.steps.map import MapJobStepConfig
from fused_celery.steps.udf import UdfJobStepConfig


def params(fn) -> list[tuple[str, object]]:
    """``(name, default)`` of ``fn``'s parameters after self (``inspect.Parameter.empty`` for
    none; ``**kwargs`` as ``("**kwargs", None)``)."""
    out = []
    for p in list(inspect.signature(fn).parameters.values())[1:]:
        out.append((f"**{p.name}", None) if p.kind is p.VAR_KEYWORD else (p.name, p.default))
    return out


E = inspect.Parameter.empty


def test_top_level_names():
    assert fused.JobConfig is JobConfig
    assert fused.UdfJobStepConfig is UdfJobStepConfig
    assert fused.MapJobStepConfig is MapJobStepConfig
    assert isinstance(fused.map("/tmp/t"), MapJobStepConfig)
    for name in ("map", "JobConfig", "UdfJobStepConfig", "MapJobStepConfig"):
        assert name in fused.__all__
    import fused_celery.steps

    assert not hasattr(fused_celery.steps, "map_table")  # the package holds modules, not fused.map


def test_seed_signatures():
    set_udf = [("udf", E), ("parameters", None), ("replace_parameters", False), ("inplace", False)]
    assert params(UdfJobStepConfig.set_udf) == set_udf
    assert params(MapJobStepConfig.set_udf) == set_udf
    assert params(UdfJobStepConfig.set_input) == [("input", E), ("inplace", False)]
    assert params(MapJobStepConfig.set_input) == [("input", None), ("inplace", False)]
    assert params(UdfJobStepConfig.run_local) == [
        ("sample", ...),
        ("validate_output", False),
        ("validate_imports", None),
        ("**kwargs", None),
    ]
    assert params(MapJobStepConfig.run_local) == [
        ("file_id", None),
        ("chunk_id", None),
        ("n_rows", None),
        ("sample", None),
        ("validate_output", True),
        ("validate_imports", None),
        ("use_cache", True),
        ("**kwargs", None),
    ]
    assert params(MapJobStepConfig.get_sample) == [
        ("file_id", None),
        ("chunk_id", None),
        ("n_rows", None),
        ("use_cache", True),
    ]
    assert params(MapJobStepConfig.get_output_chunk) == [("file_id", None), ("chunk_id", None)]
    assert params(MapJobStepConfig.show) == [("dataset_config", None), ("**kwargs", None)]
    assert params(MapJobStepConfig.open_output) == [("**kwargs", None)]
    assert isinstance(MapJobStepConfig.input_metadata, property)
    remote = [n for n, _ in params(JobConfig.run_remote)]
    assert remote[:5] == ["instance_type", "region", "disk_size_gb", "additional_env", "image_name"]
    assert remote[-1] == "**kwargs"
    assert list(JobConfig.model_fields) == ["name", "steps", "metadata"]
    assert {"udf", "input", "name", "metadata", "ignore_chunk_error"} <= set(
        UdfJobStepConfig.model_fields
    )
    assert {"udf", "input", "output"} <= set(MapJobStepConfig.model_fields)


def test_against_the_reference_sdk():
    sdk = pytest.importorskip("fused")
    sdk.options.no_login = True
    from fused.models.api.job import JobConfig as SdkJob
    from fused.models.api.job import UdfJobStepConfig as SdkUdf

    for name in ("set_input", "set_udf"):
        assert params(getattr(UdfJobStepConfig, name)) == params(getattr(SdkUdf, name)), name
    assert list(JobConfig.model_fields) == list(SdkJob.model_fields)
    assert UdfJobStepConfig.model_fields["input"].default is SdkUdf.model_fields["input"].default
    ours = [n for n, _ in params(JobConfig.run_remote)]
    theirs = [n for n, _ in params(SdkJob.run_remote)]
    assert ours[:5] == theirs[:5]
    for bad in ("1a", "a b"):
        with pytest.raises(ValueError):
            SdkJob(name=bad, steps=[])
