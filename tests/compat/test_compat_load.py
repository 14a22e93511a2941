"""``fused.load``: a UDF from a ``.py`` file, a UDF folder (catalogue layout), a zip or code text,
run on both engines and against the reference SDK's local engine."""

from __future__ import annotations

import asyncio
import zipfile
from pathlib import Path
from typing import Any

import pytest
from compat_load_reference import CASES, FOLDER
from compat_reference import run_reference

import fused_celery as fused
from fused_celery.errors import UdfLoadError

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The catalogue-style folder run by the reference SDK's local engine (subprocess)."""
    pytest.importorskip("fused")
    out = tmp_path_factory.mktemp("reference-load") / "out.json"
    return run_reference("compat_load_reference.py", out)


def test_folder_loads_like_the_reference(reference: dict) -> None:
    udf = fused.load(FOLDER)
    assert (udf.name, udf.entrypoint) == (reference["name"], reference["entrypoint"])
    assert udf.metadata["fused:udfType"] == "vector_tile"
    assert udf.code.startswith("import fused_celery as fused\n")  # the file does not import it


@pytest.mark.parametrize("case", sorted(CASES))
def test_catalogue_udf_runs_as_on_the_reference(case: str, reference: dict) -> None:
    """Bounds from a default, a list and GeoJSON text; a @fused.cache helper and a nested
    fused.submit fan-out inside the UDF; run in this process."""
    udf = fused.load(FOLDER)
    assert fused.run(udf, engine="local", **CASES[case]) == reference["runs"][case]


def test_catalogue_udf_submitted_on_both_engines(engine: str, reference: dict) -> None:
    udf = fused.load(FOLDER)
    frame = fused.submit(udf, [[0, 0, 1, 1], [0, 0, 2, 2]], engine=engine, max_retry=0)
    assert [str(n) for n in frame.index.names] == reference["submit_names"]
    assert [str(v) for v in frame.index.tolist()] == reference["submit_index"]
    assert frame["result"].tolist() == reference["submit_results"]


def test_py_file_zip_and_code_text(tmp_path: Path) -> None:
    source = (FOLDER / "Strip_Area.py").read_text()
    py = tmp_path / "My_Area.py"
    py.write_text(source)
    from_file = fused.load(py)
    assert from_file.name == "My_Area" and from_file.entrypoint == "udf"
    archive = tmp_path / "Strip_Area.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("meta.json", "Strip_Area.py"):
            zf.write(FOLDER / name, name)
    from_zip = fused.load(archive)
    assert from_zip.name == "Strip_Area"
    from_text = fused.load(source)
    assert from_text.entrypoint == "udf"
    for udf in (from_file, from_zip, from_text):
        assert fused.run(udf, bounds=[0, 0, 1, 1], engine="local")["area"] == 1.0


def test_folder_without_meta_uses_its_own_py(tmp_path: Path) -> None:
    folder = tmp_path / "Plain"
    folder.mkdir()
    (folder / "Plain.py").write_text("@fused.udf\ndef plain(x: int = 1):\n    return x + 1\n")
    udf = fused.load(folder)
    assert (udf.name, udf.entrypoint) == ("Plain", "plain")
    assert udf(x=2, engine="local") == 3


def test_top_level_names_are_attributes(tmp_path: Path) -> None:
    """``common = fused.load(...); common.helper(...)``, as catalogue UDFs use shared code."""
    folder = tmp_path / "common"
    folder.mkdir()
    (folder / "common.py").write_text(
        "import math\n\nSCALE = 3\n\n\n@fused.udf\ndef udf():\n    return SCALE\n\n\n"
        "def hypot(a, b):\n    return math.hypot(a, b) * SCALE\n"
    )
    common = fused.load(folder)
    assert common.hypot(3, 4) == 15.0 and common.SCALE == 3
    with pytest.raises(AttributeError):
        _ = common.not_there
    hidden = fused.load(folder, import_globals=False)
    with pytest.raises(AttributeError):
        _ = hidden.hypot


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UdfLoadError, match="clone the repository"):
        fused.load("https://github.com/fusedio/udfs/tree/main/public/common/")
    with pytest.raises(UdfLoadError, match="Fused server"):
        fused.load("someone@example.com/My_Udf")
    with pytest.raises(FileNotFoundError):
        fused.load(tmp_path / "missing.py")
    no_udf = tmp_path / "no_udf.py"
    no_udf.write_text("def f():\n    return 1\n")
    with pytest.raises(UdfLoadError, match="decorated with @fused.udf"):
        fused.load(no_udf)
    two = tmp_path / "two.py"
    two.write_text("@fused.udf\ndef a():\n    pass\n\n@fused.udf\ndef b():\n    pass\n")
    with pytest.raises(UdfLoadError, match="several functions"):
        fused.load(two)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UdfLoadError, match="not a UDF folder"):
        fused.load(tmp_path / "empty")


def test_load_async() -> None:
    udf = asyncio.run(fused.load_async(FOLDER))
    assert udf.name == "Strip_Area"
