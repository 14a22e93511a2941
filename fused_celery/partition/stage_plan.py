"""The plan of an ingest (the collect of prepare): files and chunks planned on the pooled samples of
the prepared slices (:func:`~.plan.plan_partitions`), the split tree written to the work folder
(``plan.npz``) for scatter and write to route rows with (:func:`load_tree`).

A plan made from a sample can leave a chunk or file over its maximum; the write stage refines
such chunks with the exact rows. When the input has at most ``sample_rows`` rows the sample is the
data and the plan is exact.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from fused_celery import storage
from fused_celery.errors import IngestInputError
from fused_celery.jobs.stages import FailedItem
from fused_celery.partition.config import GeospatialPartitionJobStepConfig
from fused_celery.partition.plan import PartitionTree, plan_partitions, resolve_maxima
from fused_celery.partition.row_report import RowReport
from fused_celery.partition.run import IngestRun, PlanSummary
from fused_celery.partition.stage_prepare import PreparedSlice
from fused_celery.partition.workfiles import plan_url, read_arrow, sample_url


def plan_options(config: GeospatialPartitionJobStepConfig) -> dict[str, Any]:
    """The split options of :func:`~.plan.plan_partitions` from a step config."""
    return {
        "split_method": config.partitioning_split_method,
        "max_width_ratio": config.partitioning_max_width_ratio,
        "max_height_ratio": config.partitioning_max_height_ratio,
        "split_identical_centroids": config.split_identical_centroids,
    }


def sample_weights(w: np.ndarray) -> np.ndarray:
    """The weights the plan uses for sampled centroids of weights ``w``: one shared weight (their
    mean: the same total) when they differ by at most :data:`EQUAL_WEIGHTS` of the largest, as
    the samples of slices sampled in proportion to their rows do (a row count is rarely a
    multiple of its sample size), so that each split takes a plain median (``np.partition``)
    instead of sorting for a weighted one; ``w`` as it is otherwise."""
    if len(w) and float(w.max() - w.min()) <= EQUAL_WEIGHTS * float(w.max()):
        return np.full(len(w), float(w.sum()) / len(w))
    return w


EQUAL_WEIGHTS = 1e-3
"""Relative spread under which :func:`sample_weights` takes sampled weights as equal."""


def make_plan(run: IngestRun, prepared: list[PreparedSlice]) -> PlanSummary:
    """Plan files and chunks from the pooled samples of the ``prepared`` slices (results of
    :func:`~.stage_prepare.prepare_slice`); write the split tree to the work folder.

    No rows at all after preparation is an :class:`IngestInputError`, and so is a total measure
    that is not positive.
    """
    import pyarrow as pa

    config = run.config
    rows = sum(int(p["rows"]) for p in prepared)
    measure = float(sum(float(p["measure"]) for p in prepared))
    if rows == 0:
        raise IngestInputError(f"no rows left to ingest ({sum_reports(prepared).summary()})")
    if not measure > 0:
        raise IngestInputError(
            f"the total {config.partitioning_method!r} measure of the input is {measure}; "
            f"partitioning_method={config.partitioning_method!r} needs geometries with a "
            "positive measure (use 'rows' for points)"
        )
    per_file, per_chunk = resolve_maxima(
        measure,
        config.partitioning_maximum_per_file,
        config.partitioning_maximum_per_chunk,
        config.target_num_chunks,
    )
    ids = sorted(int(p["slice_id"]) for p in prepared if int(p["rows"]))
    s = pa.concat_tables([read_arrow(sample_url(run.work, i)) for i in ids])
    plan = plan_partitions(
        s.column("x").to_numpy(),
        s.column("y").to_numpy(),
        sample_weights(s.column("w").to_numpy()),
        max_per_file=per_file,
        max_per_chunk=per_chunk,
        force_utm=config.partitioning_force_utm,
        ids=s.column("id").to_numpy(),
        **plan_options(config),
    )
    t = plan.tree
    buf = io.BytesIO()
    np.savez(
        buf,
        axis=t.axis,
        value=t.value,
        left=t.left,
        right=t.right,
        file_index=t.file_index,
        chunk_index=t.chunk_index,
        maxima=np.array([per_file, per_chunk]),
    )
    storage.write_bytes(plan_url(run.work), buf.getvalue())
    return PlanSummary(
        num_files=plan.num_files,
        planned_chunks=plan.num_chunks,
        max_per_file=per_file,
        max_per_chunk=per_chunk,
        rows=rows,
        measure=measure,
    )


def plan_from_samples(
    run: IngestRun, prepared: list[PreparedSlice], failed: list[FailedItem]
) -> IngestRun:
    """The collect of prepare: :func:`make_plan`, then the run with its ``plan``, ``report``
    (the slices' prepare counts added up) and ``scatter_slices`` (the slices with rows).
    failed: the slices left out (already in ``run.failed``)."""
    del failed
    summary = make_plan(run, prepared)
    slice_ids = tuple(sorted(int(p["slice_id"]) for p in prepared if int(p["rows"])))
    return run.model_copy(
        update={"plan": summary, "report": sum_reports(prepared), "scatter_slices": slice_ids}
    )


def sum_reports(prepared: list[PreparedSlice]) -> RowReport:
    """The prepare reports of all slices added up (``reprojected_from``: the CRSs seen)."""
    return RowReport.total(RowReport.model_validate(p["report"]) for p in prepared)


def describe_plan(run: IngestRun, items: Sequence[Any]) -> str:
    """The log line of the plan, written when scatter starts."""
    p = run.plan
    assert p is not None
    return (
        f"prepared {run.report.summary()}; "
        f"plan: {p.rows} rows into {p.num_files} file(s), {p.planned_chunks} chunk(s) planned "
        f"(max per file {p.max_per_file:.6g}, per chunk {p.max_per_chunk:.6g}); scatter: "
        f"{len(items)} slice(s)"
    )


_tree_cache: dict[str, PartitionTree] = {}


def load_tree(run: IngestRun) -> PartitionTree:
    """The run's split tree (from ``plan.npz``; the last one read is kept in memory)."""
    url = plan_url(run.work)
    tree = _tree_cache.get(url)
    if tree is None:
        with np.load(io.BytesIO(storage.read_bytes(url))) as z:
            tree = PartitionTree(
                axis=z["axis"],
                value=z["value"],
                left=z["left"],
                right=z["right"],
                file_index=z["file_index"],
                chunk_index=z["chunk_index"],
            )
        _tree_cache.clear()
        _tree_cache[url] = tree
    return tree
