"""Fixtures of the Fused-compatibility tests: the ``engine`` a test runs on (local, and a real
Celery cluster), isolated options."""

from __future__ import annotations

from pathlib import Path

import pytest

from fused_celery.options import options


@pytest.fixture(params=["local", "remote"])
def engine(request: pytest.FixtureRequest) -> str:
    """The engine a test runs on: the local process pool, and a real Celery cluster (two
    worker processes on a private Redis, started once per session)."""
    if request.param == "remote":
        request.getfixturevalue("on_shared_cluster")
    return request.param


@pytest.fixture(autouse=True)
def _isolated_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private result cache per test; no progress bars."""
    monkeypatch.setattr(options, "cache_dir", str(tmp_path / "udf-cache"))
    monkeypatch.setattr(options.show, "enable_tqdm", False)
