"""The join steps as stages: the map step's stages (:mod:`fused_celery.steps.map_stages`) with
the join's work per left chunk, so batching, staging, routing, writing and committing (and what
the map step gains later) are the same code::

    join × left-chunk batches ─► route ─► write × files ─► commit

:class:`JoinRun` is a :class:`~fused_celery.steps.map_stages.MapRun` whose
:meth:`~JoinRun.chunk_output` reads the left chunk, the right rows it needs
(:func:`join_input`) and runs the UDF or the built-in join. The built-in inner join of a right
table skips the frames: :func:`builtin_join_table` makes the rows as the table stores them (the
left's WKB taken, 2D points read from it as coordinates and matched without point objects,
right rows read as Arrow, decoded and reprojected once per worker per job with their polygons'
boundaries), through :meth:`JoinRun.convert`, so the map step's members stage them as they stage
any converted chunk.

Right rows are read once per worker process per job and kept in an LRU bounded in bytes
(``options.join_cache_bytes``): a right table by chunk (one row group each, only the chunks the
overlap plan names), a right single file whole (refused with
:class:`~fused_celery.errors.RightInputTooLargeError` when it cannot fit). Right rows in another
CRS than the left's are reprojected to it, and the job's log says so once per worker.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from fused_celery import storage
from fused_celery.errors import RightInputTooLargeError, StepInputError
from fused_celery.jobs import staged
from fused_celery.jobs.stages import Stage, StageSequence, error_text
from fused_celery.options import options
from fused_celery.steps.base import call_udf, job_log
from fused_celery.steps.join import (
    JoinInput,
    JoinJobStepConfig,
    JoinSinglefileJobStepConfig,
    join_kwargs,
)
from fused_celery.steps.map_stages import (
    MAP_STEP,
    MapRun,
    converted_info,
    input_version,
    map_discard,
    map_items,
    map_key,
    map_member,
    map_result,
    output_frame,
    read_chunk,
    route,
)
from fused_celery.steps.overlap import buffered_parts, right_chunks_per_left

if TYPE_CHECKING:
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from pyproj import CRS

    from fused_celery.steps.join_frames import Boundaries
    from fused_celery.table import ChunkMetadata

logger = logging.getLogger(__name__)

__all__ = [
    "JOIN_SINGLEFILE_STEP",
    "JOIN_STEP",
    "ByteLRU",
    "JoinRun",
    "join_input",
    "right_cache",
]


class ByteLRU:
    """A least-recently-used cache bounded in bytes (thread-safe). ``max_bytes``: default
    ``options.join_cache_bytes`` read at each insert. A value larger than the bound is not
    kept."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes
        self._lock = threading.Lock()
        self.reads = 0  # values read and put: how many reads the cache did not save

    @property
    def max_bytes(self) -> int:
        """The bound in bytes."""
        return self._max if self._max is not None else options.join_cache_bytes

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def get(self, key: Hashable) -> Any:
        """The value of ``key`` (now the most recent), or None."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value: Any, nbytes: int, *, derived: bool = False) -> None:
        """Keep ``value`` as ``nbytes`` bytes, dropping the least recent values to fit.
        derived: the value is computed from another one kept here, not read (default False;
        not counted in :attr:`reads`)."""
        with self._lock:
            self.reads += 0 if derived else 1
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.max_bytes:
                return
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes and self._items:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._items.clear()
            self._bytes = 0


#: Right rows of this process: chunks and single files, keyed by job (None: samples) and URL.
right_cache = ByteLRU()
_small: dict[Hashable, Any] = {}  # right chunk metadata and empty frames, by job and URL
_logged: set[tuple[str | None, str]] = set()


def _frame_bytes(frame: gpd.GeoDataFrame, num_coords: int | None = None) -> int:
    """About the memory of ``frame``: its columns, and 16 bytes a coordinate + 64 a row for
    the geometries."""
    import shapely

    if num_coords is None:
        num_coords = int(shapely.get_num_coordinates(frame.geometry.array).sum())
    return _rows_bytes(frame, num_coords, len(frame))


def _rows_bytes(columns: pd.DataFrame, num_coords: int, rows: int) -> int:
    """About the memory of ``rows`` rows: their ``columns``, and 16 bytes a coordinate + 64 a
    row for the geometries."""
    plain = int(columns.memory_usage(index=False, deep=False).sum())
    return plain + 16 * int(num_coords) + 64 * rows


def _right_chunks(url: str, job_id: str | None) -> list[ChunkMetadata]:
    from fused_celery.table import read_chunk_metadata

    key = ("chunks", job_id, url)
    if key not in _small:
        if len(_small) > 256:  # a long-lived worker: forget earlier jobs
            _small.clear()
        _small[key] = read_chunk_metadata(url)
    return _small[key]


def _right_empty(url: str, job_id: str | None) -> gpd.GeoDataFrame:
    from fused_celery.table import open_table

    key = ("empty", job_id, url)
    if key not in _small:
        _small[key] = open_table(url).sample.iloc[0:0]
    return _small[key]


def _right_chunk(url: str, meta: ChunkMetadata, job_id: str | None) -> gpd.GeoDataFrame:
    """One right chunk (its row group), from the cache or read once."""
    from fused_celery.table import get_chunk_from_table

    key = ("chunk", job_id, url, meta.file_id, meta.chunk_id)
    found = right_cache.get(key)
    if found is None:
        try:
            found = get_chunk_from_table(url, meta.file_id, meta.chunk_id, _metadata=[meta])
        except Exception as exc:
            raise StepInputError(
                f"cannot read chunk {meta.file_id}/{meta.chunk_id} of the right table {url}: "
                f"{error_text(exc)}"
            ) from exc
        right_cache.put(key, found, _frame_bytes(found, meta.num_coords))
    return found


def _file_size(url: str) -> int:
    from pyarrow import fs as pafs

    filesystem, path = storage.resolve(url)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise StepInputError(
            f"the right file {url} of join_singlefile does not exist (or is a folder); check "
            "the URL"
        )
    return int(info.size or 0)


def _too_large(url: str, size: int, what: str) -> RightInputTooLargeError:
    limit = right_cache.max_bytes
    return RightInputTooLargeError(
        f"the right file {url} of join_singlefile is {size:,} bytes {what}, more than the "
        f"per-worker cache of {limit:,} bytes (options.join_cache_bytes); raise "
        "FUSED_CELERY_JOIN_CACHE_BYTES, or ingest the file into a table and use fused.join"
    )


def check_right_file(url: str) -> int:
    """The size of the right file ``url``: a :class:`StepInputError` when it is missing, a
    :class:`RightInputTooLargeError` when larger than the per-worker cache."""
    size = _file_size(url)
    if size > right_cache.max_bytes:
        raise _too_large(url, size, "on storage")
    return size


def read_right_file(url: str) -> gpd.GeoDataFrame:
    """The right file at ``url`` as a GeoDataFrame: GeoParquet (``.parquet``/``.geoparquet``)
    through geopandas, any other format through pyogrio (GDAL). Missing or unreadable: a
    :class:`StepInputError` saying which."""
    import io

    import geopandas as gpd

    check_right_file(url)
    name = url.lower().rsplit("?", 1)[0]
    try:
        if name.endswith((".parquet", ".geoparquet", ".pq")):
            with storage.open_input_file(url) as f:
                frame = gpd.read_parquet(f)
        elif storage.parse(url).scheme in ("", "file"):
            frame = gpd.read_file(storage.parse(url).path if "://" in url else url)
        else:
            frame = gpd.read_file(io.BytesIO(storage.read_bytes(url)))
    except Exception as exc:
        raise StepInputError(
            f"cannot read the right file {url} of join_singlefile ({error_text(exc)}); it must "
            "be GeoParquet or a format GDAL reads (GeoJSON, GeoPackage, Shapefile, FlatGeobuf)"
        ) from exc
    if not isinstance(frame, gpd.GeoDataFrame):
        raise StepInputError(f"the right file {url} of join_singlefile has no geometry column")
    return frame


def _right_file(url: str, job_id: str | None) -> tuple[gpd.GeoDataFrame, Any]:
    """The right file, read once per worker per job: ``(frame, its bounds in EPSG:4326)``."""
    key = ("file", job_id, url)
    found = right_cache.get(key)
    if found is None:
        frame = read_right_file(url)
        size = _frame_bytes(frame)
        if size > right_cache.max_bytes:
            raise _too_large(url, size, "in memory")
        wgs = frame if frame.crs is None or frame.crs.equals("EPSG:4326") else frame.to_crs(4326)
        found = (frame, wgs.geometry.bounds.to_numpy())
        right_cache.put(key, found, size)
    return found


def _log_once(run: Any, job_id: str | None, url: str, message: str) -> None:
    if (job_id, url) in _logged:
        return
    _logged.add((job_id, url))
    logger.warning(message)
    if run is not None:
        job_log(run, message, level="WARNING")


def join_input(
    step: JoinJobStepConfig | JoinSinglefileJobStepConfig,
    left: gpd.GeoDataFrame,
    meta: dict[str, Any],
    *,
    job_id: str | None,
    run: Any = None,
) -> JoinInput:
    """The UDF's input for left chunk ``meta`` (its rows ``left``): the right rows it needs in
    left's CRS, and the metadata with ``right_chunks``. job_id: the cache's scope (None for
    samples). run: the job's run, to log a reprojection (default None)."""
    import geopandas as gpd
    import numpy as np
    import pandas as pd

    from fused_celery.table.facts import chunks_intersecting

    url = step._right()
    bbox = np.array([meta["bbox"]], dtype=float)
    used: list[list[Any]] = []
    if isinstance(step, JoinSinglefileJobStepConfig):
        frame, bounds = _right_file(url, job_id)
        right = frame
        if step.right_bbox_filter:
            parts, _ = buffered_parts(bbox, step.distance)
            keep = np.zeros(len(bounds), bool)
            for p in parts:
                keep |= chunks_intersecting(*bounds.T, p)
            right = frame[keep]
    else:
        chunks = _right_chunks(url, job_id)
        bounds = np.array([c.bbox for c in chunks], dtype=float).reshape(-1, 4)
        needed = right_chunks_per_left(bbox, bounds, step.distance)[0]
        frames = [_right_chunk(url, chunks[i], job_id) for i in needed]
        used = [[chunks[i].file_id, int(chunks[i].chunk_id)] for i in needed]
        if not frames:
            right = _right_empty(url, job_id)
        elif len(frames) == 1:
            right = frames[0]
        else:
            right = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
    if left.crs is not None and right.crs is not None and not right.crs.equals(left.crs):
        _log_once(
            run,
            job_id,
            url,
            f"the right input {url} is in {right.crs.to_string()}, the left in "
            f"{left.crs.to_string()}: right rows are reprojected to the left's CRS",
        )
        right = right.to_crs(left.crs)
    return JoinInput(left, right, {**meta, "right_chunks": used})


def _read_left(url: str, meta: dict[str, Any]) -> tuple[pa.Table, dict[str, Any] | None]:
    """Left chunk ``meta`` as stored (its row group, geometry as WKB, no covering column) and
    the file's GeoParquet metadata; a read error is a :class:`StepInputError` naming the chunk,
    as :func:`~fused_celery.steps.map_stages.read_chunk` says it."""
    return _read_chunk(url, meta["file_id"], meta["chunk_id"], "table")


def _read_chunk(url: str, fid: str, cid: int, what: str) -> tuple[pa.Table, dict[str, Any] | None]:
    """Chunk ``cid`` of file ``fid`` of table ``url`` as stored (see :func:`_read_left`);
    ``what`` names the table in the error."""
    from fused_celery.table.format import _file_url, resolve_table_url
    from fused_celery.table.read import _read_row_groups

    try:
        return _read_row_groups(_file_url(resolve_table_url(url), str(fid)), [int(cid)], None)
    except Exception as exc:
        raise StepInputError(
            f"cannot read chunk {fid}/{cid} of {what} {url}: {error_text(exc)}; check the table "
            "(rewrite it, or pass ignore_chunk_error=True to leave the chunk out)"
        ) from exc


def _right_rows(
    url: str,
    meta: ChunkMetadata,
    job_id: str | None,
    left_crs: CRS,
    metric: CRS | None,
    run: Any,
    boundaries: bool = False,
) -> tuple[np.ndarray, pd.DataFrame, Boundaries | None] | None:
    """Right chunk ``meta``'s geometries in the left's CRS, then in ``metric`` (None: left's),
    its other columns, and when ``boundaries`` (default False) its geometries' boundaries
    (:func:`~fused_celery.steps.join_frames.polygon_boundaries`; None when not asked for or not
    all valid polygons): read and made once per worker per job (cached). None when
    the chunk has more than one geometry column (the frame path joins it)."""
    import shapely

    from fused_celery.steps.join_frames import polygon_boundaries, reproject
    from fused_celery.table.format import _crs_from_json

    key = (
        "rows",
        job_id,
        url,
        meta.file_id,
        meta.chunk_id,
        left_crs.to_string(),
        str(metric),
        boundaries,
    )
    found = right_cache.get(key)
    if found is not None:
        return found
    # read as Arrow and decoded here (no GeoDataFrame: on small chunks its making costs more
    # than the join of the chunk's rows)
    table, geo = _read_chunk(url, meta.file_id, meta.chunk_id, "the right table")
    columns = (geo or {}).get("columns", {})
    present = [c for c in columns if c in table.column_names]
    if len(present) != 1:
        return None
    geometry = present[0]
    crs = _crs_from_json(columns[geometry].get("crs"))
    geoms = shapely.from_wkb(table.column(geometry).to_numpy(zero_copy_only=False))
    attrs = table.drop_columns([geometry]).to_pandas()
    if not crs.equals(left_crs):
        _log_once(
            run,
            job_id,
            url,
            f"the right input {url} is in {crs.to_string()}, the left in "
            f"{left_crs.to_string()}: right rows are reprojected to the left's CRS",
        )
        geoms = reproject(geoms, crs, left_crs)
    if metric is not None and len(geoms):
        geoms = reproject(geoms, left_crs, metric)
    boundary = polygon_boundaries(geoms) if boundaries else None
    found = (geoms, attrs, boundary)
    nbytes = _rows_bytes(attrs, meta.num_coords, len(geoms))
    if boundary is not None:
        nbytes += boundary.segments.nbytes * 2 + 32 * len(geoms)
    right_cache.put(key, found, nbytes)
    return found


def builtin_join_table(
    run: JoinRun, meta: dict[str, Any]
) -> tuple[pa.Table, dict[str, Any], CRS, str] | None:
    """The built-in inner join of left chunk ``meta`` of a join step (no UDF, ``how="inner"``,
    a right table) as the table stores it: ``(rows, facts, CRS, geometry column)``, the same
    as :func:`~fused_celery.table.format.frame_to_arrow` of
    :func:`~fused_celery.steps.join_frames.spatial_join`'s frame, but the left geometries are
    decoded once and never encoded again (the output's WKB is the left's, taken), the right
    rows reprojected once per worker per job. None when the inputs have more than one geometry
    column (the frame path joins them)."""
    import numpy as np
    import pandas as pd
    import shapely

    from fused_celery.steps.join_frames import (
        concat_boundaries,
        joined_table,
        metric_crs,
        pairs,
        point_dwithin_pairs,
        point_pairs,
        points_facts,
        reproject,
        reproject_xy,
        wgs84_box,
        wkb_points_xy,
    )
    from fused_celery.table.facts import RowFacts
    from fused_celery.table.format import _crs_from_json

    step = run.config
    table, geo = _read_left(step._left(), meta)
    columns = (geo or {}).get("columns", {})
    primary = (geo or {}).get("primary_column")
    if [c for c in columns if c in table.column_names] != [primary]:
        return None
    crs = _crs_from_json(columns[primary].get("crs"))
    # 2D points (most left tables) are read from their WKB as coordinates: no geometry is
    # decoded, and within a distance only their metric points are made
    xy = wkb_points_xy(table.column(primary))
    lg = None if xy is not None else shapely.from_wkb(table.column(primary).to_numpy(False))
    rows = points_facts(xy) if xy is not None else RowFacts.of(lg)
    metric = None
    if step.distance > 0 and table.num_rows:
        with np.errstate(invalid="ignore"):
            metric = metric_crs(wgs84_box(rows.bbox(), crs))
    url = step._right()
    chunks = _right_chunks(url, run.job_id)
    bounds = np.array([c.bbox for c in chunks], dtype=float).reshape(-1, 4)
    needed = right_chunks_per_left(np.array([meta["bbox"]], dtype=float), bounds, step.distance)
    points = xy is not None
    parts = [_right_rows(url, chunks[i], run.job_id, crs, metric, run, points) for i in needed[0]]
    if any(p is None for p in parts):
        return None
    if not parts:
        empty = _right_empty(url, run.job_id)
        attrs = pd.DataFrame(empty.drop(columns=[empty.geometry.name]))
        parts = [(np.empty(0, dtype=object), attrs, None)]
    rg = np.concatenate([p[0] for p in parts])  # type: ignore[index]
    right = parts[0][1] if len(parts) == 1 else pd.concat([p[1] for p in parts], ignore_index=True)  # type: ignore[index]
    boundaries = concat_boundaries([p[2] for p in parts], [len(p[0]) for p in parts])  # type: ignore[index]
    if metric is not None and len(rg):
        if xy is not None:
            metric_xy = reproject_xy(xy, crs, metric)
            li, ri = point_dwithin_pairs(metric_xy, rg, step.distance, boundaries)
        else:
            li, ri = pairs(reproject(lg, crs, metric), rg, step.distance)
    elif len(rg):
        li, ri = pairs(lg, rg, step.distance) if xy is None else point_pairs(xy, rg, boundaries)
    else:
        li = ri = np.empty(0, np.int64)
    out, facts = joined_table(table, primary, rows, crs, right, li, ri)
    return out, facts, crs, primary


class JoinRun(MapRun):
    """One join step: a :class:`MapRun` (same fields) of a join step's config."""

    kind: Literal["join", "join_singlefile"] = "join"  # type: ignore[assignment]
    config: Annotated[  # type: ignore[assignment]
        JoinJobStepConfig | JoinSinglefileJobStepConfig, Field(discriminator="type")
    ]

    def inputs_version(self) -> str:
        """Both inputs' versions: the left table's, and the right table's or, for
        ``join_singlefile``, the right file's size and modification time."""
        right = self.config._right()
        if isinstance(self.config, JoinSinglefileJobStepConfig):
            other = storage.file_version(right)
        else:
            other = input_version(right)
        return staged.work_key(input_version(self.config._left()), other)

    def convert(
        self, meta: dict[str, Any], chunks: Sequence[ChunkMetadata] | None, *, where: str
    ) -> tuple[dict[str, Any], tuple[pa.Table, dict[str, Any]] | None]:
        """:meth:`MapRun.convert` of a join step: the built-in inner join of a right table from
        :func:`builtin_join_table` (its rows already as the table stores them), anything else
        (a UDF, ``how="left"``, a single file, several geometry columns) through the frames."""
        step = self.config
        fast = step.udf is None and step.how == "inner" and isinstance(step, JoinJobStepConfig)
        made = builtin_join_table(self, meta) if fast else None
        if made is None:
            return super().convert(meta, chunks, where=where)
        table, facts, crs, geometry = made
        return converted_info(meta, table, crs, geometry), (table, facts)

    def chunk_output(
        self, meta: dict[str, Any], chunks: Sequence[ChunkMetadata] | None, *, where: str
    ) -> gpd.GeoDataFrame | None:
        """The join's output of left chunk ``meta``: the UDF on ``(left, right)``, or the
        built-in join without a UDF."""
        from fused_celery.steps.join_frames import spatial_join

        step = self.config
        left = read_chunk(step._left(), meta, chunks)
        found = join_input(step, left, meta, job_id=self.job_id, run=self)
        if step.udf is None:
            return spatial_join(found.left, found.right, how=step.how, distance_m=step.distance)
        kwargs = join_kwargs(step.udf, found.left, found.right, found.metadata)
        value = call_udf(step.udf, kwargs, where=where, run=self)
        return output_frame(value, left.crs, where=where)


def join_items(run: JoinRun) -> tuple[JoinRun, list[list[dict[str, Any]]]]:
    """The join fan-out: the right input checked (a table / a readable file that fits the
    cache), then the left chunks batched as the map step does, the batches in spatial order
    (the left's files by number: an ingest numbers them along its kd-tree) handed out in
    :func:`~fused_celery.steps.task_order.spread_order`, so that each worker process sweeps its
    own part of the area and reads only the right chunks there."""
    from fused_celery.steps.task_order import spread_order

    url = run.config._right()
    if isinstance(run.config, JoinSinglefileJobStepConfig):
        check_right_file(url)
    else:
        check_right_table(url)
    run, batches = map_items(run)
    batches = sorted(batches, key=_spatial_key)
    return run, [batches[i] for i in spread_order(len(batches))]  # type: ignore[return-value]


def _spatial_key(batch: list[dict[str, Any]]) -> tuple[int, int, str, int]:
    """A batch's place in the table's spatial order: its first chunk's file number (file ids
    that are not numbers after all of them, by name), then chunk."""
    first = batch[0]
    fid = str(first["file_id"])
    number = int(fid) if fid.isdigit() else -1
    return (0 if number >= 0 else 1, number, fid, int(first["chunk_id"]))


def check_right_table(url: str) -> None:
    """A :class:`StepInputError` when ``url`` is not a committed table."""
    from fused_celery.table import read_chunk_metadata

    try:
        read_chunk_metadata(url)
    except Exception as exc:
        raise StepInputError(
            f"the join step's right input {url} is not a table: {error_text(exc)}; ingest it "
            "first (fused.ingest), or use fused.join_singlefile for one file"
        ) from exc


def describe_join(run: JoinRun, items: Sequence[list[dict[str, Any]]]) -> str:
    """The log line when the join starts."""
    n = sum(len(i) for i in items)
    c = run.config
    what = f"UDF {c.udf.name}" if c.udf is not None else f"{c.how} join"
    within = f" within {c.buffer_distance} m" if c.buffer_distance else ""
    return (
        f"join: {what}{within} of {n} chunk(s) of {c.input_left} with {c.input_right} in "
        f"{len(items)} task(s)"
    )


def _sequence(kind: str) -> StageSequence[JoinRun]:
    join = Stage(
        "join",
        items=join_items,
        member=map_member,
        collect=route,
        key=map_key,
        collect_name="route",
        describe=describe_join,
    )
    return StageSequence(
        kind=kind,
        run_type=JoinRun,
        stages=(join, MAP_STEP.stage("write")),  # type: ignore[arg-type]
        result=map_result,
        discard=map_discard,
    )


JOIN_STEP: StageSequence[JoinRun] = _sequence("join")
JOIN_SINGLEFILE_STEP: StageSequence[JoinRun] = _sequence("join_singlefile")
