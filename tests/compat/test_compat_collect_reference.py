"""``collect()``, ``logs_df()`` and ``arg_df()`` shapes against the reference SDK's local engine.

The reference SDK (``fused``, the ``test-ref`` extra) runs every scenario of
``compat_collect_scenarios`` in a subprocess: its local engine swaps ``sys.stdout`` /
``sys.stderr`` from worker threads (see benchmarks/README.md), which must not meet the
thread-local capture of our own engine in one process. Our engines run the same scenarios here,
and the frames must agree: index kind, level names, labels, columns, dtypes and cells. Skipped
only when ``fused`` is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import compat_collect_scenarios as sc
import pytest
from compat_reference import run_reference

import fused_celery as fused

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the reference SDK's local engine returns for every scenario."""
    pytest.importorskip("fused")
    out = tmp_path_factory.mktemp("reference") / "reference.json"
    return run_reference("compat_collect_scenarios.py", out, COMPAT_FUSED="fused")


def _ours(name: str, engine: str) -> dict[str, Any]:
    result = sc.run_all({"engine": engine, "cache": False, "max_retry": 0}, lambda n: n == name)
    return json.loads(json.dumps(result[name], default=str))


@pytest.mark.parametrize("name", sorted(sc.SCENARIOS))
def test_collect_matches_the_reference(name: str, engine: str, reference: dict) -> None:
    expected = reference["scenarios"][name]
    got = _ours(name, engine)
    differs = {key for key in expected if expected[key] != got[key]}
    allowed = {sc.KNOWN_DIFFERENCES[name]} if name in sc.KNOWN_DIFFERENCES else set()
    assert differs <= allowed, {k: {"reference": expected[k], "ours": got[k]} for k in differs}


def test_positions_are_not_renumbered_after_dropped_failures(engine: str, reference: dict) -> None:
    """The one deliberate difference (API.md **Fix:**): ``arg_pos`` keeps original positions."""
    assert reference["scenarios"]["errors_ignored_drop_index"]["index_values"] == [0, 1]
    assert _ours("errors_ignored_drop_index", engine)["index_values"] == [0, 2]


def test_logs_df_columns_in_reference_order(engine: str, reference: dict) -> None:
    assert reference["logs_df_columns"] == ["x", "status", "time", "result", "logs"]
    pool = sc.add.map([1, 2, 3], y=2, engine=engine, max_retry=0)
    pool.wait()
    frame = pool.logs_df()
    assert list(frame.columns) == reference["logs_df_columns"]
    assert frame["time"].dtype == float and (frame["time"] >= 0).all()
    assert frame["result"].tolist() == [3, 4, 5]


def test_constants_stay_out_of_the_index_of_a_reattached_pool(on_shared_cluster: str) -> None:
    pool = sc.add.map([1, 2], y=5, engine="remote", max_retry=0)
    pool.wait()
    again = fused.JobPool.attach(pool.id)
    frame = again.collect()
    assert list(frame.index.names) == ["x"] and frame["result"].tolist() == [6, 7]
    assert list(again.arg_df().columns) == ["x"]
    assert again[0].args == {"x": 1, "y": 5}  # an entry's own arguments keep the constants
