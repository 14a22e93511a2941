"""Geospatial partitioning (``fused.ingest``).

:mod:`.config` (``GeospatialPartitionJobStepConfig``, ``fused.ingest``), :mod:`.read` (inputs in
slices, one module per format family), :mod:`.prepare` (rows → EPSG:4326, repaired, measured,
centroids), :mod:`.plan` (kd-tree into files and chunks, pure numpy), :mod:`.run` (``IngestRun``,
what every message carries), :mod:`.workfiles` (what stages leave for the next ones), one module
per stage (:mod:`.stage_prepare`, :mod:`.stage_plan`, :mod:`.stage_scatter`, :mod:`.stage_write`,
:mod:`.stage_commit`), :mod:`.sequence` (the stages declared once, run by the drivers of
:mod:`fused_celery.jobs`) and :mod:`.runners` (``make_ingest_run``, ``run_ingest``; submitted by
:func:`fused_celery.jobs.submit.submit_step`).
"""

from fused_celery.jobs.runners import register

register(
    "partition_geospatial",
    run_local="fused_celery.partition.runners:run_ingest",
    stages="fused_celery.partition.sequence:INGEST",
    make_run="fused_celery.partition.runners:make_ingest_run",
    model="fused_celery.partition.config:GeospatialPartitionJobStepConfig",
)
