"""The runners registered for ``partition_geospatial``: :func:`make_ingest_run` (its run, submitted
to the cluster by :func:`fused_celery.jobs.submit.submit_step`, or one step of a job) and
:func:`run_ingest` (on this machine, through :mod:`fused_celery.jobs.local_driver`). Both check
the output, write an in-memory input to the
work folder, build the :class:`~.run.IngestRun` and hand it to the driver, which runs
:data:`~.sequence.INGEST`.
"""

from __future__ import annotations

import uuid
import warnings
from typing import TYPE_CHECKING

from fused_celery import storage
from fused_celery.errors import IngestInputError, IngestRowsWarning
from fused_celery.options import options
from fused_celery.partition.config import GeospatialPartitionJobStepConfig
from fused_celery.partition.row_report import RowReport
from fused_celery.partition.run import IngestRun
from fused_celery.partition.stage_commit import discard_staging
from fused_celery.partition.workfiles import input_url

if TYPE_CHECKING:
    from fused_celery.table import Table, TableWriter


def materialize_frame(
    config: GeospatialPartitionJobStepConfig, work_url: str, *, slice_rows: int
) -> GeospatialPartitionJobStepConfig:
    """A config whose in-memory (Geo)DataFrame input is written to the work folder
    ``work_url`` (``input.parquet``: GeoParquet, row groups of ``slice_rows``), so that workers
    can read it in slices; a config with a path input is returned as is."""
    import pandas as pd

    from fused_celery.partition.prepare import ensure_geodataframe

    if not isinstance(config.input, pd.DataFrame):
        return config
    gdf = ensure_geodataframe(config.input, config.lonlat_cols)
    if not len(gdf):
        raise IngestInputError("the input (Geo)DataFrame has no rows; there is nothing to ingest")
    url = input_url(work_url)
    with storage.atomic_output(url) as out:
        gdf.to_parquet(out, index=False, row_group_size=max(1, int(slice_rows)))
    return config.model_copy(update={"input": url, "lonlat_cols": None})


def new_run(
    config: GeospatialPartitionJobStepConfig, writer: TableWriter, *, job_id: str, overwrite: bool
) -> IngestRun:
    """The run of ``config`` as job ``job_id`` writing through ``writer`` (its ``output`` and
    ``overwrite`` set), an in-memory input written to its work folder first; slice and sample
    sizes from this process's options. On any error the staging is removed."""
    slice_rows = options.ingest_slice_rows
    try:
        work = storage.join(writer.staging_url, "_work")
        config = materialize_frame(config, work, slice_rows=slice_rows)
        config = config.model_copy(update={"overwrite": overwrite, "output": writer.url})
        return IngestRun.create(
            config,
            writer,
            job_id=job_id,
            slice_rows=slice_rows,
            sample_rows=options.ingest_sample_rows,
        )
    except BaseException:
        discard_staging(writer)
        raise


def make_ingest_run(
    config: GeospatialPartitionJobStepConfig,
    output: str | None,
    *,
    job_id: str,
    overwrite: bool | None = None,
    check_input: bool = True,
) -> IngestRun:
    """The run of ``config`` as job ``job_id`` writing table ``output`` (default
    ``config.output``), as one step of a ``JobConfig``. overwrite: default ``config.overwrite``.
    check_input: unused (an ingest reads its input in its first stage). An existing table
    without overwrite is raised here."""
    from fused_celery.table import TableWriter

    del check_input
    url = output or config.output
    if not url:
        raise ValueError("an ingest needs an output table: pass output= or set config.output")
    ow = config.overwrite if overwrite is None else bool(overwrite)
    writer = TableWriter(url, overwrite=ow, run_id=job_id)
    return new_run(config, writer, job_id=job_id, overwrite=ow)


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
    :class:`~fused_celery.errors.TableExistsError` before any reading; an error in a stage is
    raised with its own class (e.g. :class:`~fused_celery.errors.IngestInputError`); on any
    error no table is left behind. With ``ignore_chunk_error`` failed slices or files are left
    out and the rest is committed. Rows dropped or repaired are an
    :class:`~fused_celery.errors.IngestRowsWarning` (and counted in ``Table.ingest_report``).
    """
    from fused_celery.jobs.local_driver import run_stages
    from fused_celery.table import TableWriter, open_table

    url = output or config.output
    if not url:
        raise ValueError("an ingest needs an output table: pass output= or set config.output")
    ow = config.overwrite if overwrite is None else bool(overwrite)
    job_id = uuid.uuid4().hex
    writer = TableWriter(url, overwrite=ow, run_id=job_id)  # checks the target first
    run = run_stages(new_run(config, writer, job_id=job_id, overwrite=ow), engine=engine)
    warn_rows(run.report, writer.url)
    return open_table(writer.url)


def warn_rows(report: RowReport, output: str) -> None:
    """An :class:`~fused_celery.errors.IngestRowsWarning` when the ingest into ``output``
    dropped or repaired rows (``report``), so that no row is lost silently."""
    if report.noteworthy:
        warnings.warn(
            f"ingest into {output}: {report.summary()}; the counts are in the table's "
            "ingest_report",
            IngestRowsWarning,
            stacklevel=3,
        )
