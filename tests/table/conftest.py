"""Fixtures of the table tests (``tests/table/``): ``root``, a folder URL for tables on local
disk and on S3 (``s3`` needs moto_server's ``s3_bucket``: test modules load
``pytest_plugins = ["moto_server"]``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A folder URL for tables: a temp dir, or a prefix in a fresh moto bucket."""
    if request.param == "local":
        return str(tmp_path / "tables")
    return request.getfixturevalue("s3_bucket") + "/tables"
