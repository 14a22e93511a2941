"""The run of a join step (:func:`make_join_run`), checked before any work; it is submitted by
:func:`fused_celery.jobs.submit.submit_step` and run here by ``run_map``
(:mod:`fused_celery.steps.map_runners`), both of which make the run with the ``make_run``
registered for the step's type, through the join's stage sequences
(:mod:`fused_celery.steps.join_stages`)."""

from __future__ import annotations

from fused_celery import storage
from fused_celery.errors import StepInputError
from fused_celery.steps.join import JoinJobStepConfig, JoinSinglefileJobStepConfig
from fused_celery.steps.join_stages import JoinRun, check_right_file, check_right_table


def make_join_run(
    step: JoinJobStepConfig | JoinSinglefileJobStepConfig,
    output: str | None,
    *,
    job_id: str,
    overwrite: bool | None = None,
    check_input: bool = True,
) -> JoinRun:
    """The run of join ``step`` as job ``job_id`` writing table ``output`` (default the
    step's).

    overwrite: default ``step.overwrite``. check_input: check the inputs now (left a table with
    chunks; right a table, or a file that exists and fits the per-worker cache), so bad input
    fails before any work (default True; in a job, inputs written by earlier steps are checked
    when the join starts). Raises :class:`~fused_celery.errors.StepInputError` (and its
    :class:`~fused_celery.errors.RightInputTooLargeError`) or
    :class:`~fused_celery.errors.TableExistsError`; the output's staging marker is written.
    """
    from fused_celery.table import TableWriter, read_chunk_metadata, resolve_table_url

    url = output or step.output
    if not url:
        raise StepInputError(
            f"a {step.type} step needs an output table: pass output_table=... or set_output(url)"
        )
    left, right = step._left(), step._right()
    out = resolve_table_url(url)
    for name, given in (("left", left), ("right", right)):
        same = (
            resolve_table_url(given) == out
            if isinstance(step, JoinJobStepConfig) or name == "left"
            else storage.normalize(given).startswith(out.rstrip("/") + "/")
        )
        if same:
            raise StepInputError(f"the {step.type} step's output {url} is its {name} input")
    if check_input:
        try:
            chunks = read_chunk_metadata(left)
        except Exception as exc:
            raise StepInputError(
                f"the join step's left input {left} is not a table: {exc}"
            ) from exc
        if not chunks:
            raise StepInputError(f"the join step's left table {left} is empty (no chunks)")
        if isinstance(step, JoinSinglefileJobStepConfig):
            check_right_file(right)
        else:
            check_right_table(right)
    ow = step.overwrite if overwrite is None else bool(overwrite)
    writer = TableWriter(url, overwrite=ow, run_id=job_id)
    config = step.model_copy(update={"output": writer.url, "overwrite": ow})
    return JoinRun(
        kind=step.type,
        job_id=job_id,
        ignore_errors=step.ignore_chunk_error,
        config=config,
        writer=writer.to_dict(),
        work=storage.join(writer.staging_url, "_work"),
    )
