"""The runner registry: which code runs a job step of a given ``type``.

A step model (a pydantic ``JobStepConfig``) never imports the code that runs it: the package
that defines a step type registers its runners here by dotted name (``"module:function"``), and
:meth:`JobStepConfig.run_remote` / :meth:`~JobStepConfig.run_local` look them up by the step's
``type`` and import them on first use. So models stay importable without Celery or the
stage code, and no import cycle can form between a model and its runner.

A step type with a ``make_run`` is submitted by :func:`fused_celery.jobs.submit.submit_step`
(its run made, the job's :class:`~fused_celery.jobs.run_options.RunOptions` set on it); one
without registers a remote runner ``submit(step, output, *, options, overwrite)`` returning a
:class:`~fused_celery.jobs.response.RunResponse`. A local runner is called
``run_local(step, output, *, overwrite)`` and returns the step's local result. A step that runs
as fan-out stages also names its declared :class:`~fused_celery.jobs.stages.StageSequence`
(``stages``), which the drivers find from a run's ``kind`` (the step type), and may name
``make_run(step, output, *, job_id, overwrite) -> StageRun`` (the run of the step as one step of
a multi-step job, :mod:`fused_celery.jobs.config`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Runner", "register", "registered_types", "runner_for"]


@dataclass(frozen=True)
class Runner:
    """Where the runners of one step type live: ``submit`` and ``run_local`` as
    ``"package.module:function"`` (either may be None: that way of running is not offered), and
    ``stages``, the ``"package.module:NAME"`` of its stage sequence (None: it has none), and
    ``make_run``, the function building its run inside a multi-step job (None: it cannot be one
    step of a ``JobConfig``), and ``model``, the ``"module:Class"`` of its step model (a
    ``JobConfig`` read from JSON builds its steps by ``type``), and ``response``, the
    ``"module:Class"`` of the :class:`~fused_celery.jobs.response.RunResponse` subclass its
    ``run_remote`` returns (None: ``RunResponse``)."""

    step_type: str
    submit: str | None = None
    run_local: str | None = None
    stages: str | None = None
    make_run: str | None = None
    model: str | None = None
    response: str | None = None

    def load(self, which: str) -> Callable[..., Any]:
        """The runner ``which`` ("submit", "run_local", "stages", "make_run" or "model"),
        imported."""
        target = getattr(self, which)
        if target is None:
            if which == "stages":
                raise NotImplementedError(f"job step type {self.step_type!r} has no stages")
            if which == "make_run":
                raise NotImplementedError(
                    f"a {self.step_type!r} job step cannot be one step of a JobConfig"
                )
            where = "on the cluster" if which == "submit" else "locally"
            raise NotImplementedError(f"a {self.step_type!r} job step cannot run {where}")
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)


_RUNNERS: dict[str, Runner] = {}


def register(
    step_type: str,
    *,
    submit: str | None = None,
    run_local: str | None = None,
    stages: str | None = None,
    make_run: str | None = None,
    model: str | None = None,
    response: str | None = None,
) -> None:
    """Register the runners of ``step_type`` (dotted ``"module:function"`` names), its stage
    sequence (``"module:NAME"``), its ``make_run``, its ``model`` and its ``response``; defaults
    None.
    Registering the same names again is allowed; other names for a known type are an error."""
    runner = Runner(
        step_type,
        submit=submit,
        run_local=run_local,
        stages=stages,
        make_run=make_run,
        model=model,
        response=response,
    )
    known = _RUNNERS.get(step_type)
    if known is not None and known != runner:
        raise ValueError(f"job step type {step_type!r} already has runners: {known}")
    _RUNNERS[step_type] = runner


def registered_types() -> list[str]:
    """The step types registered so far, sorted."""
    return sorted(_RUNNERS)


def runner_for(step_type: str | None) -> Runner:
    """The registered runners of ``step_type``; a clear error for unknown types."""
    runner = _RUNNERS.get(step_type or "")
    if runner is None:
        known = ", ".join(sorted(_RUNNERS)) or "none"
        raise NotImplementedError(
            f"no runner is registered for job step type {step_type!r} (registered: {known}); "
            "the package that defines the step registers it with "
            "fused_celery.jobs.runners.register"
        )
    return runner
