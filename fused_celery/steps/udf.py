"""``UdfJobStepConfig`` (seed 000): a job step that runs a UDF once per input value.

``input`` is a list of JSON-able values (each given to the UDF's first parameter) or None (run
once, without arguments). :meth:`UdfJobStepConfig.run_local` runs one sample in this process;
``run_remote`` runs every input as one job on the cluster
(:mod:`fused_celery.steps.udf_stages`), whose ``get_results()`` gives the outputs in input order.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, field_validator

from fused_celery.steps.base import UdfStepConfig, call_udf, require_udf
from fused_celery.udf import Udf


def input_kwargs(udf: Udf, value: Any, *, present: bool) -> dict[str, Any]:
    """The keyword arguments of one call of ``udf`` on ``value`` (its first parameter), or no
    argument when ``present`` is False (a step without input)."""
    if not present:
        return {}
    names = [p.name for p in udf.signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    if not names:
        from fused_celery.errors import StepUdfError

        raise StepUdfError(
            f"UDF {udf.name} takes no parameter, so it cannot receive the step's input; add a "
            "parameter or set_input(None) to run it once without arguments"
        )
    return {names[0]: value}


class UdfJobStepConfig(UdfStepConfig):
    """A job step of running a UDF. udf: the UDF (a ``@fused.udf`` function, its JSON dict or
    code; default None: set it with :meth:`set_udf`). input: JSON-able values, one call each
    (default None: one call without arguments). name, metadata, ignore_chunk_error: as
    :class:`~fused_celery.jobs.step.JobStepConfig`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    type: Literal["udf"] = "udf"
    input: list[Any] | None = None

    #: The UDF of a step run without one (``ignore_no_udf``): each input is its output.
    _identity_udf: ClassVar[str] = "def identity(value=None):\n    return value\n"

    @field_validator("input", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        if value is None or isinstance(value, (list, str, bytes, dict)):
            return value
        return list(value)

    def set_input(self, input: list[Any] | None, inplace: bool = False) -> UdfJobStepConfig:
        """This step with ``input`` (a list of JSON-able values, or None to run once without
        arguments). inplace: change this object instead of a copy (default False)."""
        return self._set_input(input, inplace)

    def run_local(  # type: ignore[override]
        self,
        sample: Any = ...,
        validate_output: bool = False,
        validate_imports: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """The UDF's output on one sample, in this process.

        sample: the value given to the UDF's first parameter (default ``...``: the first input,
        or no argument when the step has no input). validate_output: check that the output can
        be a job result (encodable on the wire; default False). validate_imports: first check
        that the UDF's imports resolve (default None: no check). kwargs: more keyword arguments
        of the call. Raises the UDF's error as a :class:`~fused_celery.errors.UdfRuntimeError`."""
        udf = require_udf(self)
        if validate_imports:
            from fused_celery.jobs.run_options import check_imports

            check_imports(self, udf)
        if sample is ...:
            present = bool(self.input)
            value = self.input[0] if present else None
        else:
            present, value = True, sample
        call = {**kwargs, **input_kwargs(udf, value, present=present)}
        out = call_udf(udf, call, where="sample")
        if validate_output:
            from fused_celery import codec

            codec.encode(out)
        return out

    def _output(self, output_table: str | None, ignore_no_output: bool = False) -> str | None:
        return output_table  # a UDF step writes no table
