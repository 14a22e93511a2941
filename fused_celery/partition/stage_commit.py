"""The end of an ingest: the commit (the collect of write: the table made whole from the written
files, its staging area removed), the job's result, and the discard of a failed or cancelled run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fused_celery.jobs.stages import FailedItem
from fused_celery.partition.run import IngestRun, TableSummary

if TYPE_CHECKING:
    from fused_celery.table import TableWriter


def commit(run: IngestRun, written: list[dict[str, Any]]) -> TableSummary:
    """Commit the table from the ``written`` files (results of
    :func:`~.stage_write.write_files`); removes the staging area, the run's work folder on a
    thread while the commit runs."""
    chunks = [c for w in written for c in w["chunks"]]
    writer = run.table_writer()
    metas = writer.commit_chunks(
        chunks, report=run.report.model_dump(mode="json"), scratch=run.work
    )  # the work files go while the table is made whole; the table is not read back
    return TableSummary(
        output=writer.url,
        num_files=len({c.file_id for c in metas}),
        num_chunks=len(metas),
        num_rows=sum(c.num_rows for c in metas),
    )


def commit_table(
    run: IngestRun, written: list[dict[str, Any]], failed: list[FailedItem]
) -> IngestRun:
    """The collect of write: :func:`commit`; the run with its ``table``. failed: the write
    tasks left out (already in ``run.failed``)."""
    del failed
    return run.model_copy(update={"table": commit(run, written)})


def ingest_result(run: IngestRun) -> tuple[dict[str, Any], str]:
    """The Done job's result (``output``, ``num_files``, ``num_chunks``, ``num_rows``,
    ``report``: the :class:`~.row_report.RowReport` as JSON, with ``dropped`` and ``repaired``
    by reason) and its last log line (which says what was dropped or repaired)."""
    t = run.table
    assert t is not None, "ingest_result needs a committed run"
    line = (
        f"done: {t.num_rows} rows in {t.num_files} file(s), {t.num_chunks} chunk(s) at "
        f"{t.output} ({run.report.summary()})"
    )
    return {**t.model_dump(mode="json"), "report": run.report.model_dump(mode="json")}, line


def discard(run: IngestRun) -> None:
    """Leave the output location as it was before the run (``TableWriter.discard``: this run's
    staging and marker, and the folders it created; a committed table and other runs' staging
    stay)."""
    discard_staging(run.table_writer())


def discard_staging(writer: TableWriter) -> None:
    """:func:`discard` for the run of ``writer`` (before its run object exists)."""
    writer.discard()
