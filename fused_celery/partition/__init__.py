"""Geospatial partitioning (``fused.ingest``).

:mod:`.config` (``GeospatialPartitionJobStepConfig``, ``fused.ingest``), :mod:`.read` (inputs in
slices), :mod:`.prepare` (rows → EPSG:4326, repaired, measured, centroids), :mod:`.plan`
(kd-tree into files and chunks, pure numpy), :mod:`.stages` (the stages as functions over
storage), :mod:`.pipeline` (the stages as Celery chords, with a job record and a watchdog) and
:mod:`.local` (the stages on this machine).
"""

from fused_celery.jobs.runners import register

register(
    "partition_geospatial",
    submit="fused_celery.partition.pipeline:submit_ingest",
    run_local="fused_celery.partition.local:run_ingest",
)
