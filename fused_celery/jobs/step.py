"""``JobStepConfig``: what every job step (ingest, map, join, ...) shares (seed 000).

Fields ``name``, ``metadata``, ``ignore_chunk_error``; the output (:meth:`set_output`) and the two
ways to run: :meth:`run_remote` (on the cluster, returns a
:class:`~fused_celery.jobs.response.RunResponse`) and :meth:`run_local` (in this process). A step
runs through the runners registered for its ``type`` (:mod:`fused_celery.jobs.runners`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError

from fused_celery.errors import StepConfigError
from fused_celery.jobs.runners import runner_for
from fused_celery.validation import describe

if TYPE_CHECKING:
    from fused_celery.jobs.response import RunResponse
    from fused_celery.jobs.run_options import RunOptions


def _problem(what: str, exc: ValidationError) -> str:
    return f"invalid {what}: {describe(exc)}; fix the value (fields and defaults: help({what}))"


class JobStepConfig(BaseModel):
    """A job step. name: default None. metadata: default None. ignore_chunk_error: finish the job
    and list failed slices instead of failing it (default False)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True
    )

    name: StrictStr | None = None
    metadata: dict[str, Any] | None = None
    ignore_chunk_error: StrictBool = False

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise StepConfigError(_problem(type(self).__name__, exc)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise StepConfigError(_problem(type(self).__name__, exc)) from None

    #: The field holding this step's output URL.
    _output_field: ClassVar[str] = "output"

    # --- output ----------------------------------------------------------------------------

    def set_output(
        self,
        table_or_url: str | None = None,
        *,
        table: str | None = None,
        url: str | None = None,
        inplace: bool = False,
        overwrite: bool | None = None,
    ) -> JobStepConfig:
        """This step writing to a table given as a name, path or URL (exactly one of
        ``table_or_url``, ``table``, ``url``). inplace: change this object instead of a copy
        (default False). overwrite: also set ``overwrite`` (default None: unchanged)."""
        given = [v for v in (table_or_url, table, url) if v is not None]
        if len(given) != 1:
            raise StepConfigError(
                f"set_output takes exactly one of table_or_url, table= or url=, got {len(given)}"
            )
        updates: dict[str, Any] = {self._output_field: str(given[0])}
        if overwrite is not None:
            updates["overwrite"] = bool(overwrite)
        target = self if inplace else self.model_copy(deep=False)
        for key, value in updates.items():
            setattr(target, key, value)
        return target

    def _output(self, output_table: str | None, ignore_no_output: bool = False) -> str | None:
        out = output_table if output_table is not None else getattr(self, self._output_field)
        if out is None and not ignore_no_output:
            raise StepConfigError(
                "this job step has no output table: pass output_table=... or call "
                "set_output(url) first (or ignore_no_output=True to run it without one)"
            )
        return out

    # --- running ---------------------------------------------------------------------------

    def run_remote(
        self,
        output_table: str | None = None,
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
    ) -> RunResponse:
        """Run this step on the cluster; returns at once with the job's RunResponse.

        output_table: table URL (default the step's output). instance_type / region /
        image_name: where the tasks go (:func:`fused_celery.queues.queue_name`; defaults None:
        the ``fused`` queue), carried by every task message with disk_size_gb (default None).
        additional_env: ``KEY=value`` strings set on the worker for every task of the job and
        restored after it (default None; protected variables are refused). ignore_no_udf: a
        step without UDF passes its input through (default False). ignore_no_output: run
        without an output table (default False). validate_imports: check here that the UDF's
        imports resolve (default None: no check). overwrite: replace an existing table
        (default None: the step's ``overwrite``). resume: reuse what a failed or cancelled run
        of the same step staged, redoing only the rest (default False).
        """
        from fused_celery.jobs.run_options import run_options

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
        output = self._output(output_table, ignore_no_output)
        return self._submit(output, found, overwrite=overwrite, validate_imports=validate_imports)

    def run_local(self, output_table: str | None = None, *, overwrite: bool | None = None) -> Any:
        """Run this step in this process and return its result (for an ingest: the opened
        table). output_table: default the step's output. overwrite: default the step's."""
        return self._run_here(self._output(output_table), overwrite=overwrite)

    def _submit(
        self,
        output: str | None,
        run_options: RunOptions,
        *,
        overwrite: bool | None,
        validate_imports: bool | None = None,
    ) -> RunResponse:
        from fused_celery.jobs.run_options import prepare_step

        runner = runner_for(getattr(self, "type", None))
        step = prepare_step(self, run_options, validate_imports=validate_imports)
        if runner.make_run is None:
            submit = runner.load("submit")
            return submit(step, output, options=run_options, overwrite=overwrite)
        from fused_celery.jobs.submit import submit_step

        return submit_step(step, output, run_options=run_options, overwrite=overwrite)

    def _run_here(self, output: str | None, *, overwrite: bool | None) -> Any:
        run_local = runner_for(getattr(self, "type", None)).load("run_local")
        return run_local(self, output, overwrite=overwrite)
