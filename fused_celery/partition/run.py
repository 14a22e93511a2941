""":class:`IngestRun`: what every message of an ingest carries (a
:class:`~fused_celery.jobs.stages.StageRun`), and the summaries its stages add to it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fused_celery import storage
from fused_celery.jobs.stages import StageRun
from fused_celery.partition.config import GeospatialPartitionJobStepConfig
from fused_celery.partition.row_report import RowReport

if TYPE_CHECKING:
    from fused_celery.table import TableWriter

KIND = "partition_geospatial"
"""The step type of an ingest (``GeospatialPartitionJobStepConfig.type``)."""


class PlanSummary(BaseModel):
    """What the plan decided: num_files and planned_chunks (before refinement), the maxima
    (per file, per chunk, in the partitioning method's measure), and the rows and total
    measure after preparation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_files: int
    planned_chunks: int
    max_per_file: float
    max_per_chunk: float
    rows: int
    measure: float


class TableSummary(BaseModel):
    """The committed table: its URL (``output``) and its files, chunks and rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output: str
    num_files: int
    num_chunks: int
    num_rows: int


class IngestRun(StageRun):
    """One ingest, JSON-able and small (it rides every message of the job).

    config: the step (its ``input`` a path/URL or a list of them, ``output`` the table URL).
    writer: the :class:`~fused_celery.table.TableWriter` as ``to_dict()``. work: the work folder
    (see :mod:`.workfiles`). slice_rows: rows per input slice; sample_rows: centroids the plan
    is made from (the submitting process's options, so that every worker agrees). Filled in on
    the way: n_slices and input_rows (the slices' rows, when all are known: prepare), plan and
    report (the summed prepare counts, a :class:`RowReport`), scatter_slices (the prepared
    slices with rows), write_tasks (route) and table (commit). Build one with :meth:`create`.
    """

    kind: Literal["partition_geospatial"] = KIND
    config: GeospatialPartitionJobStepConfig
    writer: dict[str, Any]
    work: str
    slice_rows: int
    sample_rows: int
    n_slices: int = 0
    input_rows: int | None = None
    plan: PlanSummary | None = None
    report: RowReport = Field(default_factory=RowReport)
    scatter_slices: tuple[int, ...] = ()
    write_tasks: int = 0
    table: TableSummary | None = None

    @classmethod
    def create(
        cls,
        config: GeospatialPartitionJobStepConfig,
        writer: TableWriter,
        *,
        job_id: str,
        slice_rows: int,
        sample_rows: int,
    ) -> IngestRun:
        """The run of ``config`` writing through ``writer`` as job ``job_id`` (its work folder
        under the writer's staging area; ``ignore_errors`` from ``config.ignore_chunk_error``)."""
        return cls(
            job_id=job_id,
            ignore_errors=config.ignore_chunk_error,
            config=config,
            writer=writer.to_dict(),
            work=storage.join(writer.staging_url, "_work"),
            slice_rows=int(slice_rows),
            sample_rows=int(sample_rows),
        )

    def table_writer(self) -> TableWriter:
        """The run's table writer (rebuilt, without checking the target again)."""
        from fused_celery.table import TableWriter

        return TableWriter.from_dict(self.writer)

    def samples_for(self, slice_rows: int | None) -> int:
        """Centroids a slice of ``slice_rows`` input rows contributes to the plan's sample: its
        share of ``sample_rows`` by rows when every slice's row count is known
        (``input_rows``), so that every sampled centroid weighs the same; else an equal share
        per slice."""
        if self.input_rows and slice_rows is not None:
            return max(1, math.ceil(self.sample_rows * slice_rows / self.input_rows))
        return max(1, math.ceil(self.sample_rows / max(1, self.n_slices)))

    @property
    def maxima(self) -> tuple[float, float]:
        """``(max_per_file, max_per_chunk)`` of the plan (once planned)."""
        if self.plan is None:
            raise RuntimeError(f"ingest {self.job_id} has no plan yet")
        return self.plan.max_per_file, self.plan.max_per_chunk
