"""The runners of the map step: :func:`make_map_run` (its run: submitted to the cluster by
:func:`fused_celery.jobs.submit.submit_step`, or one step of a job) and :func:`run_map` (on this
machine, through :mod:`fused_celery.jobs.local_driver`); all run
:data:`~fused_celery.steps.map_stages.MAP_STEP`. ``run_map`` makes the run with the ``make_run``
registered for the step's type, so steps built on the map stages (the join) run through it too."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

from fused_celery import storage
from fused_celery.errors import StepInputError
from fused_celery.steps.base import require_udf
from fused_celery.steps.map import MapJobStepConfig, frame_parameter
from fused_celery.steps.map_stages import MapRun

if TYPE_CHECKING:
    from fused_celery.table import Table


def make_map_run(
    step: MapJobStepConfig,
    output: str | None,
    *,
    job_id: str,
    overwrite: bool | None = None,
    check_input: bool = True,
) -> MapRun:
    """The run of ``step`` as job ``job_id`` writing table ``output`` (default the step's; None
    and no output of the step: a run without output table, as under ``ignore_no_output`` — the
    callers check that it is allowed).

    overwrite: default ``step.overwrite``. check_input: read the input's ``_sample`` now, so an
    input that is not a table fails before any work (default True; a later step of a job reads
    a table that does not exist yet). Raises :class:`~fused_celery.errors.StepUdfError`,
    :class:`~fused_celery.errors.StepInputError`, or
    :class:`~fused_celery.errors.TableExistsError` (an existing output without overwrite); the
    output's staging marker is written (``TableWriter.prepare``). Staged work older than
    ``options.staged_expires`` is swept first.
    """
    from fused_celery.jobs import staged
    from fused_celery.table import TableWriter, read_chunk_metadata, resolve_table_url

    frame_parameter(require_udf(step))
    url = output or step.output
    if step.input is None:
        raise StepInputError(
            "the map step has no input table and no previous step to read from; pass a table to "
            "fused.map(...) or set_input(url)"
        )
    if url and resolve_table_url(step.input) == resolve_table_url(url):
        raise StepInputError(f"the map step's output {url} is its input; write another table")
    if check_input:
        try:
            chunks = read_chunk_metadata(step.input)
        except Exception as exc:
            raise StepInputError(
                f"the map step's input {step.input} is not a table: {exc}"
            ) from exc
        if not chunks:
            raise StepInputError(f"the map step's input table {step.input} is empty (no chunks)")
    with contextlib.suppress(Exception):  # a sweep that fails never stops a job
        staged.sweep()
    ow = step.overwrite if overwrite is None else bool(overwrite)
    if not url:
        return MapRun(
            job_id=job_id,
            ignore_errors=step.ignore_chunk_error,
            config=step.model_copy(update={"output": None, "overwrite": ow}),
            writer=None,
            work=staged.entry_url(f"work-{job_id}"),
        )
    writer = TableWriter(url, overwrite=ow, run_id=job_id)
    config = step.model_copy(update={"output": writer.url, "overwrite": ow})
    return MapRun(
        job_id=job_id,
        ignore_errors=step.ignore_chunk_error,
        config=config,
        writer=writer.to_dict(),
        work=storage.join(writer.staging_url, "_work"),
    )


def _make_run(step: Any, output: str | None, **kwargs: Any) -> MapRun:
    """The run of ``step`` by the ``make_run`` registered for its type (the map step's, or a
    step built on its stages, e.g. the join)."""
    from fused_celery.jobs.runners import runner_for

    return runner_for(step.type).load("make_run")(step, output, **kwargs)


def run_map(
    step: MapJobStepConfig,
    output: str | None = None,
    *,
    overwrite: bool | None = None,
    engine: str | None = "local",
) -> Table:
    """Run the whole map step on this machine (engine ``"local"``: worker processes, default;
    None: this process); returns the opened output table. On any error no table is left."""
    from fused_celery.jobs.local_driver import run_stages
    from fused_celery.table import open_table

    run = _make_run(step, output, job_id=uuid.uuid4().hex, overwrite=overwrite)
    done = run_stages(run, engine=engine)
    return open_table(done.config.output)
