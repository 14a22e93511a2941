"""The write stage of an ingest: the write tasks decided from the scatter results (the collect of
scatter, :func:`route_writes`), then each task writing its planned files to the table's staging
area (the member, :func:`write_files`).

A write task takes whole files, small files grouped (:func:`write_groups`). Each file is merged
from its scattered parts in chunk order; a chunk over its maximum is split again with the exact
rows (:func:`refine_chunks`, the planning rules), and a file over its maximum is split into
consecutive runs of chunks (:func:`group_chunks`), named ``<file>``, ``<file>-1``, ... .
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from fused_celery import storage
from fused_celery.jobs.stages import FailedItem
from fused_celery.partition.plan import plan_partitions
from fused_celery.partition.run import IngestRun
from fused_celery.partition.stage_plan import plan_options
from fused_celery.partition.stage_scatter import ScatteredSlice
from fused_celery.partition.take import take_rows
from fused_celery.partition.workfiles import (
    CHUNK,
    FACT_COLUMNS,
    HELPER_COLUMNS,
    ID,
    BatchReader,
    M,
    X,
    Y,
    facts_of,
    geometry_name,
    route_url,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from fused_celery.table import RowFacts


# --- the write tasks (collect of scatter) -------------------------------------------------------


def write_task_rows(scattered: list[ScatteredSlice]) -> int:
    """Rows a write task takes at least, from the results of
    :func:`~.stage_scatter.scatter_slice`: a quarter of the average slice, so there are about four
    write tasks per slice (files smaller than that share a task, which reads each slice's
    scattered file once for all of them)."""
    rows = sum(int(n) for r in scattered for _, n in r["files"].values())
    return max(1, rows // (4 * max(1, len(scattered))))


def write_groups(scattered: list[ScatteredSlice], min_rows: int) -> list[list[list[Any]]]:
    """Write tasks from the results of :func:`~.stage_scatter.scatter_slice`: files in index
    order, each ``[file_index, parts]`` (``parts``: sorted ``[slice_id, batch]`` pairs), grouped
    so that a task writes at least ``min_rows`` rows (one file per task when files are that
    big); small files share a task instead of paying a task each."""
    parts: dict[int, list[list[int]]] = {}
    rows: dict[int, int] = {}
    for r in scattered:
        for f, (batch, n) in r["files"].items():
            parts.setdefault(int(f), []).append([int(r["slice_id"]), int(batch)])
            rows[int(f)] = rows.get(int(f), 0) + int(n)
    groups: list[list[list[Any]]] = []
    current: list[list[Any]] = []
    size = 0
    for f in sorted(parts):
        current.append([f, sorted(parts[f])])
        size += rows[f]
        if size >= min_rows:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def route_writes(
    run: IngestRun, scattered: list[ScatteredSlice], failed: list[FailedItem]
) -> IngestRun:
    """The collect of scatter: the write tasks (:func:`write_groups`) written to
    ``route.json``; the run with their number (``write_tasks``). failed: the slices left out
    (already in ``run.failed``)."""
    del failed
    groups = write_groups(scattered, write_task_rows(scattered))
    storage.write_bytes(route_url(run.work), json.dumps(groups).encode(), durable=False)
    return run.model_copy(update={"write_tasks": len(groups)})


def write_items(run: IngestRun) -> tuple[IngestRun, list[list[list[Any]]]]:
    """The write fan-out: the write tasks of ``route.json``."""
    return run, json.loads(storage.read_bytes(route_url(run.work)))


def write_key(files: list[list[Any]]) -> str:
    """A write task's key: its file index, or its first and last (``<first>-<last>``)."""
    first, last = files[0][0], files[-1][0]
    return f"{first}" if len(files) == 1 else f"{first}-{last}"


def describe_write(run: IngestRun, items: Sequence[list[list[Any]]]) -> str:
    """The log line when write starts."""
    return f"write: {sum(len(g) for g in items)} file(s) in {len(items)} task(s)"


# --- the member ---------------------------------------------------------------------------------


def write_files(run: IngestRun, files: list[list[Any]]) -> dict[str, Any]:
    """The write member: :func:`write_file` for each ``[file_index, parts]`` of ``files`` (a
    group of :func:`write_groups`). Each output file is fsynced in a thread while the next one
    is built (the disk's wait overlaps the CPU work), all of them before this returns.
    Returns ``{"files": [file indexes], "chunks": [metadata dicts]}``."""
    chunks: list[dict[str, Any]] = []
    reader = BatchReader(run.work)
    writer = run.table_writer()
    syncs: list[Future[None]] = []
    try:
        with ThreadPoolExecutor(max_workers=SYNC_THREADS) as pool:
            for file_index, parts in files:
                written = write_file(run, int(file_index), parts, reader, durable=False)
                chunks.extend(written["chunks"])
                fids = dict.fromkeys(c["file_id"] for c in written["chunks"])
                syncs += [pool.submit(storage.sync, writer.staged_file_url(f)) for f in fids]
    finally:
        reader.close()
    for done in syncs:
        done.result()  # an fsync that failed fails the task
    return {"files": [int(f) for f, _ in files], "chunks": chunks}


SYNC_THREADS = 4
"""Output files a write task fsyncs at once."""


def write_file(
    run: IngestRun,
    file_index: int,
    parts: list[list[int]],
    reader: BatchReader | None = None,
    *,
    durable: bool = True,
) -> dict[str, Any]:
    """Write planned file ``file_index`` from its scattered parts (``[slice_id, batch]`` pairs,
    see :func:`~.stage_scatter.scatter_slice`), refining chunks and the file with the exact rows
    (to the run's maxima). reader: where to read the parts (default None: a new one).
    durable: fsync each output file (default True; False: the caller does, see
    :meth:`~fused_celery.table.TableWriter.write_arrow_file`).

    Returns ``{"file_index", "chunks": [ChunkMetadata dicts]}`` (one output file or more)."""
    import pyarrow as pa

    own = reader is None
    reader = reader or BatchReader(run.work)
    try:
        tables = [pa.Table.from_batches([reader.batch(int(s), int(b))]) for s, b in sorted(parts)]
        table, facts = _merge_by_chunk(tables)
        return _write_merged(run, file_index, table, facts, durable=durable)
    finally:
        if own:
            reader.close()


def _merge_by_chunk(tables: list[pa.Table]) -> tuple[pa.Table, RowFacts]:
    """The rows of ``tables`` (each sorted by chunk) in chunk order, and their facts: zero-copy
    slices of the parts, chunk by chunk, part by part (stable); fact columns dropped. Parts of 2D
    points only (no fact columns) get their facts from the merged centroids, in one go."""
    import pyarrow as pa

    from fused_celery.table import RowFacts

    chunks = [t.column(CHUNK).to_numpy() for t in tables]
    k = max((int(c[-1]) + 1 for c in chunks if len(c)), default=0)
    cuts = [np.searchsorted(c, np.arange(k + 1)) for c in chunks]
    staged = any(FACT_COLUMNS[0] in t.column_names for t in tables)  # else 2D points only
    facts = [facts_of(t) for t in tables] if staged else []
    tables = [t.drop_columns([c for c in FACT_COLUMNS if c in t.column_names]) for t in tables]
    pieces = [
        (p, int(cut[c]), int(cut[c + 1]))
        for c in range(k)
        for p, cut in enumerate(cuts)
        if cut[c + 1] > cut[c]
    ]
    if len(tables) == 1 or len(pieces) <= 1:
        table = pa.concat_tables(tables, promote_options="permissive")
        return table, RowFacts.concat(facts) if staged else facts_of(table)
    table = pa.concat_tables(
        [tables[p].slice(a, b - a) for p, a, b in pieces], promote_options="permissive"
    )
    if not staged:  # the points' facts from their merged centroids, once
        return table, facts_of(table)
    return table, RowFacts.concat([facts[p].take(slice(a, b)) for p, a, b in pieces])


def _write_merged(
    run: IngestRun, file_index: int, table: pa.Table, facts: RowFacts, *, durable: bool
) -> dict[str, Any]:
    """:func:`write_file` once its rows are in chunk order."""

    chunk = table.column(CHUNK).to_numpy()
    m = table.column(M).to_numpy()
    per_file, per_chunk = run.maxima
    chunk = refine_chunks(
        table.column(X).to_numpy(),
        table.column(Y).to_numpy(),
        m,
        table.column(ID).to_numpy(),
        chunk,
        max_per_chunk=per_chunk,
        options=plan_options(run.config),
    )
    order = np.argsort(chunk, kind="stable")  # split chunks are in kd order, not row order
    if not (order == np.arange(len(order))).all():
        table = take_rows(table, order)
        chunk, m, facts = chunk[order], m[order], facts.take(order)
    n_chunks = int(chunk.max()) + 1 if len(chunk) else 0
    chunk_measure = np.bincount(chunk, weights=m, minlength=n_chunks)
    chunk_start = np.searchsorted(chunk, np.arange(n_chunks + 1))
    geometry = geometry_name(table)
    table = table.drop_columns([c for c in HELPER_COLUMNS if c in table.column_names])
    writer = run.table_writer()
    metas: list[dict[str, Any]] = []
    for k, (a, b) in enumerate(group_chunks(chunk_measure, per_file)):
        fid = str(file_index) if k == 0 else f"{file_index}-{k}"
        lo, hi = int(chunk_start[a]), int(chunk_start[b])
        written = writer.write_arrow_file(
            fid,
            table.slice(lo, hi - lo),
            chunk_start[a : b + 1] - lo,
            facts.take(slice(lo, hi)),
            geometry=geometry,
            durable=durable,
        )
        metas.extend(c.model_dump(mode="json") for c in written)
    return {"file_index": int(file_index), "chunks": metas}


# --- refinement -------------------------------------------------------------------------------


def refine_chunks(
    x: np.ndarray,
    y: np.ndarray,
    m: np.ndarray,
    ids: np.ndarray,
    chunk: np.ndarray,
    *,
    max_per_chunk: float,
    options: dict[str, Any],
) -> np.ndarray:
    """New chunk numbers (0..k-1, the old chunks' order kept) after splitting every chunk whose
    exact measure is over ``max_per_chunk`` with the planning rules; rows must be sorted by
    ``chunk`` (the rows of a split chunk are then no longer sorted by their new number).
    options: :func:`plan_partitions` split options."""
    out = np.empty(len(chunk), dtype=np.int64)
    bounds = np.flatnonzero(np.diff(chunk)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    stops = np.concatenate([bounds, [len(chunk)]]).astype(np.int64)
    next_id = 0
    for a, b in zip(starts, stops):
        total = float(m[a:b].sum())
        if total <= max_per_chunk or b - a < 2:
            out[a:b] = next_id
            next_id += 1
            continue
        sub = plan_partitions(
            x[a:b],
            y[a:b],
            m[a:b],
            max_per_file=total,
            max_per_chunk=max_per_chunk,
            ids=ids[a:b],
            force_utm=None,
            **options,
        )
        out[a:b] = next_id + sub.chunk_index
        next_id += sub.num_chunks
    return out


def group_chunks(chunk_measures: np.ndarray, max_per_file: float) -> list[tuple[int, int]]:
    """Consecutive runs ``[start, stop)`` of chunks, each run's measure within ``max_per_file``
    (a chunk over it alone is a run of one)."""
    runs: list[tuple[int, int]] = []
    start, acc = 0, 0.0
    for i, v in enumerate(chunk_measures):
        if i > start and acc + float(v) > max_per_file:
            runs.append((start, i))
            start, acc = i, 0.0
        acc += float(v)
    if len(chunk_measures):
        runs.append((start, len(chunk_measures)))
    return runs
