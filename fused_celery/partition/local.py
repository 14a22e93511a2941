"""``ingest_local(config)``: the single-process ingest (read → prepare → plan → write → commit).

The distributed path (Celery chords of chunk tasks) reuses :mod:`.prepare` and :mod:`.plan`; this
one runs everything in the calling process, for in-memory inputs and files that fit in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..table import TableWriter
from .config import GeospatialPartitionJobStepConfig
from .plan import PartitionPlan, plan_partitions
from .prepare import PreparedFrame, prepare_frame
from .read import read_input

if TYPE_CHECKING:
    import geopandas as gpd


def prepare_and_plan(
    gdf: gpd.GeoDataFrame, config: GeospatialPartitionJobStepConfig
) -> tuple[PreparedFrame, PartitionPlan]:
    """Prepare ``gdf`` and plan its partitions with the options of ``config``."""
    prepared = prepare_frame(
        gdf,
        partitioning_method=config.partitioning_method,
        load_columns=config.load_columns,
        remove_cols=config.remove_cols,
        explode_geometries=config.explode_geometries,
        drop_out_of_bounds=config.drop_out_of_bounds,
        subdivide_method=config.subdivide_method,
        subdivide_start=config.subdivide_start,
        subdivide_stop=config.subdivide_stop,
    )
    plan = plan_partitions(
        prepared.x,
        prepared.y,
        prepared.measure,
        max_per_file=config.partitioning_maximum_per_file,
        max_per_chunk=config.partitioning_maximum_per_chunk,
        target_num_chunks=config.target_num_chunks,
        split_method=config.partitioning_split_method,
        max_width_ratio=config.partitioning_max_width_ratio,
        max_height_ratio=config.partitioning_max_height_ratio,
        split_identical_centroids=config.split_identical_centroids,
        force_utm=config.partitioning_force_utm,
    )
    return prepared, plan


def ingest_local(config: GeospatialPartitionJobStepConfig, output: str | None = None) -> str:
    """Run ``config`` in this process and commit the table; returns the table URL.

    output: the table URL (default ``config.output``; one of them is required). An existing
    table with ``config.overwrite=False`` is a :class:`~fused_celery.types.TableExistsError`
    raised before any reading; on any error no table is left (staging is removed).
    """
    url = output or config.output
    if not url:
        raise ValueError("ingest_local needs an output table URL (config.output or output=)")
    writer = TableWriter(url, overwrite=config.overwrite)  # checks the target first
    try:
        gdf = read_input(config)
        prepared, plan = prepare_and_plan(gdf, config)
        frame = prepared.frame
        metas = []
        for f in range(plan.num_files):
            rows = plan.file_rows(f)
            chunk_of = plan.chunk_index[rows]
            bounds = chunk_of.searchsorted(range(int(chunk_of.max()) + 2))
            chunks = [frame.iloc[rows[bounds[c] : bounds[c + 1]]] for c in range(len(bounds) - 1)]
            metas.extend(writer.write_file(str(f), chunks))
        table = writer.commit(metas)
    except BaseException:
        writer.abort()
        _remove_if_only_staging(writer)
        raise
    return table.url


def _remove_if_only_staging(writer: TableWriter) -> None:
    """After a failed first run, leave no folder that looks like a table being written."""
    from .. import storage
    from ..table import SAMPLE_FILE, STAGING_DIR

    if storage.is_file(storage.join(writer.url, SAMPLE_FILE)):
        return
    storage.delete_prefix(storage.join(writer.url, STAGING_DIR))
