"""Fixtures of the pool tests: the ``engine`` every test runs on (local and a real Celery
cluster), isolated options, and directories for marker files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pool_helpers import release

from fused_celery.options import options


@pytest.fixture(params=["local", "remote"])
def engine(request: pytest.FixtureRequest) -> str:
    """The engine every pool test runs on: the local process pool, and a real Celery cluster
    (two worker processes on a private Redis, started once per session)."""
    if request.param == "remote":
        request.getfixturevalue("on_shared_cluster")
    return request.param


@pytest.fixture(autouse=True)
def _isolated_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private result cache per test; no progress bars unless a test asks for them."""
    monkeypatch.setattr(options, "cache_dir", str(tmp_path / "udf-cache"))
    monkeypatch.setattr(options.show, "enable_tqdm", False)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A directory for marker and count files."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A directory for ``udfs_sample.gated``; opened at teardown so no entry waits forever."""
    path = tmp_path / "gate"
    path.mkdir()
    yield path
    release(path)
