"""The stages of an ingest, declared once (:data:`INGEST`); the drivers of
:mod:`fused_celery.jobs` run it on the cluster or on this machine::

    prepare × slices ─► plan ─► scatter × slices with rows ─► route ─► write × tasks ─► commit

Registered for step type ``partition_geospatial`` in :mod:`fused_celery.partition`.
"""

from __future__ import annotations

from fused_celery.jobs.stages import Stage, StageSequence
from fused_celery.partition.run import KIND, IngestRun
from fused_celery.partition.stage_commit import commit_table, discard, ingest_result
from fused_celery.partition.stage_plan import describe_plan, plan_from_samples
from fused_celery.partition.stage_prepare import (
    describe_prepare,
    prepare_items,
    prepare_slice,
    slice_key,
)
from fused_celery.partition.stage_scatter import scatter_items, scatter_slice
from fused_celery.partition.stage_write import (
    describe_write,
    route_writes,
    write_files,
    write_items,
    write_key,
)

INGEST: StageSequence[IngestRun] = StageSequence(
    kind=KIND,
    run_type=IngestRun,
    stages=(
        Stage(
            "prepare",
            items=prepare_items,  # the input's slices
            member=prepare_slice,  # read, prepare, stage the slice and its sample
            collect=plan_from_samples,  # plan files and chunks on the pooled samples
            key=slice_key,
            collect_name="plan",
            describe=describe_prepare,
        ),
        Stage(
            "scatter",
            items=scatter_items,  # the prepared slices with rows
            member=scatter_slice,  # route the slice's rows to their files
            collect=route_writes,  # group the files into write tasks
            key=str,
            collect_name="route",
            describe=describe_plan,
        ),
        Stage(
            "write",
            items=write_items,  # the write tasks
            member=write_files,  # write the task's files, refined, to staging
            collect=commit_table,  # commit the table (once)
            key=write_key,
            collect_name="commit",
            describe=describe_write,
        ),
    ),
    result=ingest_result,
    discard=discard,
)
