"""What the UDF steps share: :class:`UdfStepConfig` (the ``udf`` field, coerced from a
:class:`~fused_celery.udf.Udf`, its JSON dict or its code; ``set_udf`` and ``set_input``),
calling the UDF through :mod:`fused_celery.execute` (its output in the job's log), and removing
a failed run's staging from an output table."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from fused_celery.errors import StepUdfError, error_from_dict
from fused_celery.jobs.step import JobStepConfig
from fused_celery.udf import Udf

if TYPE_CHECKING:
    from fused_celery.jobs.stages import StageRun
    from fused_celery.table import TableWriter

#: Characters of one UDF call's captured output kept in the job's log.
JOB_LOG_CHARS = 2000


def coerce_udf(value: Any) -> Any:
    """A :class:`Udf` from a Udf, its JSON dict (``Udf.model_dump()``), its code (a string
    holding a ``def``) or a path/URL for :func:`fused_celery.load`; None stays None."""
    if value is None or isinstance(value, Udf):
        return value
    if isinstance(value, dict):
        return Udf.model_validate(value)
    if isinstance(value, str):
        if "def " in value:
            from fused_celery.udf import udf_from_code

            return udf_from_code(value)
        from fused_celery.udf_loader import load

        return load(value)
    raise StepUdfError(
        f"a job step's udf must be a @fused.udf function, its JSON dict or its code, not "
        f"{type(value).__name__}"
    )


def with_udf(
    udf: Any, parameters: dict[str, Any] | None = None, replace_parameters: bool = False
) -> Udf:
    """``udf`` coerced (:func:`coerce_udf`) with ``parameters`` set (default None: unchanged);
    replace_parameters: drop the parameters not in ``parameters`` (default False: merge)."""
    found = coerce_udf(udf)
    if found is None:
        raise StepUdfError("set_udf needs a UDF; got None")
    if parameters is not None:
        merged = dict(parameters) if replace_parameters else {**found.parameters, **parameters}
        found = found.model_copy(update={"parameters": merged})
    return found


class UdfStepConfig(JobStepConfig):
    """A job step that runs a UDF (map, UDF, join steps). udf: a ``@fused.udf`` function, its
    JSON dict or its code (default None: set it with :meth:`set_udf`). Subclasses define
    ``input`` and may check a UDF (:meth:`_check_udf`) or drop caches when the input changes
    (:meth:`_input_changed`)."""

    udf: Udf | None = None

    @field_validator("udf", mode="before")
    @classmethod
    def _coerce_udf(cls, value: Any) -> Any:
        return coerce_udf(value)

    def set_udf(
        self,
        udf: Any,
        parameters: dict[str, Any] | None = None,
        replace_parameters: bool = False,
        inplace: bool = False,
    ) -> Any:
        """This step with ``udf`` (a Udf, its dict or code). parameters: set on the UDF (default
        None: unchanged). replace_parameters: drop the ones not given (default False).
        inplace: change this object instead of a copy (default False)."""
        found = with_udf(udf, parameters, replace_parameters)
        self._check_udf(found)
        target = self if inplace else self.model_copy(deep=True)
        target.udf = found
        return target

    def _set_input(self, input: Any, inplace: bool) -> Any:
        """This step (or a copy, unless ``inplace``) with ``input`` (validated by the field)."""
        target = self if inplace else self.model_copy(deep=True)
        target.input = input
        target._input_changed()
        return target

    def _check_udf(self, udf: Udf) -> None:
        """Raise :class:`StepUdfError` when ``udf`` does not fit this step (default: any)."""

    def _input_changed(self) -> None:
        """Called after ``input`` changed (default: nothing)."""


def require_udf(step: Any) -> Udf:
    """The step's UDF, or a :class:`StepUdfError` saying how to set one."""
    if step.udf is None:
        raise StepUdfError(
            f"job step {step.name or step.type!r} has no UDF; call set_udf(udf) or pass udf=..."
        )
    return step.udf


def job_log(run: StageRun, message: str, level: str = "INFO") -> None:
    """Append ``message`` to the job's log when ``run`` runs on the cluster (a job record
    exists); on this machine, nothing. Each line of it starts with ``[<stage>]`` when a task of
    a stage runs (e.g. ``[step2.map] chunk 0/3: ...``: the step, file and chunk it came from).
    Never raises: a log line is not worth a task."""
    if not run.remote:
        return
    from fused_celery.jobs.stages import current_stage

    stage = current_stage()
    if stage:
        message = "\n".join(f"[{stage}] {line}" for line in message.splitlines() or [""])
    with contextlib.suppress(Exception):
        from fused_celery.state.job_record import JobRecord

        JobRecord.open(run.job_id).log(message, level=level)


def call_udf(
    udf: Udf | dict[str, Any],
    kwargs: dict[str, Any],
    *,
    where: str,
    run: StageRun | None = None,
) -> Any:
    """The value of one UDF call in this process, through :func:`fused_celery.execute.run_call`;
    the UDF's error is raised as a typed :class:`~fused_celery.errors.UdfRuntimeError` whose
    message starts with ``where``. Its captured output is printed (the worker's log) and, for a
    ``run`` on the cluster, added to the job's log (the last :data:`JOB_LOG_CHARS` characters,
    prefixed with ``where``; default None: not)."""
    from fused_celery.execute import run_call

    wire = udf.wire() if isinstance(udf, Udf) else udf
    outcome = run_call(wire, kwargs, encode_result=False)
    logs = outcome.get("logs") or ""
    if logs:
        print(logs, end="", flush=True)
        if run is not None:
            kept = logs.rstrip()[-JOB_LOG_CHARS:]
            job_log(run, "\n".join(f"{where}: {line}" for line in kept.splitlines()))
    if not outcome["ok"]:
        error = dict(outcome["error"] or {})
        error["message"] = f"{where}: {error.get('message', '')}"
        raise error_from_dict(error)
    return outcome.get("value")


def discard_writer(writer: TableWriter) -> None:
    """Leave a failed run's output location as it was (``TableWriter.discard``: its staging and
    marker, and the folders it created; a committed table from an earlier run is untouched)."""
    writer.discard()
