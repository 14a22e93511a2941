"""The map step as stages (:data:`MAP_STEP`), run by the drivers of :mod:`fused_celery.jobs`::

    map × tasks ─► route (check CRS/schema, group by file) ─► write × files ─► commit

A ``map`` member reads its chunks (one row group each) and runs the UDF through
:mod:`fused_celery.execute`. Work is staged (:mod:`fused_celery.jobs.staged`, under
``<storage_root>/_staged/<key>``, ``key`` a digest of the input table's version, the chunks'
metadata and the UDF's code and parameters; deterministic, so a redelivered member overwrites the
same objects) in one of two forms:

* a *whole file*: when a task holds every chunk of an input file (the default batching gives each
  file of at most :data:`FILE_TASK_ROWS` rows a task of its own), it writes that file's output
  as the table stores it (``data.parquet`` and its sample sidecar) and the ``commit`` links it
  into the table: no part is written, read back and written again;
* a *chunk part*: otherwise (``chunks_per_task`` set, files split across tasks), each chunk's
  output as Arrow IPC, assembled into output files by the ``write`` stage.

Members return only row counts, CRS, schema, keys (and a whole file's chunk metadata). With
``resume`` the fan-out leaves out the files and chunks already staged by an earlier run of the
same work, and ``route`` takes their staged results. ``route`` checks that the outputs fit one
table (one CRS, one geometry column, column types that unify; each file keeps its own unified
types, as files assembled by the ``write`` stage do). ``commit`` (the last collect, once) takes
the files into place, ``_sample`` last, and drops the staged work. On failure the writer's
staging is removed (no partial table; the staged work stays for a resume). A step without
output table (``ignore_no_output``) runs the map stage only, as chunk parts. The runners are
in :mod:`fused_celery.steps.map_runners`.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from fused_celery import storage
from fused_celery.errors import StepInputError, StepOutputError, StepSchemaError
from fused_celery.jobs import staged
from fused_celery.jobs.stages import FailedItem, Stage, StageRun, StageSequence, error_text
from fused_celery.steps.base import call_udf, discard_writer, require_udf
from fused_celery.steps.map import MapJobStepConfig, chunk_kwargs

if TYPE_CHECKING:
    import geopandas as gpd
    import pyarrow as pa

    from fused_celery.table import ChunkMetadata, TableWriter

KIND = "map"
#: The staged parts' format, in their keys (bump when it changes: old parts are not reused).
PART_FORMAT = "map-part-3"
#: Rows a map task takes at least when ``chunks_per_task`` is None (small chunks share a task).
TASK_ROWS = 20_000
#: Chunks a map task takes at most when ``chunks_per_task`` is None.
MAX_CHUNKS_PER_TASK = 64
#: Rows of an input file up to which the default batching gives the file a task of its own
#: (its output written whole by the task); larger files are split into chunk tasks.
FILE_TASK_ROWS = 250_000
#: Whole-file tasks are planned when there are at least this many (or as many as chunk
#: batches would give): fewer, larger tasks would leave workers idle.
MIN_FILE_TASKS = 8


class TableSummary(BaseModel):
    """The committed output table: its URL (None: the step wrote none, ``ignore_no_output``)
    and its files, chunks and rows (without a table: the chunks run and rows returned)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output: str | None
    num_files: int
    num_chunks: int
    num_rows: int


class MapRun(StageRun):
    """One map step, small and JSON-able. config: the step (input and output URLs set).
    writer: the output's ``TableWriter.to_dict()`` (None: no output table). work: the work
    folder. Filled in on the way: input_version (the input table's version, in every chunk's
    staged key), reused (chunks taken from staged work), crs (the outputs' CRS, PROJJSON text),
    write_tasks (route) and table (commit)."""

    kind: Literal["map"] = KIND
    config: MapJobStepConfig
    writer: dict[str, Any] | None
    work: str
    input_version: str | None = None
    reused: int = 0
    crs: str | None = None
    write_tasks: int = 0
    table: TableSummary | None = None

    def table_writer(self) -> TableWriter:
        """The run's table writer (rebuilt without checking the target again)."""
        from fused_celery.table import TableWriter

        if self.writer is None:
            raise RuntimeError(f"job {self.job_id}: the map step writes no table (no writer)")
        return TableWriter.from_dict(self.writer)

    def inputs_version(self) -> str:
        """The version of what the step reads (in every chunk's staged key): its input table's
        (:func:`input_version`); the join adds its right input's."""
        return input_version(self.config.input)

    def convert(
        self, meta: dict[str, Any], chunks: Sequence[ChunkMetadata] | None, *, where: str
    ) -> tuple[dict[str, Any], tuple[pa.Table, dict[str, Any]] | None]:
        """Run the UDF on chunk ``meta`` (:meth:`chunk_output`) and convert its output as the
        table stores it (:func:`~fused_celery.table.format.frame_to_arrow`); returns the
        chunk's info (``file_id``, ``chunk_id``, ``rows``, and with rows ``crs`` (PROJJSON
        text or None), ``geometry`` (column name), ``schema``) and the ``(table, facts)``
        (None: no output). chunks: as :func:`read_chunk`; where: the chunk, for errors. A step
        that makes its rows another way (the built-in join) overrides this."""
        out = self.chunk_output(meta, chunks, where=where)
        if out is None:
            return {"file_id": meta["file_id"], "chunk_id": meta["chunk_id"], "rows": 0}, None
        from fused_celery.table.format import frame_to_arrow

        table, facts = frame_to_arrow(out)
        return converted_info(meta, table, out.crs, out.geometry.name), (table, facts)

    def chunk_output(
        self, meta: dict[str, Any], chunks: Sequence[ChunkMetadata] | None, *, where: str
    ) -> gpd.GeoDataFrame | None:
        """The output of one input chunk (:func:`output_frame` of the UDF on it); a step whose
        chunk work differs (the join) overrides this and reuses the rest of the stages."""
        udf = require_udf(self.config)
        frame = read_chunk(self.config.input, meta, chunks)
        value = call_udf(udf, chunk_kwargs(udf, frame, meta), where=where, run=self)
        return output_frame(value, frame.crs, where=where)


def chunk_metadata_dict(meta: ChunkMetadata) -> dict[str, Any]:
    """What the UDF's ``metadata`` parameter receives: file_id, chunk_id, bbox, num_rows."""
    return {
        "file_id": meta.file_id,
        "chunk_id": int(meta.chunk_id),
        "bbox": [meta.bbox_minx, meta.bbox_miny, meta.bbox_maxx, meta.bbox_maxy],
        "num_rows": int(meta.num_rows),
    }


def read_chunk(
    url: str, meta: dict[str, Any], chunks: Sequence[ChunkMetadata] | None = None
) -> gpd.GeoDataFrame:
    """Chunk ``meta`` (a :func:`chunk_metadata_dict`) of table ``url``, as a GeoDataFrame; a
    read error is a :class:`StepInputError` naming the chunk. chunks: the table's chunk
    metadata (default None: read from its ``_sample``)."""
    from fused_celery.table import get_chunk_from_table, read_chunk_metadata

    fid, cid = meta["file_id"], meta["chunk_id"]
    try:
        found = read_chunk_metadata(url) if chunks is None else chunks
        mine = [c for c in found if c.file_id == fid and c.chunk_id == cid]
        return get_chunk_from_table(url, fid, cid, _metadata=mine or None)
    except Exception as exc:
        raise StepInputError(
            f"cannot read chunk {fid}/{cid} of table {url}: {error_text(exc)}; check the table "
            "(rewrite it, or pass ignore_chunk_error=True to leave the chunk out)"
        ) from exc


def output_frame(value: Any, crs: Any, *, where: str) -> gpd.GeoDataFrame | None:
    """A map UDF's output as the GeoDataFrame the table stores: a GeoDataFrame as is (no CRS:
    the input's ``crs``); a DataFrame or Arrow table with a geometry column made one, without
    one given a null ``geometry`` in ``crs``; None stays None (no rows). Anything else is a
    :class:`StepOutputError` naming ``where`` and the type."""
    import geopandas as gpd
    import pandas as pd
    import pyarrow as pa

    if value is None:
        return None
    if isinstance(value, pa.Table):
        from fused_celery.table.format import _geo_from_schema, arrow_to_frame

        value = arrow_to_frame(value, _geo_from_schema(value.schema))
    if isinstance(value, gpd.GeoDataFrame):
        try:
            value.geometry  # noqa: B018 - raises without an active geometry
        except AttributeError:
            value = pd.DataFrame(value)
        else:
            return value if value.crs is not None or crs is None else value.set_crs(crs)
    if isinstance(value, pd.DataFrame):
        geoms = [c for c in value.columns if isinstance(value[c].dtype, gpd.array.GeometryDtype)]
        if geoms:
            frame = gpd.GeoDataFrame(value, geometry=geoms[0])
            return frame if frame.crs is not None or crs is None else frame.set_crs(crs)
        return gpd.GeoDataFrame(
            value.reset_index(drop=True),
            geometry=gpd.GeoSeries([None] * len(value), crs=crs),
        )
    raise StepOutputError(
        f"{where}: the UDF returned a {type(value).__module__}.{type(value).__name__}; a map UDF "
        "returns a GeoDataFrame, a DataFrame, a pyarrow Table or None"
    )


def converted_info(
    meta: dict[str, Any], table: pa.Table, crs: Any, geometry: str
) -> dict[str, Any]:
    """The info of chunk ``meta``'s output converted to ``table`` (as the table stores it):
    ``file_id``, ``chunk_id``, ``rows``, ``crs`` (PROJJSON text; None without rows or CRS),
    ``geometry`` (the column's name) and ``schema``."""
    rows = table.num_rows
    return {
        "file_id": meta["file_id"],
        "chunk_id": meta["chunk_id"],
        "rows": rows,
        "crs": crs.to_json() if crs is not None and rows else None,
        "geometry": geometry,
        "schema": _schema_text(table),
    }


def _schema_text(table: pa.Table) -> str:
    """The table's column types as base64 Arrow schema (no metadata)."""
    schema = table.schema.remove_metadata()
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _schema(text: str) -> pa.Schema:
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def input_version(url: str) -> str:
    """The version of table ``url``: a digest of its ``_sample`` and its data files' times, so
    a rewritten input gives other staged keys."""
    import hashlib

    from fused_celery.table.format import _sample_url

    sample = hashlib.sha256(storage.read_bytes(_sample_url(url))).hexdigest()
    times = {n: t for n, t in storage.modified_times(url).items() if "/" not in n}
    return staged.work_key(sample, times)


def chunk_key(run: MapRun, meta: dict[str, Any]) -> str:
    """The staged key of chunk ``meta``'s output: the step type, the inputs' version
    (:meth:`MapRun.inputs_version`: the join's right input too), the chunk's metadata, and the
    step's config but its output (the UDF's code, entrypoint and parameters...); shared across
    runs, so ``resume`` reuses it."""
    config = run.config.model_dump(
        mode="json", exclude={"output", "overwrite", "name", "metadata", "ignore_chunk_error"}
    )
    return staged.work_key(PART_FORMAT, run.kind, run.input_version, meta, config)


def part_url(key: str) -> str:
    """Where the output of the chunk with staged key ``key`` is: the rows as the table stores
    them (:func:`~fused_celery.table.format.frame_to_arrow`: ISO WKB, the bbox covering), an
    Arrow IPC file (no encoding to pay twice), so the write stage decodes no geometry."""
    return staged.entry_url(key, "part.arrow")


def facts_url(key: str) -> str:
    """The facts of the chunk's output (frame_to_arrow's: CRS, geometry columns, metadata)."""
    return staged.entry_url(key, "facts.json")


def file_key(run: MapRun, metas: Sequence[dict[str, Any]]) -> str:
    """The staged key of the whole output file of input chunks ``metas`` (every chunk of one
    input file, in order): their :func:`chunk_key` s."""
    return staged.work_key(PART_FORMAT, "file", [chunk_key(run, m) for m in metas])


def file_data_url(key: str) -> str:
    """Where the whole output file staged under ``key`` is (as the table stores it)."""
    return staged.entry_url(key, "data.parquet")


def file_sample_url(key: str) -> str:
    """Where the sample sidecar of the whole output file staged under ``key`` is."""
    return staged.entry_url(key, "sample.parquet")


def _whole_files_allowed(run: MapRun) -> bool:
    """Whole-file work: the step writes a table and ``chunks_per_task`` is the default."""
    return run.writer is not None and run.config.chunks_per_task is None


# --- stage map --------------------------------------------------------------------------------


def map_items(run: MapRun) -> tuple[MapRun, list[list[dict[str, Any]]]]:
    """The map fan-out: the input's chunks in (file, chunk) order, grouped by
    ``chunks_per_task`` (or by :data:`TASK_ROWS`); with ``resume``, without the chunks already
    staged (their results go to ``reused.json`` for :func:`route`). An input that is not a table
    or is empty is a :class:`StepInputError`."""
    from fused_celery.table import read_chunk_metadata

    url = run.config.input
    try:
        chunks = read_chunk_metadata(url)
    except Exception as exc:
        raise StepInputError(
            f"the map step's input {url} is not a table: {error_text(exc)}"
        ) from exc
    if not chunks:
        raise StepInputError(f"the map step's input table {url} is empty (no chunks)")
    metas = [chunk_metadata_dict(c) for c in sorted(chunks, key=lambda c: (c.file_id, c.chunk_id))]
    run = run.model_copy(update={"input_version": run.inputs_version()})
    reused: list[dict[str, Any]] = []
    if run.options.resume:
        todo = []
        for file_metas in _by_file(metas).values():
            allowed = _whole_files_allowed(run)
            whole = staged.staged_info(file_key(run, file_metas)) if allowed else None
            if whole is not None:
                reused.append(whole)
                continue
            for m in file_metas:
                info = staged.staged_info(chunk_key(run, m))
                (todo if info is None else reused).append(info or m)
        metas = todo
    storage.write_bytes(storage.join(run.work, "reused.json"), json.dumps(reused).encode())
    run = run.model_copy(update={"reused": sum(int(i.get("chunks", 1)) for i in reused)})
    chunk_plan = _chunk_batches(metas, run.config.chunks_per_task)
    if not _whole_files_allowed(run):
        return run, chunk_plan
    file_plan = _file_batches(metas)
    use_files = len(file_plan) >= min(len(chunk_plan), MIN_FILE_TASKS)
    return run, file_plan if use_files else chunk_plan


def _by_file(metas: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``metas`` grouped by input file (in order)."""
    files: dict[str, list[dict[str, Any]]] = {}
    for m in metas:
        files.setdefault(m["file_id"], []).append(m)
    return files


def _chunk_batches(metas: Sequence[dict[str, Any]], per: int | None) -> list[list[dict[str, Any]]]:
    """``metas`` in batches of ``per`` chunks (None: of at least :data:`TASK_ROWS` rows and at
    most :data:`MAX_CHUNKS_PER_TASK` chunks)."""
    items: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    rows = 0
    for m in metas:
        current.append(m)
        rows += m["num_rows"]
        full = len(current) >= per if per else rows >= TASK_ROWS
        if full or len(current) >= (per or MAX_CHUNKS_PER_TASK):
            items.append(current)
            current, rows = [], 0
    if current:
        items.append(current)
    return items


def _file_batches(metas: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``metas`` in whole-file batches: each file of at most :data:`FILE_TASK_ROWS` rows whole
    in one batch (small files share one up to :data:`TASK_ROWS` rows); larger files in chunk
    batches of their own."""
    items: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    rows = 0
    for file_metas in _by_file(metas).values():
        file_rows = sum(m["num_rows"] for m in file_metas)
        if file_rows > FILE_TASK_ROWS:
            items.extend(_chunk_batches(file_metas, None))
            continue
        current.extend(file_metas)
        rows += file_rows
        if rows >= TASK_ROWS or len(current) >= MAX_CHUNKS_PER_TASK:
            items.append(current)
            current, rows = [], 0
    if current:
        items.append(current)
    return items


def map_key(item: list[dict[str, Any]]) -> str:
    """A map task's key: its first chunk, ``<file>.<chunk>`` (+ ``+<n>`` more)."""
    first = f"{item[0]['file_id']}.{item[0]['chunk_id']}"
    return first if len(item) == 1 else f"{first}+{len(item) - 1}"


def describe_map(run: MapRun, items: Sequence[list[dict[str, Any]]]) -> str:
    """The log line when map starts."""
    n = sum(len(i) for i in items)
    udf = run.config.udf.name if run.config.udf else "?"
    line = f"map: UDF {udf} on {n} chunk(s) of {run.config.input} in {len(items)} task(s)"
    if run.reused:
        line += f"; {run.reused} chunk(s) staged by an earlier run reused (resume)"
    return line


def convert_chunk(
    run: MapRun, meta: dict[str, Any], chunks: Sequence[ChunkMetadata] | None = None
) -> tuple[dict[str, Any], tuple[pa.Table, dict[str, Any]] | None]:
    """One chunk's output as the table stores it, and its info: :meth:`MapRun.convert`."""
    return run.convert(meta, chunks, where=f"chunk {meta['file_id']}/{meta['chunk_id']}")


def map_chunk(
    run: MapRun, meta: dict[str, Any], chunks: Sequence[ChunkMetadata] | None = None
) -> dict[str, Any]:
    """:func:`convert_chunk`, its output staged as a chunk part (:func:`part_url`, then
    :func:`~fused_celery.jobs.staged.mark_done`); returns its info with its staged ``key``."""
    import pyarrow as pa

    key = chunk_key(run, meta)
    info, converted = convert_chunk(run, meta, chunks)
    info = {**info, "key": key}
    if converted is not None:
        table, facts = converted
        # scratch: not fsynced (a part torn by an OS crash fails the write stage, naming it)
        with (
            storage.atomic_output(part_url(key), durable=False) as f,
            pa.ipc.new_file(f, table.schema) as writer,
        ):
            writer.write_table(table)
        storage.write_bytes(facts_url(key), json.dumps(facts).encode(), durable=False)
    staged.mark_done(key, info)
    return info


def stage_file(
    run: MapRun,
    metas: Sequence[dict[str, Any]],
    done: Sequence[tuple[dict[str, Any], tuple[pa.Table, dict[str, Any]]]],
    *,
    complete: bool,
) -> dict[str, Any] | None:
    """Write the whole output file of input chunks ``metas`` (every chunk of one input file)
    from its chunks' :func:`convert_chunk` results ``done`` (the chunks with output) into
    staged work (:func:`file_data_url`, :func:`file_sample_url`); returns the file's info
    (``file_id``, ``chunk_id`` (its first chunk with output), ``file`` True, ``key``,
    ``chunks`` (input chunks run), ``rows``, ``crs``, ``geometry``, ``schema`` and ``metas``,
    its chunks' metadata), None when no chunk had output. complete: no chunk failed, so a
    ``resume`` may reuse it (marked done). The chunks' outputs must fit one file
    (:func:`check_outputs`)."""
    from fused_celery.table.write import write_converted_file

    if not done:
        return None
    infos = [i for i, _ in done]
    crs, schema = check_outputs(infos)
    assert schema is not None  # every chunk in done has output
    converted = []
    for _, (table, facts) in done:
        if crs is not None:
            facts = {**facts, "crs": json.loads(crs)}  # checked equal to every chunk's
        converted.append((table, facts))
    fid = str(metas[0]["file_id"])
    key = file_key(run, metas)
    written = write_converted_file(fid, converted, file_data_url(key), file_sample_url(key))
    info: dict[str, Any] = {
        "file_id": metas[0]["file_id"],
        "chunk_id": infos[0]["chunk_id"],  # names the file's output in check_outputs' errors
        "file": True,
        "key": key,
        "chunks": len(metas),
        "rows": sum(int(i["rows"]) for i in infos),
        "crs": crs,
        "geometry": infos[0].get("geometry"),
        "schema": _schema_text(schema.empty_table()),
        "metas": [m.model_dump(mode="json") for m in written],
    }
    if complete:
        staged.mark_done(key, info)
    return info


def _whole_files(
    run: MapRun, item: Sequence[dict[str, Any]], chunks: Sequence[ChunkMetadata] | None
) -> set[str]:
    """The input files of which ``item`` holds every chunk (written whole by the task)."""
    if not _whole_files_allowed(run) or chunks is None:
        return set()
    in_table: dict[str, int] = {}
    for c in chunks:
        in_table[c.file_id] = in_table.get(c.file_id, 0) + 1
    return {f for f, ms in _by_file(item).items() if in_table.get(f) == len(ms)}


def map_member(run: MapRun, item: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The map member: each input file of which ``item`` holds every chunk written whole
    (:func:`stage_file`), each other chunk staged as a part (:func:`map_chunk`). Under
    ``ignore_chunk_error`` a failed chunk is returned as ``{"file_id", "chunk_id", "error"}``
    (left out by the collect; its file is written without it) unless every chunk of the task
    failed."""
    from fused_celery.table import read_chunk_metadata

    out: list[dict[str, Any]] = []
    first: Exception | None = None
    try:
        wanted = len(item) > 1 or _whole_files_allowed(run)
        chunks = read_chunk_metadata(run.config.input) if wanted else None
    except Exception:  # each chunk's read says what is wrong
        chunks = None
    whole = _whole_files(run, item, chunks)
    for fid, metas in _by_file(item).items():
        done = []
        for meta in metas:
            try:
                if fid not in whole:
                    out.append(map_chunk(run, meta, chunks))
                    continue
                info, converted = convert_chunk(run, meta, chunks)
                if converted is not None:
                    done.append((info, converted))
            except Exception as exc:
                if not run.ignore_errors or len(item) == 1:
                    raise
                first = first or exc
                out.append({"file_id": meta["file_id"], "chunk_id": meta["chunk_id"],
                            "error": error_text(exc)})  # fmt: skip
        if fid in whole:
            complete = not any(o.get("file_id") == fid and "error" in o for o in out)
            info = stage_file(run, metas, done, complete=complete)
            if info is not None:
                out.append(info)
    if first is not None and all("error" in o for o in out):
        raise first  # the whole task failed: the driver counts it
    return out


def _same_crs(a: str, b: str) -> bool:
    from pyproj import CRS

    ca, cb = CRS.from_json(a), CRS.from_json(b)
    return ca == cb or ca.equals(cb, ignore_axis_order=True)


def check_outputs(infos: list[dict[str, Any]]) -> tuple[str | None, pa.Schema | None]:
    """The outputs' common CRS (PROJJSON text, None when no chunk has rows) and unified column
    types (None: no output); a :class:`StepSchemaError` naming two chunks whose CRS, geometry
    column or column types do not fit one table (types unify where safe: int with float, null
    with anything)."""
    import pyarrow as pa

    crs, crs_owner, geometry, geometry_owner = None, "", None, ""
    schema: pa.Schema | None = None
    owner: dict[str, str] = {}
    for info in infos:
        if "schema" not in info:
            continue
        name = f"{info['file_id']}/{info['chunk_id']}"
        if info.get("crs") is not None:
            if crs is None:
                crs, crs_owner = info["crs"], name
            elif not _same_crs(crs, info["crs"]):
                raise StepSchemaError(
                    f"the outputs of chunks {crs_owner} and {name} have different CRSs; return "
                    "one CRS from the UDF (e.g. gdf.to_crs(4326))"
                )
        if geometry is None:
            geometry, geometry_owner = info["geometry"], name
        elif info["geometry"] != geometry:
            raise StepSchemaError(
                f"the outputs of chunks {geometry_owner} and {name} have different geometry "
                f"columns ({geometry!r} and {info['geometry']!r}); use one name"
            )
        this = _schema(info["schema"])
        if schema is None:
            schema = this
        else:
            try:
                schema = pa.unify_schemas([schema, this], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                known = set(schema.names)
                bad = next(
                    (f for f in this if f.name in known and f.type != schema.field(f.name).type),
                    None,
                )
                column = bad.name if bad is not None else "?"
                raise StepSchemaError(
                    f"column {column!r} of the outputs of chunks {owner.get(column, '?')} and "
                    f"{name} has types that do not unify ({exc}); return one type from the UDF"
                ) from None
        for f in this:
            owner.setdefault(f.name, name)
    return crs, schema


def route(run: MapRun, ok: list[list[dict[str, Any]]], failed: list[FailedItem]) -> MapRun:
    """The collect of map: the outputs checked (:func:`check_outputs`), chunks left out under
    ``ignore_chunk_error`` listed, the work reused from staged work (``resume``) added, and
    written to ``route.json``: the whole files for the commit (``[file_id, key, metas]``) and
    one write task per other input file (its chunks with output, in order, with their staged
    keys; none without an output table)."""
    reused = json.loads(storage.read_bytes(storage.join(run.work, "reused.json")))
    infos = [i for batch in ok for i in batch] + reused
    left_out = [
        FailedItem(stage="map", key=f"{i['file_id']}.{i['chunk_id']}", error=i["error"])
        for i in infos
        if "error" in i
    ]
    infos = [i for i in infos if "error" not in i]
    crs, _ = check_outputs(infos)
    whole = sorted((i for i in infos if i.get("file")), key=lambda i: i["file_id"])
    files: dict[str, list[list[Any]]] = {}
    parts = (i for i in infos if not i.get("file") and "schema" in i)
    for i in sorted(parts, key=lambda i: (i["file_id"], i["chunk_id"])):
        files.setdefault(i["file_id"], []).append([int(i["chunk_id"]), i["key"]])
    groups = [[fid, parts] for fid, parts in files.items()] if run.writer is not None else []
    route_data = {
        "groups": groups,
        "whole": [[i["file_id"], i["key"], i["metas"]] for i in whole],
        "keys": [i["key"] for i in infos],
        "chunks": sum(int(i.get("chunks", 1)) for i in infos),
        "rows": sum(int(i["rows"]) for i in infos),
    }
    storage.write_bytes(storage.join(run.work, "route.json"), json.dumps(route_data).encode())
    del failed
    return run.model_copy(
        update={"crs": crs, "write_tasks": len(groups), "failed": (*run.failed, *left_out)}
    )


# --- stage write ------------------------------------------------------------------------------


def _route(run: MapRun) -> dict[str, Any]:
    return json.loads(storage.read_bytes(storage.join(run.work, "route.json")))


def write_items(run: MapRun) -> tuple[MapRun, list[list[Any]]]:
    """The write fan-out: one ``[file_id, [[chunk_id, staged key], ...]]`` per output file
    (none without an output table)."""
    return run, _route(run)["groups"]


def describe_write(run: MapRun, items: Sequence[list[Any]]) -> str:
    """The log line when write starts."""
    if run.writer is None:
        return "write: no output table (ignore_no_output)"
    whole = len(_route(run).get("whole", []))
    line = f"write: {len(items)} file(s) to {run.config.output}"
    return f"{line}; {whole} file(s) written whole by the map tasks" if whole else line


def write_output_file(run: MapRun, item: list[Any]) -> list[dict[str, Any]]:
    """The write member: output file ``item[0]`` from its chunks' staged parts ``item[1]`` (in
    order), written to the table writer's staging; returns its chunks' metadata."""
    import pyarrow as pa

    fid, keys = str(item[0]), [str(key) for _, key in item[1]]
    crs = json.loads(run.crs) if run.crs else None
    converted = []
    for key in keys:
        try:
            with storage.open_input_file(part_url(key)) as f:
                table = pa.ipc.open_file(f).read_all()
            facts = json.loads(storage.read_bytes(facts_url(key)))
        except Exception as exc:
            raise StepInputError(
                f"the staged output {part_url(key)} of a chunk of file {fid} cannot be read "
                f"({error_text(exc)}); run the step again without resume"
            ) from exc
        meta = facts["metadata"]
        facts["metadata"] = {k: math.nan if v is None else v for k, v in meta.items()}
        if crs is not None:
            facts["crs"] = crs  # checked equal to every chunk's by route
        converted.append((table, facts))
    metas = run.table_writer().write_converted(fid, converted)
    return [m.model_dump(mode="json") for m in metas]


def _adopt(writer: TableWriter, file_id: str, key: str) -> None:
    writer.adopt_file(file_id, file_data_url(key), file_sample_url(key))


def commit(run: MapRun, written: list[list[dict[str, Any]]], failed: list[FailedItem]) -> MapRun:
    """The collect of write (once): the whole files taken from staged work and the table
    committed, ``_sample`` last, then the staged work dropped; the run with its ``table``
    (without an output table: the chunks run and rows returned)."""
    del failed
    route_data = _route(run)
    if run.writer is None:
        summary = TableSummary(
            output=None, num_files=0, num_chunks=route_data["chunks"], num_rows=route_data["rows"]
        )
        storage.delete_prefix(run.work)
    else:
        writer = run.table_writer()
        whole = route_data.get("whole", [])
        if whole:
            with ThreadPoolExecutor(max_workers=min(16, len(whole))) as pool:
                list(pool.map(lambda w: _adopt(writer, w[0], w[1]), whole))
        metas = [m for file in written for m in file] + [m for _, _, ms in whole for m in ms]
        table = writer.commit(metas)
        summary = TableSummary(
            output=table.url,
            num_files=table.num_files,
            num_chunks=table.num_chunks,
            num_rows=table.num_rows,
        )
    staged.drop(route_data["keys"])
    return run.model_copy(update={"table": summary})


def map_result(run: MapRun) -> tuple[dict[str, Any], str]:
    """The Done step's result (``output, num_files, num_chunks, num_rows``) and log line."""
    t = run.table
    if t is None:
        raise RuntimeError(f"job {run.job_id}: the map step has no result before its commit")
    line = (
        f"done: {t.num_rows} rows in {t.num_files} file(s), {t.num_chunks} chunk(s) at {t.output}"
        if t.output is not None
        else f"done: UDF ran on {t.num_chunks} chunk(s), {t.num_rows} rows returned; no output "
        "table (ignore_no_output)"
    )
    return t.model_dump(mode="json"), line


def map_discard(run: MapRun) -> None:
    """Remove the run's staging and work folder; no partial table is left. The staged parts
    stay, for a ``resume`` (swept after ``options.staged_expires``)."""
    if run.writer is None:
        storage.delete_prefix(run.work)
    else:
        discard_writer(run.table_writer())


MAP_STEP: StageSequence[MapRun] = StageSequence(
    kind=KIND,
    run_type=MapRun,
    stages=(
        Stage(
            "map",
            items=map_items,
            member=map_member,
            collect=route,
            key=map_key,
            collect_name="route",
            describe=describe_map,
            units=len,
            unit="chunk",
        ),
        Stage(
            "write",
            items=write_items,
            member=write_output_file,
            collect=commit,
            key=lambda item: str(item[0]),
            collect_name="commit",
            describe=describe_write,
        ),
    ),
    result=map_result,
    discard=map_discard,
)
