"""The local driver: any declared :class:`~fused_celery.jobs.stages.StageSequence` on this machine.

Each stage's members run as ``udf.map`` over a small member-calling UDF on the local engine
(worker processes of this machine, as many as CPUs); ``items``, ``collect`` and the rest run in
this process. A stage of one item, or every stage when ``engine`` is None, runs in this process
(no worker to start). Same sequence, same member values as on the cluster
(:mod:`.celery_driver`); no job record.

A failed member raises here with its own class (for a worker's error, the fused-celery error class
it raised, e.g. :class:`~fused_celery.errors.IngestInputError`) after the sequence's ``discard``,
unless ``run.ignore_errors``: then failed members are left out and listed in ``run.failed``; a
stage whose members all failed still raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

from fused_celery.errors import FusedError, UdfRuntimeError
from fused_celery.jobs.stages import (
    FailedItem,
    Stage,
    StageRun,
    error_text,
    jsonable,
    load_sequence,
    sequence_target,
)

__all__ = ["run_member", "run_stages"]

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=StageRun)

MEMBER_UDF = """
def stage_member(sequence: str, stage: str, run: dict, item):
    from fused_celery.jobs.local_driver import run_member

    return run_member(sequence, stage, run, item)
"""


def run_member(target: str, stage: str, data: dict[str, Any], item: Any) -> Any:
    """The value of ``stage``'s member on ``item`` for run ``data`` (JSON), in a worker process;
    target: the sequence's ``"module:NAME"``."""
    from fused_celery.worker_env import applied_env

    seq = load_sequence(target)
    run = seq.load_run(data)
    with applied_env(run.options.env):
        return jsonable(seq.stage(stage).member(run, item))


def _own_error(exc: BaseException) -> BaseException:
    """The error a worker raised, with its own class when it is one of fused-celery's."""
    from fused_celery import errors as types

    if isinstance(exc, UdfRuntimeError):
        cls = getattr(types, exc.child_exception_class or "", None)
        if isinstance(cls, type) and issubclass(cls, FusedError) and cls is not UdfRuntimeError:
            try:
                return cls(exc.message)
            except Exception:  # a class with another constructor: keep the wrapper
                return exc
    return exc


def _map(
    target: str,
    stage: Stage[Any],
    run: StageRun,
    items: Sequence[Any],
    *,
    engine: str | None,
) -> tuple[list[Any], list[FailedItem], BaseException | None]:
    """``(ok values in item order, failed items, first error)`` of the members of ``stage``.
    Without ``run.ignore_errors`` the first failure is raised (in this process: at once)."""
    ok: list[Any] = []
    failed: list[FailedItem] = []
    first: BaseException | None = None

    def fail(position: int, exc: BaseException) -> None:
        nonlocal first
        key = stage.key_of(position, items[position])
        failed.append(FailedItem(stage=stage.name, key=key, error=error_text(exc)))
        first = first or exc

    if engine is None or len(items) <= 1:
        for i, item in enumerate(items):
            try:
                ok.append(jsonable(stage.member(run, item)))
            except Exception as exc:
                if not run.ignore_errors:
                    raise
                fail(i, exc)
        return ok, failed, first
    from fused_celery.udf import udf_from_code

    data = run.model_dump(mode="json")
    pool = udf_from_code(MEMBER_UDF).map(
        [{"sequence": target, "stage": stage.name, "run": data, "item": it} for it in items],
        engine=engine,
        max_retry=0,
        cache=False,
        _quiet=True,
    )
    for i, value in enumerate(pool.results(return_exceptions=True)):
        if isinstance(value, BaseException):
            own = _own_error(value)
            if not run.ignore_errors:
                raise own from value
            fail(i, own)
        else:
            ok.append(value)
    return ok, failed, first


def run_stages(run: R, *, engine: str | None = "local", target: str | None = None) -> R:
    """Run the stage sequence registered for ``run.kind`` from ``run``; returns the run the last
    collect returned (``sequence.result(run)`` gives the job's result).

    engine: ``"local"`` (worker processes, default) or None (everything in this process).
    target: the sequence's ``"module:NAME"`` (default None: the one registered for ``run.kind``).
    On any error the sequence's ``discard`` runs and the error is raised (see the module
    docstring), with the line ``discard`` returns (what stays) as a note. The job's
    ``additional_env`` (``run.options.env``) is set while it runs, in this process and around
    every member in the worker processes, and restored after.
    """
    from fused_celery.worker_env import applied_env

    target = target or sequence_target(run.kind)
    seq = load_sequence(target)
    try:
        with applied_env(run.options.env):
            for stage in seq.stages:
                run, items = stage.items(run)
                items = list(items)
                ok, failed, first = _map(target, stage, run, items, engine=engine)
                if first is not None and not ok:
                    raise first
                run = run.model_copy(update={"failed": (*run.failed, *failed)})
                run = stage.collect(run, ok, failed)
    except BaseException as exc:
        try:
            line = seq.discard(run)
        except Exception:
            logger.warning("job %s: discard failed", run.job_id, exc_info=True)
        else:
            if line and hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(f"job {run.job_id}: {line}")
            elif line:
                logger.warning("job %s: %s", run.job_id, line)
        raise
    return run
