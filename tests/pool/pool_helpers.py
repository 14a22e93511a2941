"""Helpers of the pool tests: gates, waiting, run counts, tail lines."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

TAIL_LINE = re.compile(
    r"^\[\d\d:\d\d:\d\d\] Run #(?P<pos>\d+) (?P<status>\w+) \((?P<summary>.*)\) (?P<args>\{.*\})$"
)


def release(gate: Path, x: int | None = None) -> None:
    (gate / ("release" if x is None else f"release_{x}")).write_text("1")


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


def started(gate: Path, x: int) -> bool:
    return (gate / f"started_{x}").exists()


def runs(path: Path, x: int) -> int:
    """How many times ``count_runs`` / ``always_fail`` ran for ``x``."""
    file = path / f"runs_{x}"
    return len(file.read_text().splitlines()) if file.exists() else 0


def tail_lines(text: str) -> list[re.Match[str]]:
    return [m for line in text.splitlines() if (m := TAIL_LINE.match(line))]
