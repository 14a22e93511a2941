"""Flower reads well: each message carries a display name (``udf:<name>``, ``ingest:<stage>``)
and readable args (pool, entries, the entry's arguments), seen through a real Flower's HTTP API
(list, search) and on its Tasks page in headless Chromium."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import pytest
import shapely
from chromium import run_chromium

import fused_celery as fused
from fused_celery.cluster.local_cluster import LocalCluster
from fused_celery.task_display import PoolDisplay, short_repr, stage_options

CITIES = ["Paris", "Lagos", "Quito"]


@fused.udf
def flower_probe(city: str, repeat: int = 1):
    return len(city) * repeat


def test_display_options_are_short_and_readable():
    shown = PoolDisplay.of({"name": "area_km2", "entrypoint": "area_km2"}, "p1", [{"x": 1}] * 20)
    one = shown.options([3])
    assert one == {"shadow": "udf:area_km2", "argsrepr": "pool=p1 entries=[3]",
                   "kwargsrepr": "{'x': 1}"}  # fmt: skip
    many = shown.options(list(range(12)))
    assert many["argsrepr"] == "pool=p1 entries=[0, 1, 2, 3, 4, 5, 6, 7] +4"
    assert many["kwargsrepr"].startswith("[{'x': 1}")
    # a worker republishing (no arguments known) and an attached pool (none decoded)
    assert PoolDisplay.of({}, "p2").options([0])["kwargsrepr"] == "{}"
    long = short_repr({"text": "x" * 10_000, "items": list(range(1000))})
    assert len(long) <= 160 and "..." in long
    job = stage_options("partition_geospatial", "prepare", "j1", key="0", item={"url": "a"})
    assert job == {"shadow": "ingest:prepare", "argsrepr": "job=j1 stage=prepare key=0",
                   "kwargsrepr": "{'url': 'a'}"}  # fmt: skip


def _get_json(url: str, auth: tuple[str, str]) -> Any:
    request = urllib.request.Request(url)
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _tasks(base: str, auth: tuple[str, str], **query: str) -> dict[str, dict[str, Any]]:
    return _get_json(f"{base}/api/tasks?{urllib.parse.urlencode({'limit': 200, **query})}", auth)


def _wait_for_tasks(
    base: str, auth: tuple[str, str], done: Callable[[dict], bool], **query: str
) -> dict:
    """Flower learns of tasks from worker events, which arrive after the work is done and in
    any order: poll its API until the tasks matching ``query`` satisfy ``done`` (60 s at
    most; then the last answer, for the assertion to show)."""
    deadline = time.monotonic() + 60
    while True:
        found = _tasks(base, auth, **query)
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.slow
def test_flower_lists_and_finds_tasks_by_udf_name(fused_options, tmp_path: Path) -> None:
    with LocalCluster(
        workers=1, flower_port=0, auth=True, cluster_dir=tmp_path / "cluster", verbose=False
    ) as cluster:
        base, auth = cluster.flower_url, ("admin", cluster.flower_password)
        pool = flower_probe.map([{"city": c} for c in CITIES], repeat=2, engine="remote")
        pool.wait()
        assert sorted(pool.collect()["result"]) == [10, 10, 10]
        found = _wait_for_tasks(base, auth, lambda t: len(t) >= 3, search="udf:flower_probe")
        assert len(found) == 3, found
        for task in found.values():
            assert task["name"] == "udf:flower_probe"
            assert task["args"].startswith(f"pool={pool.id} entries=[")
            assert "'repeat': 2" in task["kwargs"]
        cities = sorted(c for t in found.values() for c in CITIES if c in t["kwargs"])
        assert cities == sorted(CITIES)
        by_city = _tasks(base, auth, search="Lagos")
        assert [t["name"] for t in by_city.values()] == ["udf:flower_probe"]
        by_pool = _tasks(base, auth, search=pool.id)
        assert len(by_pool) == 3

        # The Tasks page in a browser (before the ingest adds rows): the DOM names the UDF; a
        # screenshot for people.
        host = base.split("://", 1)[1]
        page = f"http://{auth[0]}:{auth[1]}@{host}/tasks"
        dom = run_chromium(page, tmp_path, "--dump-dom", budget_ms=15000).stdout
        assert "udf:flower_probe" in dom, dom[-2000:]
        png = tmp_path / "flower-tasks.png"
        run_chromium(page, tmp_path, f"--screenshot={png}", budget_ms=15000)
        assert png.stat().st_size > 10_000
        print(f"Flower's Tasks page: {png}")

        gdf = gpd.GeoDataFrame({"uid": [1]}, geometry=[shapely.Point(1, 2)], crs=4326)
        gdf.to_parquet(tmp_path / "in.parquet")
        job = fused.ingest(str(tmp_path / "in.parquet")).run_remote(
            output_table=str(tmp_path / "out")
        )
        job.wait_for_job(timeout=120)
        assert job.status == "Done"

        stages = {"ingest:start", "ingest:prepare", "ingest:scatter", "ingest:write"}

        def named(tasks: dict) -> set[str]:
            return {t["name"] for t in tasks.values()}

        found = _wait_for_tasks(base, auth, lambda t: stages <= named(t), search="ingest")
        assert stages <= named(found), named(found)
        # No task shows its real name (a late task-sent event carries the display name too).
        shown = named(_tasks(base, auth))
        assert not [n for n in shown if n.startswith("fused_celery.")], shown
