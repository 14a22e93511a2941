"""Several steps as one staged job: the stage sequences of the steps, concatenated.

A :class:`~fused_celery.jobs.config.JobConfig` of steps ``s1 .. sn`` runs as ONE sequence whose
stages are every step's stages in order, renamed ``step<k>.<stage>`` (``step1.prepare``,
``step1.scatter``, ``step1.write``, ``step2.map``, ``step2.write``, ...). Its run,
:class:`JobRun`, carries each step's own run (as JSON) and the index of the step running; each
wrapped stage function loads step k's run, calls the step's own function and stores the new run
back. So both drivers run a job exactly as they run one step: one job record, one chord per
stage, task ids and progress per step-stage, the first stage of each step logging which step
starts and what the step before committed. A failed stage fails the job: the driver's
``discard`` removes the staging of the step that failed and of the steps not yet run; tables
that earlier steps committed stay (a line of the job's log, or a note of the error raised on
this machine, says so).

Sequences are named by their parts: the sequence of steps with sequences ``a:A``, ``b:B`` is
``fused_celery.jobs.compose:a:A|b:B`` (:func:`composed_target`); this module's ``__getattr__``
builds it from the name in any process (the drivers import sequences by name).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from fused_celery.jobs.stages import (
    FailedItem,
    Stage,
    StageRun,
    StageSequence,
    load_sequence,
)

__all__ = ["JobRun", "composed_target", "compose"]


KIND = "job"
_SEPARATOR = "|"


class JobRun(StageRun):
    """A job of several steps. targets: each step's sequence (``"module:NAME"``). runs: each
    step's run, JSON. labels: each step's name in logs. outputs: each step's output table
    (None: none). step: the step running (0-based). results / lines: the finished steps'
    results and last log lines. Each step's run is given this run's ``remote``."""

    kind: Literal["job"] = KIND
    targets: tuple[str, ...]
    runs: tuple[dict[str, Any], ...]
    labels: tuple[str, ...]
    outputs: tuple[str | None, ...]
    step: int = 0
    results: tuple[dict[str, Any], ...] = ()
    lines: tuple[str, ...] = ()

    def inner(self, k: int) -> StageRun:
        """Step ``k``'s own run."""
        run = load_sequence(self.targets[k]).load_run(self.runs[k])
        return run if run.remote == self.remote else run.model_copy(update={"remote": self.remote})

    def with_inner(self, k: int, inner: StageRun, **update: Any) -> JobRun:
        """This run with step ``k``'s run replaced by ``inner`` (and ``update``)."""
        runs = list(self.runs)
        runs[k] = inner.model_dump(mode="json")
        return self.model_copy(update={"runs": tuple(runs), **update})


def composed_target(targets: Sequence[str]) -> str:
    """The dotted name of the sequence made of the sequences ``targets``, in order."""
    for t in targets:
        if _SEPARATOR in t or ":" not in t:
            raise ValueError(f"not a stage sequence name: {t!r}")
    return f"{__name__}:{_SEPARATOR.join(targets)}"


def _wrap(
    k: int, n: int, seq: StageSequence[Any], stage: Stage[Any], first: bool, last: bool
) -> Stage[JobRun]:
    def items(run: JobRun) -> tuple[JobRun, Sequence[Any]]:
        inner, found = stage.items(run.inner(k))
        return run.with_inner(k, inner, step=k, ignore_errors=inner.ignore_errors), found

    def member(run: JobRun, item: Any) -> Any:
        return stage.member(run.inner(k), item)

    def collect(run: JobRun, ok: list[Any], failed: list[FailedItem]) -> JobRun:
        before = run.inner(k)
        before = before.model_copy(update={"failed": (*before.failed, *failed)})
        after = stage.collect(before, ok, failed)
        added = after.failed[len(before.failed) :]
        new = run.with_inner(k, after, failed=(*run.failed, *added))
        if last:
            result, line = seq.result(after)
            result = {**result, "failed": [f.model_dump(mode="json") for f in after.failed]}
            new = new.model_copy(
                update={"results": (*run.results[:k], result), "lines": (*run.lines[:k], line)}
            )
        return new

    def describe(run: JobRun, found: Sequence[Any]) -> str:
        own = stage.describe(run.inner(k), found) if stage.describe else ""
        text = own or f"{stage.name}: {len(found)} task(s)"
        if not first:
            return text
        head = f"step {k + 1}/{n} ({run.labels[k]}) starts; "
        if k:
            head = (
                f"step {k}/{n} ({run.labels[k - 1]}) {run.lines[k - 1]}; its output stays "
                f"committed even if a later step fails. " + head
            )
        return head + text

    return Stage(
        f"step{k + 1}.{stage.name}",
        items=items,
        member=member,
        collect=collect,
        key=stage.key,
        collect_name=f"step{k + 1}.{stage.collector}",
        describe=describe,
        units=stage.units,
        unit=stage.unit,
    )


def _result(run: JobRun) -> tuple[dict[str, Any], str]:
    outputs = [o for o in run.outputs if o]
    result = {"steps": list(run.results), "output": outputs[-1] if outputs else None}
    return result, f"done: {len(run.targets)} step(s); last: {run.lines[-1] if run.lines else ''}"


def _discard(run: JobRun) -> str:
    """Discard the step that stopped and the steps after it (their staging); committed tables
    of earlier steps stay. Returns the line saying which (the drivers log it or add it as a
    note to the error)."""
    current = min(len(run.results), len(run.targets) - 1)
    errors = []
    for k in range(current, len(run.targets)):
        try:
            load_sequence(run.targets[k]).discard(run.inner(k))
        except Exception as exc:  # go on with the other steps
            errors.append(f"step {k + 1}: {exc}")
    kept = [f"step {k + 1}: {run.outputs[k]}" for k in range(current) if run.outputs[k]]
    line = (
        f"job stopped in step {current + 1}/{len(run.targets)} ({run.labels[current]}): its "
        "output was not committed; "
        + (f"tables committed by earlier steps stay ({'; '.join(kept)})" if kept else
           "no earlier step committed a table")
    )  # fmt: skip
    if errors:
        raise RuntimeError(f"{line}; discarding failed: {'; '.join(errors)}")
    return line


def compose(targets: Sequence[str]) -> StageSequence[JobRun]:
    """The sequence running the sequences ``targets`` one after the other (module docstring)."""
    stages: list[Stage[JobRun]] = []
    for k, target in enumerate(targets):
        seq = load_sequence(target)
        for i, stage in enumerate(seq.stages):
            stages.append(
                _wrap(k, len(targets), seq, stage, first=i == 0, last=i == len(seq.stages) - 1)
            )
    return StageSequence(
        kind=KIND, run_type=JobRun, stages=tuple(stages), result=_result, discard=_discard
    )


_composed: dict[str, StageSequence[JobRun]] = {}


def __getattr__(name: str) -> StageSequence[JobRun]:
    """The composed sequence named ``a:A|b:B|...`` (see :func:`composed_target`)."""
    if ":" not in name:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    found = _composed.get(name)
    if found is None:
        found = _composed[name] = compose(name.split(_SEPARATOR))
    return found
