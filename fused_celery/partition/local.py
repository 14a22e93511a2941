"""``ingest_local(config)``: the single-process ingest (read → prepare → plan → write → commit).

The distributed path (Celery chords of chunk tasks) reuses :mod:`.prepare` and :mod:`.plan`; this
one runs everything in the calling process, for in-memory inputs and files that fit in memory.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..table import TableWriter
from ..types import IngestInputError, UnsupportedInputError
from .config import GeospatialPartitionJobStepConfig
from .plan import PartitionPlan, plan_partitions
from .prepare import PreparedFrame, ensure_geodataframe, prepare_frame

if TYPE_CHECKING:
    import geopandas as gpd

GDAL_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".zip", ".gml", ".kml")
PARQUET_SUFFIXES = (".parquet", ".geoparquet", ".pq")


def _read_path(path: str, config: GeospatialPartitionJobStepConfig) -> gpd.GeoDataFrame:
    """One local input file as a GeoDataFrame (GeoParquet/Parquet, CSV, or a GDAL format)."""
    import geopandas as gpd
    import pandas as pd

    if not os.path.exists(path):
        raise FileNotFoundError(f"ingest input {path!r} does not exist")
    lower = path.lower()
    columns = None
    if config.load_columns is not None:
        columns = list(config.load_columns)
    try:
        if lower.endswith(PARQUET_SUFFIXES):
            if config.lonlat_cols is not None:
                cols = None if columns is None else [*columns, *config.lonlat_cols]
                return ensure_geodataframe(pd.read_parquet(path, columns=cols), config.lonlat_cols)
            return gpd.read_parquet(path)
        if lower.endswith(".csv"):
            if config.lonlat_cols is not None:
                return ensure_geodataframe(pd.read_csv(path), config.lonlat_cols)
            opts = config.gdal_config.open_options
            frame = gpd.read_file(path, engine="pyogrio", **_csv_options(opts))
            if frame.crs is None and frame.geometry.notna().any():
                frame = frame.set_crs("EPSG:4326")
            return frame
        if lower.endswith(GDAL_SUFFIXES):
            kwargs: dict[str, Any] = {}
            if config.gdal_config.layer is not None:
                kwargs["layer"] = config.gdal_config.layer
            return gpd.read_file(path, engine="pyogrio", **kwargs)
    except (IngestInputError, FileNotFoundError):
        raise
    except Exception as exc:
        raise IngestInputError(f"cannot read ingest input {path!r}: {exc}") from exc
    raise UnsupportedInputError(
        f"cannot ingest {path!r}: unknown format; supported suffixes are "
        f"{sorted({*PARQUET_SUFFIXES, '.csv', *GDAL_SUFFIXES})}"
    )


def _csv_options(open_options: dict[str, str]) -> dict[str, Any]:
    """GDAL CSV open options (e.g. ``X_POSSIBLE_NAMES``, ``GEOM_POSSIBLE_NAMES``) for pyogrio."""
    return {k.lower(): v for k, v in open_options.items()} if open_options else {}


def read_input(config: GeospatialPartitionJobStepConfig) -> gpd.GeoDataFrame:
    """The whole input of ``config`` as one GeoDataFrame (in-memory frame, a file, a list of
    files, or a folder filtered by ``file_suffix``)."""
    import pandas as pd

    data = config.input
    if isinstance(data, pd.DataFrame):
        return ensure_geodataframe(data, config.lonlat_cols)
    paths = [data] if isinstance(data, str) else list(data)
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            names = sorted(os.listdir(p))
            if config.file_suffix:
                names = [n for n in names if n.endswith(config.file_suffix)]
            files.extend(os.path.join(p, n) for n in names if not n.startswith((".", "_")))
        else:
            files.append(p)
    if not files:
        raise IngestInputError(
            f"no input files found in {paths} (file_suffix={config.file_suffix!r})"
        )
    frames = [_read_path(f, config) for f in files]
    if len(frames) == 1:
        return frames[0]
    crs = {f.crs.to_string() if f.crs is not None else None for f in frames}
    if len(crs) > 1:
        frames = [f.to_crs("EPSG:4326") if f.crs is not None else f for f in frames]
    return pd.concat(frames, ignore_index=True)


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
