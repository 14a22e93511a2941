"""A worker's pool processes import ``options.worker_preload`` when they start (pandas, pyarrow,
shapely, geopandas and the job steps' stages), so a step's first task in a fresh process does not
pay for the imports. A real ``celery worker`` started for the test; its first task reports what
its process had loaded."""

from __future__ import annotations

from typing import Any

import fused_celery as fused
from fused_celery.options import options

STAGES = [
    "fused_celery.partition.sequence",
    "fused_celery.steps.udf_stages",
    "fused_celery.steps.join_stages",
    "fused_celery.steps.map_stages",
]


@fused.udf
def loaded(names: list[str] = []) -> list[str]:  # noqa: B006 - a UDF's JSON default
    import sys

    return [name for name in names if name in sys.modules]


def test_a_fresh_pool_process_has_the_stages_loaded(fused_options: Any, celery_workers: Any):
    assert set(STAGES[:3]) <= set(options.worker_preload)
    celery_workers(n=1, concurrency=1)
    found = loaded(names=STAGES + ["fused_celery.maps"], engine="remote", cache=False)
    assert found == STAGES  # the map stages come with the join's; nothing unasked (maps)
