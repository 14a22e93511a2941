"""Geospatial partitioning (``fused.ingest``): :mod:`.prepare` (rows → EPSG:4326, repaired,
measured, centroids), :mod:`.plan` (kd-tree into files and chunks, pure numpy),
:mod:`.config` (``GeospatialPartitionJobStepConfig``) and :mod:`.local` (single-process ingest).
"""
