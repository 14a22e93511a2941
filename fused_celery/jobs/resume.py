"""Resuming a failed or cancelled job by its id: the same step (or ``JobConfig``) rebuilt from
its job record and submitted again with ``resume=True``, so only the work not yet staged
(:mod:`fused_celery.jobs.staged`) is redone. The same step run again with ``resume=True``
does the same without the id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fused_celery.errors import StepInputError

if TYPE_CHECKING:
    from fused_celery.jobs.response import RunResponse

__all__ = ["resume_job"]

#: The job record's ``config`` fields that are run options, not the step's.
OPTION_FIELDS = ("region", "disk_size_gb", "additional_env", "image_name")


def resume_job(job_id: str, **overrides: Any) -> RunResponse:
    """Submit job ``job_id`` (``Failed`` or ``Canceled``) again with ``resume=True`` and the
    same run options; returns the new job's RunResponse. overrides: other ``run_remote``
    arguments (e.g. ``instance_type``). A job that is running or done is a
    :class:`~fused_celery.errors.StepInputError`."""
    from fused_celery.jobs.config import JobConfig, step_model
    from fused_celery.state.job_record import JobRecord
    from fused_celery.state.statuses import JOB_CANCELED, JOB_FAILED

    record = JobRecord.open(job_id)
    snap = record.snapshot(errors=False)
    if snap.status not in (JOB_FAILED, JOB_CANCELED):
        raise StepInputError(
            f"job {job_id} is {snap.status}; only a Failed or Canceled job can be resumed"
        )
    config = record.config()
    kwargs: dict[str, Any] = {k: config.pop(k, None) for k in OPTION_FIELDS}
    kwargs["instance_type"] = snap.instance_type
    kwargs.update(overrides, resume=True)
    if snap.kind == "job":
        return JobConfig.model_validate(config).run_remote(**kwargs)
    step = step_model(str(snap.kind)).model_validate(config)
    return step.run_remote(**kwargs)
