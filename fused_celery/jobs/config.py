"""``JobConfig`` (seed 000): steps run in sequence as ONE job.

``JobConfig(name=..., steps=[...], metadata=...)``. :meth:`JobConfig.run_remote` runs the steps
on the cluster as one job record (per-step progress and logs, one :class:`RunResponse`);
:meth:`JobConfig.run_local` runs the same on this machine's local engine. Design: the steps'
stage sequences are concatenated into one sequence (:mod:`fused_celery.jobs.compose`), so the
drivers run a job exactly as they run one step; each step's run is made up front by its type's
registered ``make_run`` (outputs checked and marked before any work), a step without an input of
its own reading the previous step's output table (a step with a ``bind_inputs(outputs)``
method, a join, binds its inputs itself: left and right from the two steps before it).

A ``JobConfig`` round-trips through JSON: steps are rebuilt by ``type`` from the models the step
packages register (:mod:`fused_celery.jobs.runners`); :data:`STEP_PACKAGES` are imported by name
for that, so this module imports no step package.
"""

from __future__ import annotations

import importlib
import re
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, SerializeAsAny, StrictStr, field_validator

from fused_celery.errors import StepInputError
from fused_celery.jobs.compose import JobRun, composed_target
from fused_celery.jobs.run_options import RunOptions, prepare_step, run_options
from fused_celery.jobs.runners import registered_types, runner_for
from fused_celery.jobs.stages import StageRun, load_sequence, sequence_target
from fused_celery.jobs.step import JobStepConfig
from fused_celery.options import options

if TYPE_CHECKING:
    from fused_celery.jobs.response import RunResponse

__all__ = ["JOB_NAME", "STEP_PACKAGES", "JobConfig"]

#: What a job name matches (the reference SDK's pattern).
JOB_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_.:\-]*")
#: The packages that register step types, imported by name when a step is read from JSON.
STEP_PACKAGES = ("fused_celery.partition", "fused_celery.steps")


def step_model(step_type: str) -> type[JobStepConfig]:
    """The step model registered for ``step_type`` (the step packages imported first)."""
    if step_type not in registered_types():
        for package in STEP_PACKAGES:
            importlib.import_module(package)
    model = runner_for(step_type).load("model")
    if not (isinstance(model, type) and issubclass(model, JobStepConfig)):
        raise TypeError(f"the model registered for step type {step_type!r} is not a step")
    return model


class JobConfig(BaseModel):
    """A job: ``steps`` run in sequence.

    name: the job's name, matching ``[a-zA-Z][a-zA-Z0-9_.:\\-]*`` (default None). steps: job
    steps (ingest, map, UDF; at least one). metadata: user metadata, JSON-able (default None).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: StrictStr | None = None
    steps: list[SerializeAsAny[JobStepConfig]]
    metadata: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        if name is not None and not JOB_NAME.fullmatch(name):
            raise ValueError(
                f"job name {name!r} is not valid: it starts with a letter and has only letters, "
                "digits, '_', '.', ':' and '-' (no spaces)"
            )
        return name

    @field_validator("steps", mode="before")
    @classmethod
    def _build_steps(cls, steps: Any) -> Any:
        if not isinstance(steps, (list, tuple)) or not steps:
            raise ValueError("a job needs a list of one or more steps")
        built = []
        for i, step in enumerate(steps):
            if isinstance(step, dict):
                if "type" not in step:
                    raise ValueError(f"step {i + 1} has no 'type'")
                step = step_model(str(step["type"])).model_validate(step)
            elif not isinstance(step, JobStepConfig) or not hasattr(step, "type"):
                raise ValueError(
                    f"step {i + 1} is a {type(step).__name__}, not a job step (fused.ingest(...),"
                    " fused.map(...), UdfJobStepConfig(...))"
                )
            built.append(step)
        return built

    # --- planning ---------------------------------------------------------------------------

    def _steps_with(self, kwargs: dict[str, Any]) -> list[JobStepConfig]:
        """Copies of the steps, UDF parameters set from ``kwargs`` (each step takes the ones
        its UDF has)."""
        out = []
        for step in self.steps:
            step = step.model_copy(deep=True)
            udf = getattr(step, "udf", None)
            if udf is not None and kwargs:
                names = set(udf.signature.parameters)
                mine = {k: v for k, v in kwargs.items() if k in names}
                if mine:
                    step.udf = udf.model_copy(update={"parameters": {**udf.parameters, **mine}})
            out.append(step)
        return out

    def _plan(
        self,
        job_id: str,
        *,
        overwrite: bool | None,
        run_options: RunOptions,
        validate_imports: bool | None = None,
        **kwargs: Any,
    ) -> JobRun:
        """The job's run: each step's run made by its ``make_run`` (a step without input bound
        to the previous step's output; ``ignore_no_udf`` and ``validate_imports`` applied by
        :func:`~fused_celery.jobs.run_options.prepare_step`), every run given ``run_options``.
        On any error the runs made so far are discarded."""
        runs: list[StageRun] = []
        targets: list[str] = []
        outputs: list[str | None] = []
        try:
            for k, step in enumerate(self._steps_with(kwargs)):
                step = prepare_step(step, run_options, validate_imports=validate_imports)
                field = step._output_field
                if (
                    field in type(step).model_fields
                    and getattr(step, field) is None
                    and not run_options.ignore_no_output
                ):
                    raise StepInputError(
                        f"step {k + 1} ({step.type}) has no output table; set_output(url) on "
                        "it, or pass ignore_no_output=True to run it without writing one"
                    )
                chained = False
                bind = getattr(step, "bind_inputs", None)
                if bind is not None:  # a step of two inputs (a join) binds them itself
                    step, chained = bind(list(outputs))
                elif (
                    "input" in type(step).model_fields and step.type != "udf" and step.input is None
                ):
                    previous = outputs[-1] if outputs else None
                    if previous is None:
                        where = "there is no previous step" if not k else (
                            f"step {k} writes no table")  # fmt: skip
                        raise StepInputError(
                            f"step {k + 1} ({step.type}) has no input and {where}; give it an "
                            "input table (fused.map(table, ...) or set_input(url))"
                        )
                    step = step.model_copy(update={"input": previous})
                    chained = True
                make = runner_for(step.type).load("make_run")
                run = make(step, None, job_id=job_id, overwrite=overwrite, check_input=not chained)
                runs.append(run.model_copy(update={"options": run_options}))
                targets.append(sequence_target(step.type))
                config = getattr(run, "config", None)
                outputs.append(getattr(config, "output", None) if step.type != "udf" else None)
        except BaseException:
            for target, run in zip(targets, runs):
                try:
                    load_sequence(target).discard(run)
                except Exception:  # still raise the first error
                    pass
            raise
        labels = tuple(
            f"{getattr(s, 'name', None) or s.type}" for s in self.steps
        )  # fmt: skip
        return JobRun(
            job_id=job_id,
            ignore_errors=runs[0].ignore_errors,
            targets=tuple(targets),
            runs=tuple(r.model_dump(mode="json") for r in runs),
            labels=labels,
            outputs=tuple(outputs),
            options=run_options,
        )

    # --- running ----------------------------------------------------------------------------

    def run_remote(
        self,
        instance_type: str | None = None,
        *,
        region: str | None = None,
        disk_size_gb: int | None = None,
        additional_env: list[str] | dict[str, str] | None = None,
        image_name: str | None = None,
        ignore_no_udf: bool = False,
        ignore_no_output: bool = False,
        validate_imports: bool | None = None,
        overwrite: bool | None = None,
        resume: bool = False,
        **kwargs: Any,
    ) -> RunResponse:
        """Run the steps on the cluster as one job; returns its RunResponse at once (its
        ``get_results()``: ``{"steps": [each step's result], "output": the last table,
        "failed": [...]}``).

        instance_type / region / image_name / disk_size_gb / additional_env / ignore_no_udf /
        ignore_no_output / validate_imports / resume: as for a step's ``run_remote``
        (:meth:`JobStepConfig.run_remote`), for every step. overwrite: for every step (default
        None: each step's own). kwargs: UDF parameters, given to each step whose UDF takes them.
        Bad steps, inputs or existing outputs are raised here, before anything is submitted.
        """
        from fused_celery.jobs import celery_driver
        from fused_celery.jobs.response import RunResponse
        from fused_celery.state.connection import check_reachable

        found = run_options(
            instance_type,
            region=region,
            disk_size_gb=disk_size_gb,
            additional_env=additional_env,
            image_name=image_name,
            ignore_no_udf=ignore_no_udf,
            ignore_no_output=ignore_no_output,
            resume=resume,
        )
        queue = found.queue
        check_reachable(options.broker_url)
        run = self._plan(
            uuid.uuid4().hex,
            overwrite=overwrite,
            run_options=found,
            validate_imports=validate_imports,
            **kwargs,
        )
        record = celery_driver.submit(
            run,
            queue=queue,
            name=self.name,
            instance_type=instance_type,
            output=next((o for o in reversed(run.outputs) if o), None),
            config={**self.model_dump(mode="json"), **found.record_fields()},
            message=f"submitted: job of {len(run.targets)} step(s) "
            f"({', '.join(run.labels)}) on queue {queue!r}",
            target=composed_target(run.targets),
        )
        return RunResponse.from_record(record)

    def run_local(
        self,
        *,
        engine: str | None = "local",
        overwrite: bool | None = None,
        additional_env: list[str] | dict[str, str] | None = None,
        ignore_no_udf: bool = False,
        ignore_no_output: bool = False,
        validate_imports: bool | None = None,
        resume: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Run the steps on this machine, the same stages as :meth:`run_remote`; returns the
        job's result (``{"steps": [...], "output": ..., "failed": [...]}``).

        engine: ``"local"`` (worker processes, default) or None (this process). overwrite: for
        every step (default None: each step's own). additional_env / ignore_no_udf /
        ignore_no_output / validate_imports / resume: as for :meth:`run_remote` (defaults
        None / False). kwargs: UDF parameters, as for :meth:`run_remote`. A failed step raises
        its error (a note says which step and which earlier tables stay); its output is not
        committed."""
        from fused_celery.jobs.local_driver import run_stages

        found = run_options(
            additional_env=additional_env,
            ignore_no_udf=ignore_no_udf,
            ignore_no_output=ignore_no_output,
            resume=resume,
        )
        run = self._plan(
            uuid.uuid4().hex,
            overwrite=overwrite,
            run_options=found,
            validate_imports=validate_imports,
            **kwargs,
        )
        target = composed_target(run.targets)
        done = run_stages(run, engine=engine, target=target)
        result, _ = load_sequence(target).result(done)
        _warn_rows(result.get("steps") or [])
        return {**result, "failed": [f.model_dump(mode="json") for f in done.failed]}


def _warn_rows(steps: list[Any]) -> None:
    """An :class:`~fused_celery.errors.IngestRowsWarning` per step whose result reports rows
    dropped or repaired (an ingest's ``report``)."""
    import warnings

    from fused_celery.errors import IngestRowsWarning

    for k, step in enumerate(steps):
        report = step.get("report") if isinstance(step, dict) else None
        if isinstance(report, dict) and (report.get("dropped") or report.get("repaired")):
            warnings.warn(
                f"step {k} into {step.get('output')}: {report.get('input_rows')} rows in, "
                f"{report.get('output_rows')} out; dropped {report.get('dropped') or {}}, "
                f"repaired {report.get('repaired') or {}}",
                IngestRowsWarning,
                stacklevel=3,
            )
