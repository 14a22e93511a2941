"""``GeospatialPartitionJobStepConfig``: the pydantic model ``fused.ingest(...)`` builds.

Every field and default of API.md §4 (seed 000). The model validates values when built and on
assignment, and is JSON-serializable (``model_dump_json`` / ``model_validate_json``) when its
``input`` is a path or a list of paths; an in-memory (Geo)DataFrame input is kept as is and
serialised as the string ``"<GeoDataFrame: n rows>"`` (it is meant for local runs).

Differences from the reference SDK, on purpose: ``partitioning_maximum_per_file`` /
``_per_chunk`` default to None (1/10 and 1/100 of the total, as the seed documents; see
:mod:`fused_celery.partition.plan` for how ``target_num_chunks`` interacts), and maxima may be
floats (for ``area`` and ``length``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    field_serializer,
    field_validator,
    model_validator,
)

from fused_celery.jobs.step import JobStepConfig
from fused_celery.partition.prepare import check_subdivide


class GDALOpenConfig(BaseModel):
    """How GDAL (pyogrio) opens a file: ``open_options`` (the driver's open options, default
    {}), ``layer`` (default None: the first layer; e.g. ``"lines"`` of an OSM ``.pbf``) and
    ``config_options`` (GDAL configuration options such as ``OSM_USE_CUSTOM_INDEXING`` or
    ``OGR_GEOJSON_MAX_OBJ_SIZE``, set only while each read runs; default {})."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    open_options: dict[str, str] = Field(default_factory=dict)
    layer: StrictStr | None = None
    config_options: dict[str, str] = Field(default_factory=dict)


class PartitionJobStepConfig(JobStepConfig):
    """Base class for partitioner steps (seed 000; not instantiated directly, use
    :func:`ingest` or :class:`GeospatialPartitionJobStepConfig`): ``input`` (the input file(s)),
    ``output`` (table URL, None), ``output_metadata`` (None), ``partitioning_maximum_per_file``
    / ``_per_chunk`` (None: 1/10 and 1/100 of the total of ``partitioning_method``)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True
    )

    input: Any
    output: StrictStr | None = None
    output_metadata: StrictStr | None = None
    partitioning_maximum_per_file: int | float | None = None
    partitioning_maximum_per_chunk: int | float | None = None

    def __init__(self, **data: Any) -> None:
        if type(self) is PartitionJobStepConfig:
            raise TypeError(
                "PartitionJobStepConfig is a base class; build a step with fused.ingest(...) "
                "or GeospatialPartitionJobStepConfig(...)"
            )
        super().__init__(**data)


class GeospatialPartitionJobStepConfig(PartitionJobStepConfig):
    """A geospatial partitioning (ingest) job step.

    JobStepConfig fields: ``name`` (None), ``metadata`` (None), ``ignore_chunk_error`` (False).
    Input/output: ``input`` (path/URL, list of them, or a (Geo)DataFrame), ``output`` (table
    URL, None), ``output_metadata`` (None), ``file_suffix`` (None), ``lonlat_cols`` (None),
    ``gdal_config`` (empty), ``overwrite`` (False). Preparation: ``load_columns`` (None: all),
    ``remove_cols`` ([]), ``explode_geometries`` (False), ``drop_out_of_bounds`` (None: drop),
    ``subdivide_method`` ("area"), ``subdivide_start`` / ``subdivide_stop`` (None; WGS84 square
    degrees, start >= stop > 0). Planning: ``partitioning_method`` ("rows"),
    ``partitioning_maximum_per_file`` / ``_per_chunk`` (None: 1/10 and 1/100 of the total),
    ``partitioning_max_width_ratio`` / ``_height_ratio`` (2), ``partitioning_split_method``
    ("mean"), ``partitioning_force_utm`` ("chunk"), ``split_identical_centroids`` (True),
    ``target_num_chunks`` (500).
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True
    )

    type: Literal["partition_geospatial"] = "partition_geospatial"

    file_suffix: StrictStr | None = None
    load_columns: list[StrictStr] | None = None
    remove_cols: list[StrictStr] = Field(default_factory=list)
    explode_geometries: StrictBool = False
    drop_out_of_bounds: StrictBool | None = None
    lonlat_cols: tuple[StrictStr, StrictStr] | None = None
    gdal_config: GDALOpenConfig = Field(default_factory=GDALOpenConfig)
    overwrite: StrictBool = False

    partitioning_method: Literal["rows", "area", "length", "coords"] = "rows"
    partitioning_max_width_ratio: int | float = 2
    partitioning_max_height_ratio: int | float = 2
    partitioning_split_method: Literal["mean", "median"] = "mean"
    partitioning_force_utm: Literal["file", "chunk"] | None = "chunk"
    subdivide_method: Literal["area"] | None = "area"
    subdivide_start: float | None = None
    subdivide_stop: float | None = None
    split_identical_centroids: StrictBool = True
    target_num_chunks: int = Field(default=500, ge=1)

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        import os

        import pandas as pd

        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be empty")
            return value
        if isinstance(value, (list, tuple)):
            items = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
            if not items or not all(isinstance(v, str) and v for v in items):
                raise ValueError("an input list must hold one or more non-empty paths/URLs")
            return items
        if isinstance(value, pd.DataFrame):
            return value
        raise ValueError(
            f"input must be a path/URL, a list of them, or a (Geo)DataFrame; got "
            f"{type(value).__name__}"
        )

    @field_validator("partitioning_maximum_per_file", "partitioning_maximum_per_chunk")
    @classmethod
    def _check_maximum(cls, value: float | None, info: Any) -> float | None:
        if value is not None and (isinstance(value, bool) or not value > 0 or math.isinf(value)):
            raise ValueError(f"{info.field_name} must be a finite number > 0 or None, got {value}")
        return value

    @field_validator("partitioning_max_width_ratio", "partitioning_max_height_ratio")
    @classmethod
    def _check_ratio(cls, value: float, info: Any) -> float:
        if isinstance(value, bool) or not value > 0 or math.isinf(value):
            raise ValueError(f"{info.field_name} must be a finite number > 0, got {value}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> GeospatialPartitionJobStepConfig:
        check_subdivide(self.subdivide_start, self.subdivide_stop, self.subdivide_method)
        if self.remove_cols and self.load_columns is not None:
            both = set(self.remove_cols) & set(self.load_columns)
            if both:
                raise ValueError(f"columns {sorted(both)} are in both load_columns and remove_cols")
        return self

    @field_serializer("input")
    def _serialize_input(self, value: Any) -> Any:
        import pandas as pd

        if isinstance(value, pd.DataFrame):
            return f"<{type(value).__name__}: {len(value)} rows>"
        return value


def ingest(
    input: Any, output: str | None = None, **kwargs: Any
) -> GeospatialPartitionJobStepConfig:
    """``fused.ingest``: the ingest job step of ``input`` (a path/URL, a list of them, or a
    (Geo)DataFrame) into table ``output`` (default None: give it to ``run_remote`` /
    ``set_output``); ``kwargs`` are the step's fields (see
    :class:`GeospatialPartitionJobStepConfig`). Run it with ``.run_remote()`` or
    ``.run_local()``."""
    return GeospatialPartitionJobStepConfig(input=input, output=output, **kwargs)
