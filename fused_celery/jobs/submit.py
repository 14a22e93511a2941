"""Submitting one job step to the cluster, for any step type that registers a ``make_run``.

:func:`submit_step` makes the step's run (its type's ``make_run``: inputs and output checked,
the output marked), puts the job's :class:`~fused_celery.jobs.run_options.RunOptions` on it (so
they ride every task message) and hands it to :func:`fused_celery.jobs.celery_driver.submit` on
the options' queue. A new step type gets ``additional_env``, routing and the other options
without code of its own.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from fused_celery.jobs.run_options import RunOptions
from fused_celery.jobs.runners import runner_for

if TYPE_CHECKING:
    from fused_celery.jobs.response import RunResponse
    from fused_celery.jobs.stages import StageRun

__all__ = ["run_output", "submit_step"]


def run_output(run: StageRun) -> str | None:
    """The output table a step's run writes (its ``config.output``; None: none)."""
    return getattr(getattr(run, "config", None), "output", None)


def submit_step(
    step: Any, output: str | None, *, run_options: RunOptions, overwrite: bool | None
) -> RunResponse:
    """Start ``step`` on the cluster writing ``output`` (None: the step's own, or none under
    ``ignore_no_output``); returns its RunResponse (the type's registered ``response`` class)
    at once. overwrite: default the step's. Bad input, UDF, an existing output or an
    unreachable broker are raised here, before anything is submitted."""
    from fused_celery.jobs import celery_driver
    from fused_celery.jobs.response import RunResponse
    from fused_celery.options import options
    from fused_celery.state.connection import check_reachable

    runner = runner_for(step.type)
    queue = run_options.queue
    check_reachable(options.broker_url)
    make = runner.load("make_run")
    run = make(step, output, job_id=uuid.uuid4().hex, overwrite=overwrite)
    run = run.model_copy(update={"options": run_options})
    config = getattr(run, "config", step)
    source = getattr(config, "input", None)
    written = run_output(run)
    what = f"{step.type} step" + (f" {step.name!r}" if step.name else "")
    if isinstance(source, str):
        what += f" {source}"
    if written:
        what += f" -> {written}"
    record = celery_driver.submit(
        run,
        queue=queue,
        name=step.name,
        instance_type=run_options.instance_type,
        output=written,
        config={**config.model_dump(mode="json"), **run_options.record_fields()},
        message=f"submitted: {what} on queue {queue!r}",
    )
    response = RunResponse
    if runner.response is not None:
        response = runner.load("response")
    return response.from_record(record)
