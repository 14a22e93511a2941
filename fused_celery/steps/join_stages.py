"""The join steps as stages: the map step's stages (:mod:`fused_celery.steps.map_stages`) with
the join's work per left chunk, so batching, staging, routing, writing and committing (and what
the map step gains later) are the same code::

    join × left-chunk batches ─► route ─► write × files ─► commit

:class:`JoinRun` is a :class:`~fused_celery.steps.map_stages.MapRun` whose
:meth:`~JoinRun.chunk_output` reads the left chunk, the right rows it needs
(:func:`join_input`) and runs the UDF or the built-in join.

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
        self.reads = 0  # values put: how many reads the cache did not save

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

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Keep ``value`` as ``nbytes`` bytes, dropping the least recent values to fit."""
        with self._lock:
            self.reads += 1
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

    plain = int(frame.memory_usage(index=False, deep=False).sum())
    if num_coords is None:
        num_coords = int(shapely.get_num_coordinates(frame.geometry.array).sum())
    return plain + 16 * int(num_coords) + 64 * len(frame)


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
    cache), then the left chunks batched as the map step does."""
    url = run.config._right()
    if isinstance(run.config, JoinSinglefileJobStepConfig):
        check_right_file(url)
    else:
        check_right_table(url)
    return map_items(run)  # type: ignore[return-value]


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
