"""The UDF step as one fan-out stage (:data:`UDF_STEP`): one member per input value, the outputs
gathered in input order; and its runners (:func:`make_udf_run`, submitted by
:func:`fused_celery.jobs.submit.submit_step`, and :func:`run_udf_step`).

Outputs are small values (numbers, short lists, small frames): each travels back encoded by
:mod:`fused_celery.codec` and the job's result holds them; :class:`UdfStepResponse` decodes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal

from fused_celery import codec
from fused_celery.jobs.response import RunResponse
from fused_celery.jobs.stages import FailedItem, Stage, StageRun, StageSequence
from fused_celery.steps.base import call_udf, require_udf
from fused_celery.steps.udf import UdfJobStepConfig, input_kwargs

KIND = "udf"


class UdfRun(StageRun):
    """One UDF step: its config (UDF and inputs; the inputs ride every message, so keep them
    small) and, once collected, the encoded outputs in input order (None for inputs left
    out under ``ignore_chunk_error``)."""

    kind: Literal["udf"] = KIND
    config: UdfJobStepConfig
    outputs: tuple[Any, ...] = ()


def udf_items(run: UdfRun) -> tuple[UdfRun, list[int]]:
    """One item per input value (its position); one item when the step has no input."""
    return run, list(range(len(run.config.input))) if run.config.input is not None else [0]


def udf_member(run: UdfRun, position: int) -> dict[str, Any]:
    """The UDF on input ``position``: ``{"i": position, "value": codec envelope}``."""
    udf = require_udf(run.config)
    inputs = run.config.input
    present = inputs is not None
    value = inputs[position] if present else None
    where = f"input {position}" if present else "the call"
    out = call_udf(udf, input_kwargs(udf, value, present=present), where=where, run=run)
    return {"i": int(position), "value": codec.encode(out)}


def udf_collect(run: UdfRun, ok: list[dict[str, Any]], failed: list[FailedItem]) -> UdfRun:
    """The outputs in input order (None where an input failed and was left out)."""
    del failed
    n = len(run.config.input) if run.config.input is not None else 1
    outputs: list[Any] = [None] * n
    for value in ok:
        outputs[int(value["i"])] = value["value"]
    return run.model_copy(update={"outputs": tuple(outputs)})


def udf_result(run: UdfRun) -> tuple[dict[str, Any], str]:
    """The Done job's result: ``{"outputs": [codec envelopes]}``, and its last log line."""
    n = sum(1 for o in run.outputs if o is not None)
    return {"outputs": list(run.outputs)}, f"done: {n} output(s) of UDF {run.config.udf.name}"


def udf_discard(run: UdfRun) -> None:
    """Nothing to remove: a UDF step writes no table."""


def describe_udf(run: UdfRun, items: Sequence[int]) -> str:
    """The log line when the step starts."""
    return f"udf: UDF {run.config.udf.name} on {len(items)} input(s)"


UDF_STEP: StageSequence[UdfRun] = StageSequence(
    kind=KIND,
    run_type=UdfRun,
    stages=(
        Stage(
            "udf",
            items=udf_items,
            member=udf_member,
            collect=udf_collect,
            key=str,
            collect_name="outputs",
            describe=describe_udf,
        ),
    ),
    result=udf_result,
    discard=udf_discard,
)


def decode_outputs(result: dict[str, Any] | None) -> list[Any] | None:
    """The outputs of a UDF step's result (None while it runs), decoded, in input order."""
    if result is None:
        return None
    return [None if o is None else codec.decode(o) for o in result.get("outputs", [])]


class UdfStepResponse(RunResponse):
    """The :class:`RunResponse` of a UDF step: :meth:`get_results` gives the outputs."""

    def get_results(self) -> list[Any] | None:  # type: ignore[override]
        """The UDF's outputs in input order once ``Done`` (None while it runs; None for inputs
        left out under ``ignore_chunk_error``); raises like :meth:`RunResponse.get_results`."""
        return decode_outputs(super().get_results())


def make_udf_run(
    step: UdfJobStepConfig,
    output: str | None,
    *,
    job_id: str,
    overwrite: bool | None = None,
    check_input: bool = True,
) -> UdfRun:
    """The run of ``step`` as job ``job_id`` (output, overwrite and check_input unused: a UDF
    step reads and writes no table)."""
    del output, overwrite, check_input
    require_udf(step)
    return UdfRun(job_id=job_id, ignore_errors=step.ignore_chunk_error, config=step)


def run_udf_step(
    step: UdfJobStepConfig,
    output: str | None = None,
    *,
    overwrite: bool | None = None,
    engine: str | None = "local",
) -> list[Any]:
    """Run every input of ``step`` on this machine (engine ``"local"``: worker processes,
    default; None: this process); returns the outputs in input order."""
    from fused_celery.jobs.local_driver import run_stages

    run = make_udf_run(step, output, job_id=uuid.uuid4().hex, overwrite=overwrite)
    done = run_stages(run, engine=engine)
    return decode_outputs(udf_result(done)[0]) or []
