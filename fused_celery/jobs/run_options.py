"""What a ``run_remote`` / ``run_local`` asks of a whole job, for any step type.

:class:`RunOptions` is a field of every :class:`~fused_celery.jobs.stages.StageRun`, so it travels
in every task message of the job: the drivers set :attr:`RunOptions.env` around every task
(:func:`fused_celery.worker_env.applied_env`), and ``instance_type``, ``region``,
``disk_size_gb`` and ``image_name`` are there for the deployment to route on (the job's queue is
:func:`fused_celery.queues.queue_name` of them). :func:`run_options` checks them at submission;
:func:`prepare_step` applies ``ignore_no_udf`` and ``validate_imports`` to a step before its run
is made.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fused_celery.errors import StepUdfError, UdfImportError

__all__ = ["RunOptions", "check_imports", "prepare_step", "run_options"]


class RunOptions(BaseModel):
    """A job's run options (all defaults: nothing asked).

    instance_type / region / image_name: where the job's tasks run (default None: the default
    queue). disk_size_gb: disk the worker needs (default None). env: ``additional_env``, set on
    the worker for every task of the job and restored after it (default none). ignore_no_udf:
    a step without UDF passes its input through unchanged (default False: an error).
    ignore_no_output: a step without output table runs without writing one (default False: an
    error). resume: reuse what a failed or cancelled run of the same work staged (default False).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str | None = None
    region: str | None = None
    disk_size_gb: int | None = Field(default=None, gt=0)
    image_name: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    ignore_no_udf: bool = False
    ignore_no_output: bool = False
    resume: bool = False

    @property
    def queue(self) -> str:
        """The queue the job's tasks go to: :func:`fused_celery.queues.queue_name` of the
        instance type, region and image; without an instance type the default queue (region
        and image still ride the messages and the record)."""
        from fused_celery.options import DEFAULT_QUEUE
        from fused_celery.queues import queue_name

        if self.instance_type is None:
            return DEFAULT_QUEUE
        return queue_name(self.instance_type, self.region, self.image_name)

    def record_fields(self) -> dict[str, Any]:
        """What the job record keeps of them (its ``config``): region, disk_size_gb,
        additional_env, image_name."""
        return {
            "region": self.region,
            "disk_size_gb": self.disk_size_gb,
            "additional_env": dict(self.env),
            "image_name": self.image_name,
        }


def run_options(
    instance_type: str | None = None,
    *,
    region: str | None = None,
    disk_size_gb: int | None = None,
    additional_env: list[str] | dict[str, str] | None = None,
    image_name: str | None = None,
    ignore_no_udf: bool = False,
    ignore_no_output: bool = False,
    resume: bool = False,
) -> RunOptions:
    """The checked :class:`RunOptions` of a ``run_remote`` (of a step or a whole job): a
    whitelisted ``instance_type``, ``region`` / ``image_name`` usable in a queue name,
    ``disk_size_gb`` a positive integer, ``additional_env`` ``KEY=value`` strings (or a dict)
    naming no protected variable (:class:`~fused_celery.errors.ProtectedEnvError`). All default
    None / False."""
    from fused_celery.engines import check_instance_type
    from fused_celery.worker_env import parse_additional_env

    if instance_type is not None:
        check_instance_type(instance_type, what="instance type")
    if disk_size_gb is not None and (isinstance(disk_size_gb, bool) or disk_size_gb <= 0):
        raise ValueError(f"disk_size_gb must be a positive integer, got {disk_size_gb!r}")
    found = RunOptions(
        instance_type=instance_type,
        region=region,
        disk_size_gb=disk_size_gb,
        image_name=image_name,
        env=parse_additional_env(additional_env),
        ignore_no_udf=bool(ignore_no_udf),
        ignore_no_output=bool(ignore_no_output),
        resume=bool(resume),
    )
    found.queue  # noqa: B018 - raises for a region or image that cannot name a type's queue
    return found


def prepare_step(step: Any, options: RunOptions, *, validate_imports: bool | None) -> Any:
    """``step`` ready to run under ``options``: without UDF and ``ignore_no_udf``, a copy whose
    UDF passes its input through (the step class's ``_identity_udf``; a class without one runs
    without UDF on its own, e.g. the built-in join); with ``validate_imports``,
    its UDF's imports checked here (:class:`~fused_celery.errors.UdfImportError` naming the
    module). Steps without a ``udf`` field are returned as they are."""
    if "udf" not in type(step).model_fields:
        return step
    if step.udf is None:
        identity = getattr(step, "_identity_udf", None)
        if identity is None:  # the step runs without UDF on its own (e.g. the built-in join)
            return step
        if not options.ignore_no_udf:
            raise StepUdfError(
                f"job step {step.name or step.type!r} has no UDF; call set_udf(udf), or pass "
                "ignore_no_udf=True to run it without one (its input passes through unchanged)"
            )
        from fused_celery.udf import udf_from_code

        step = step.model_copy(update={"udf": udf_from_code(identity)})
    if validate_imports:
        check_imports(step, step.udf)
    return step


def check_imports(step: Any, udf: Any) -> None:
    """``validate_imports``: raise :class:`~fused_celery.errors.UdfImportError` naming the
    modules ``udf`` (of job step ``step``) imports that cannot be found here."""
    from fused_celery.udf_imports import unresolved_imports

    missing = unresolved_imports(udf.code)
    if missing:
        raise UdfImportError(
            f"UDF {udf.name} of job step {step.name or step.type!r} imports "
            f"{', '.join(repr(m) for m in missing)}, which cannot be found here; install "
            "it (pip install ...) or remove the import (validate_imports=False skips this check)"
        )
