"""A job as data: a declared sequence of fan-out stages over a small run object.

A job that fans out (an ingest; map and join steps next) is declared once as a
:class:`StageSequence`: its run type — a :class:`StageRun`, pydantic, JSON-able and small, the one
thing every message carries — and its :class:`Stage` s, each made of

- ``items(run) -> (run, items)``: the stage's fan-out, one JSON-able item per member task, and the
  run updated with what the fan-out decided (a count, say);
- ``member(run, item) -> value``: one member's work, on any worker; the value is small, JSON-able
  and depends only on ``(run, item)`` (no timestamps, no random ids), so a member redelivered after
  its worker died returns the same value and a Redis chord counts it once;
- ``collect(run, ok, failed) -> run``: after every member of the stage; ``ok`` are the values of
  the members that succeeded, in item order, ``failed`` the :class:`FailedItem` s left out under
  ``run.ignore_errors`` (already added to ``run.failed``); returns a new run
  (``run.model_copy(update=...)``). A collect runs again when its callback is redelivered, so it
  is idempotent — except the last stage's (the commit), which the drivers run at most once;

then ``result(run) -> (result, line)``, the Done job's JSON result and its last log line, and
``discard(run)``, which removes what a failed or cancelled run left behind and may return a line
saying what stays (the drivers log it on the cluster, and add it as a note to the error raised on
this machine).

Two drivers run any sequence: :mod:`.celery_driver` (chained chords, the job record as guard) and
:mod:`.local_driver` (this machine). A step package registers its sequence by dotted name
(:func:`fused_celery.jobs.runners.register`, ``stages="module:NAME"``) and the drivers find it
from the run's ``kind`` (:func:`sequence_target`), so ``jobs`` imports no step package.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python

from fused_celery.errors import FusedError
from fused_celery.jobs.run_options import RunOptions
from fused_celery.jobs.runners import runner_for

__all__ = [
    "FailedItem",
    "MemberOutcome",
    "Stage",
    "StageRun",
    "StageSequence",
    "current_stage",
    "error_text",
    "in_stage",
    "jsonable",
    "load_sequence",
    "sequence_target",
]

#: Characters kept of a member's error text.
ERROR_CHARS = 2000


class FailedItem(BaseModel):
    """A member that failed and was left out (``ignore_errors``): its stage, key and error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str
    key: str
    error: str


class StageRun(BaseModel):
    """What every message of a staged job carries; subclass it with the job's own fields.

    kind: the step type; the drivers find the sequence by it. job_id: the job's id (the job
    record's, and the stem of every task id). ignore_errors: leave failed members out and list
    them in ``failed`` instead of failing the job (default False). failed: the members left out
    so far (default none). remote: run by the Celery driver, so a job record exists to log to
    (set by its ``submit``; default False). options: the job's
    :class:`~fused_celery.jobs.run_options.RunOptions` (``additional_env`` applied around every
    task by the drivers; the fleet fields for routing; default: none asked). Keep it small: no
    rows, no per-item lists that grow with the input.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    job_id: str
    ignore_errors: bool = False
    failed: tuple[FailedItem, ...] = ()
    remote: bool = False
    options: RunOptions = Field(default_factory=RunOptions)


R = TypeVar("R", bound=StageRun)


class MemberOutcome(BaseModel):
    """What a member task returns: ``status`` ``ok`` (with ``value``), ``error`` (with the
    ``error`` text) or ``skipped`` (the job was over or cancelled). Its JSON depends only on the
    member's inputs, so a redelivered member encodes the same value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    status: Literal["ok", "error", "skipped"]
    value: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Stage(Generic[R]):
    """One fan-out stage (see the module docstring for the three functions).

    name: the stage's name (job record stage, task ids, failures). items / member / collect: the
    functions. key: an item's key, unique in the stage, for its task id and failure (default
    None: its position). collect_name: what the collect is called in logs and reasons (default
    None: ``<name>-collect``). describe: the log line when the stage starts, from the run and
    the items (default None: none). units: the units of work in an item (e.g. its chunks), for
    progress bars (default None: progress in tasks). unit: their name (default ``"task"``).
    """

    name: str
    items: Callable[[R], tuple[R, Sequence[Any]]]
    member: Callable[[R, Any], Any]
    collect: Callable[[R, list[Any], list[FailedItem]], R]
    key: Callable[[Any], str] | None = None
    collect_name: str | None = None
    describe: Callable[[R, Sequence[Any]], str] | None = None
    units: Callable[[Any], int] | None = None
    unit: str = "task"

    @property
    def collector(self) -> str:
        """The collect's name in logs and reasons."""
        return self.collect_name or f"{self.name}-collect"

    def key_of(self, position: int, item: Any) -> str:
        """The key of ``item``, member ``position`` of the stage."""
        return str(position) if self.key is None else str(self.key(item))


@dataclass(frozen=True)
class StageSequence(Generic[R]):
    """A staged job, declared once: kind (its step type), run_type (its :class:`StageRun`
    subclass), stages (run in order), result (``run -> (JSON result, log line)`` once the last
    collect returned) and discard (``run -> str | None``: remove what a failed or cancelled run
    left, and optionally say what stays; it must not fail when there is nothing to remove)."""

    kind: str
    run_type: type[R]
    stages: tuple[Stage[R], ...]
    result: Callable[[R], tuple[dict[str, Any], str]]
    discard: Callable[[R], str | None]

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a stage sequence needs stages with distinct names, got {names}")

    def stage(self, name: str) -> Stage[R]:
        """The stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"{self.kind!r} has no stage {name!r} (stages: {self.names})")

    def next_stage(self, name: str) -> Stage[R] | None:
        """The stage after ``name`` (None after the last)."""
        i = self.names.index(name)
        return self.stages[i + 1] if i + 1 < len(self.stages) else None

    @property
    def names(self) -> list[str]:
        """The stages' names, in order."""
        return [s.name for s in self.stages]

    def load_run(self, data: Mapping[str, Any]) -> R:
        """The run of this sequence from its JSON form (``run.model_dump(mode="json")``)."""
        run = self.run_type.model_validate(data)
        if run.kind != self.kind:
            raise ValueError(f"a {run.kind!r} run given to the {self.kind!r} stage sequence")
        return run


_current_stage: ContextVar[str | None] = ContextVar("fused_celery_stage", default=None)


def current_stage() -> str | None:
    """The stage whose task runs in this context (set by the drivers; None outside a task), for
    log lines that say where they come from."""
    return _current_stage.get()


@contextlib.contextmanager
def in_stage(name: str) -> Iterator[None]:
    """Run the block as a task of stage ``name`` (:func:`current_stage`)."""
    token = _current_stage.set(name)
    try:
        yield
    finally:
        _current_stage.reset(token)


def error_text(exc: BaseException) -> str:
    """One line naming an error: the message of fused-celery's own errors, ``Class: message``
    otherwise (at most :data:`ERROR_CHARS` characters)."""
    text = str(exc) if isinstance(exc, FusedError) else f"{type(exc).__name__}: {exc}"
    return text[:ERROR_CHARS]


def jsonable(value: Any) -> Any:
    """A member's value as plain JSON data (pydantic models dumped, tuples as lists), the same
    whichever driver ran it."""
    return to_jsonable_python(value)


def sequence_target(kind: str) -> str:
    """The dotted name (``"module:NAME"``) of the stage sequence registered for step type
    ``kind``."""
    target = runner_for(kind).stages
    if target is None:
        raise NotImplementedError(f"job step type {kind!r} registers no stage sequence")
    return target


_loaded: dict[str, StageSequence[Any]] = {}


def load_sequence(target: str) -> StageSequence[Any]:
    """The :class:`StageSequence` at ``target`` (``"module:NAME"``), imported once per process."""
    found = _loaded.get(target)
    if found is None:
        module, _, name = target.partition(":")
        found = getattr(importlib.import_module(module), name, None)
        if not isinstance(found, StageSequence):
            raise TypeError(f"{target!r} is not a StageSequence")
        _loaded[target] = found
    return found
