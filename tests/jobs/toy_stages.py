"""A tiny staged job for the driver tests: square each number, then add the squares in pairs.

Members and collects leave a marker file per run in ``run.folder`` (so tests count how often
each ran); with ``gate``, the square members wait for ``<folder>/open``. Registered as step type
``toy_stages`` when imported (workers import it by its dotted name, ``toy_stages:TOY``).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Literal

from fused_celery.errors import ColumnNotFoundError
from fused_celery.jobs.runners import register
from fused_celery.jobs.stages import FailedItem, Stage, StageRun, StageSequence

KIND = "toy_stages"
TARGET = "toy_stages:TOY"


class ToyRun(StageRun):
    """n numbers to square; fail: the numbers whose member raises; gate: square members wait
    for ``<folder>/open``; squares / total: filled in by the collects."""

    kind: Literal["toy_stages"] = KIND
    n: int
    folder: str
    fail: tuple[int, ...] = ()
    gate: bool = False
    squares: tuple[int, ...] = ()
    total: int | None = None


def mark(run: ToyRun, what: str) -> None:
    with open(os.path.join(run.folder, f"{what}.{uuid.uuid4().hex}"), "w"):
        pass


def count(folder: str, what: str) -> int:
    """How many times ``what`` ran (its marker files in ``folder``)."""
    return sum(1 for name in os.listdir(folder) if name.rsplit(".", 1)[0] == what)


def square_items(run: ToyRun) -> tuple[ToyRun, list[int]]:
    return run, list(range(run.n))


def square(run: ToyRun, x: int) -> int:
    mark(run, "member-square")
    if run.gate:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(run.folder, "open")) and time.monotonic() < deadline:
            time.sleep(0.02)
    time.sleep(0.02 * (run.n - x))  # later items finish first
    if x in run.fail:
        raise ColumnNotFoundError(f"no value {x}")
    return x * x


def keep_squares(run: ToyRun, ok: list[Any], failed: list[FailedItem]) -> ToyRun:
    mark(run, "collect-square")
    return run.model_copy(update={"squares": tuple(ok)})


def pair_items(run: ToyRun) -> tuple[ToyRun, list[list[int]]]:
    s = list(run.squares)
    return run, [s[i : i + 2] for i in range(0, len(s), 2)]


def add(run: ToyRun, pair: list[int]) -> int:
    mark(run, "member-add")
    return sum(pair)


def add_up(run: ToyRun, ok: list[Any], failed: list[FailedItem]) -> ToyRun:
    mark(run, "collect-add")
    return run.model_copy(update={"total": sum(ok)})


def result(run: ToyRun) -> tuple[dict[str, Any], str]:
    return {"squares": list(run.squares), "total": run.total}, f"done: total {run.total}"


def discard(run: ToyRun) -> None:
    mark(run, "discard")


TOY: StageSequence[ToyRun] = StageSequence(
    kind=KIND,
    run_type=ToyRun,
    stages=(
        Stage("square", items=square_items, member=square, collect=keep_squares, key=str),
        Stage("add", items=pair_items, member=add, collect=add_up, collect_name="sum"),
    ),
    result=result,
    discard=discard,
)

register(KIND, stages=TARGET)
