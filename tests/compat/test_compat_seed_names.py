"""Seed 000's names at the package top level, and the instance-type error of a job step."""

from __future__ import annotations

import typing

import pytest

import fused_celery as fused
from fused_celery.errors import InstanceTypeError


def test_seed_000_names_at_the_top_level() -> None:
    assert {"output", "context"} == fused.SYSTEM_PARAMETER_NAMES
    assert typing.get_args(fused.WHITELISTED_INSTANCE_TYPES) == (
        "m5.large",
        "m5.xlarge",
        "m5.2xlarge",
        "m5.4xlarge",
        "r5.large",
        "r5.xlarge",
        "r5.2xlarge",
        "r5.4xlarge",
    )
    assert issubclass(fused.PartitionJobStepConfig, fused.JobStepConfig)
    assert issubclass(fused.GeospatialPartitionJobStepConfig, fused.PartitionJobStepConfig)
    assert fused.GDALOpenConfig(layer="roads").layer == "roads"
    for name in (
        "SYSTEM_PARAMETER_NAMES",
        "WHITELISTED_INSTANCE_TYPES",
        "JobStepConfig",
        "PartitionJobStepConfig",
        "GDALOpenConfig",
    ):
        assert name in fused.__all__


def test_partition_base_fields_and_not_instantiated_directly() -> None:
    fields = set(fused.PartitionJobStepConfig.model_fields)
    assert {"input", "output", "output_metadata"} <= fields
    assert {"partitioning_maximum_per_file", "partitioning_maximum_per_chunk"} <= fields
    with pytest.raises(TypeError, match="base class"):
        fused.PartitionJobStepConfig(input="a.parquet")
    step = fused.ingest("a.parquet", partitioning_maximum_per_file=10)
    assert isinstance(step, fused.PartitionJobStepConfig)
    assert type(step).model_validate_json(step.model_dump_json()) == step
    with pytest.raises(ValueError, match="input"):
        fused.ingest(5)


def test_a_bad_instance_type_on_a_step_says_instance_type() -> None:
    step = fused.ingest("a.parquet")
    with pytest.raises(InstanceTypeError) as info:
        step.run_remote("/tmp/out", instance_type="m5.huge")
    message = str(info.value)
    assert "unknown instance type 'm5.huge'" in message and "engine" not in message
    assert "m5.large" in message and "r5.4xlarge" in message
    assert isinstance(info.value, ValueError)


def test_engine_and_instance_type_messages_on_a_map() -> None:
    @fused.udf
    def one(x: int):
        return x

    with pytest.raises(InstanceTypeError, match="unknown engine or instance type 'gpu'"):
        one.map([1], engine="gpu")
    with pytest.raises(InstanceTypeError, match="^unknown instance type 'gpu'; use one of"):
        one.map([1], instance_type="gpu")
