"""An ingest on this machine: the stages of :mod:`.stages` run through the local engine.

The fan-out stages (prepare per slice, scatter per slice, write per file) run as ``udf.map`` over
a small stage-calling UDF on the local engine (worker processes of this machine, as many as CPUs);
plan and commit run in this process. A stage of one item runs in this process too (no worker to
start). Same stage functions, same results as on the cluster (:mod:`.pipeline`).

An error in a stage raises it here with its own type (e.g.
:class:`~fused_celery.errors.IngestInputError`) after the staging area is removed, unless
``ignore_chunk_error`` is set: then failed slices or files are left out and the rest is committed.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from fused_celery.errors import FusedError, UdfRuntimeError
from fused_celery.options import options
from fused_celery.partition import stages

if TYPE_CHECKING:
    from fused_celery.partition.config import GeospatialPartitionJobStepConfig
    from fused_celery.table import Table

STAGE_UDF = """
def ingest_stage(stage: str, ctx: dict, kwargs: dict):
    from fused_celery.partition import stages

    return getattr(stages, stage)(ctx, **kwargs)
"""


def _own_error(exc: BaseException) -> BaseException:
    """The error a worker raised, with its own class when it is one of fused-celery's."""
    from fused_celery import errors as types

    if isinstance(exc, UdfRuntimeError):
        cls = getattr(types, exc.child_exception_class or "", None)
        if isinstance(cls, type) and issubclass(cls, FusedError) and cls is not UdfRuntimeError:
            try:
                return cls(exc.message)
            except Exception:  # a class with another constructor: keep the wrapper
                return exc
    return exc


def _map(
    stage: str,
    ctx: dict[str, Any],
    items: list[dict[str, Any]],
    *,
    engine: str | None,
    ignore_errors: bool,
) -> list[tuple[int, Any]]:
    """``(position, result)`` of ``stages.<stage>(ctx, **item)`` for each item that succeeded;
    the first failure is raised unless ``ignore_errors`` (then it is logged and skipped)."""
    if engine is None or len(items) <= 1:
        out: list[tuple[int, Any]] = []
        for i, kw in enumerate(items):
            try:
                out.append((i, getattr(stages, stage)(ctx, **kw)))
            except Exception:
                if not ignore_errors:
                    raise
        return out
    from fused_celery.udf import udf_from_code

    fn = udf_from_code(STAGE_UDF)
    pool = fn.map(
        [{"stage": stage, "ctx": ctx, "kwargs": kw} for kw in items],
        engine=engine,
        max_retry=0,
        cache=False,
        _quiet=True,
    )
    values = pool.results(return_exceptions=True)
    results = []
    for i, value in enumerate(values):
        if isinstance(value, BaseException):
            if not ignore_errors:
                raise _own_error(value) from value
            continue
        results.append((i, value))
    return results


def run_ingest(
    config: GeospatialPartitionJobStepConfig,
    output: str | None = None,
    *,
    overwrite: bool | None = None,
    engine: str | None = "local",
) -> Table:
    """Ingest ``config`` into table ``output`` on this machine; returns the opened table.

    output: default ``config.output`` (one is required). overwrite: default
    ``config.overwrite``. engine: ``"local"`` (worker processes, default) or None (everything in
    this process). An existing table without overwrite is a
    :class:`~fused_celery.errors.TableExistsError` before any reading; on any error no table is
    left behind.
    """
    from fused_celery.table import TableWriter, open_table

    url = output or config.output
    if not url:
        raise ValueError("an ingest needs an output table: pass output= or set config.output")
    ow = config.overwrite if overwrite is None else bool(overwrite)
    job_id = uuid.uuid4().hex
    writer = TableWriter(url, overwrite=ow, run_id=job_id)  # checks the target first
    slice_rows = options.ingest_slice_rows
    ctx = stages.run_context(
        config, writer, job_id=job_id, n_slices=0, sample_rows=0, slice_rows=slice_rows
    )
    ignore = bool(config.ignore_chunk_error)
    try:
        config = stages.materialize_frame(config, ctx["work"], slice_rows=slice_rows)
        slices = stages.list_input_slices(config, slice_rows=slice_rows)
        ctx = stages.run_context(
            config.model_copy(update={"overwrite": ow, "output": writer.url}),
            writer,
            job_id=job_id,
            n_slices=len(slices),
            sample_rows=options.ingest_sample_rows,
            slice_rows=slice_rows,
        )
        items = [{"input_slice": s.model_dump(mode="json")} for s in slices]
        prepared = [
            v for _, v in _map("prepare_slice", ctx, items, engine=engine, ignore_errors=ignore)
        ]
        plan = stages.make_plan(ctx, prepared)
        slice_ids = sorted(int(p["slice_id"]) for p in prepared if int(p["rows"]))
        items = [{"slice_id": s} for s in slice_ids]
        scattered = _map("scatter_slice", ctx, items, engine=engine, ignore_errors=ignore)
        maxima = (plan["max_per_file"], plan["max_per_chunk"])
        done = [r for _, r in scattered]
        groups = stages.write_groups(done, stages.write_task_rows(done))
        items = [{"files": group, "maxima": maxima} for group in groups]
        written = [
            v for _, v in _map("write_files", ctx, items, engine=engine, ignore_errors=ignore)
        ]
        if not written:
            raise FusedError("every file of the ingest failed; nothing to commit")
        stages.commit(ctx, written)
    except BaseException:
        stages.discard(ctx)
        raise
    return open_table(writer.url)
