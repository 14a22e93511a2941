"""Writing tables: :class:`TableWriter` (staged data files, then the commit) and
:func:`write_table`.

Commit protocol: data files are written under deterministic names in ``_staging/<run_id>/``;
:meth:`TableWriter.commit` moves them into place and writes ``_sample`` last. A folder without
``_sample`` is not a table: readers raise :class:`IncompleteTableError`. Rerunning a crashed job
rewrites the same names, and commit deletes data files it did not list, so rows are never
duplicated. One writer per table at a time.

Safety: a writer replaces (``overwrite=True``) only a table fused-celery committed (its
``_sample`` carries :data:`~fused_celery.table.format.KEY_WRITER`), an unfinished one of ours
(``_staging/_writing`` names fused-celery), or an empty/absent folder; it never writes to a
filesystem root, a home directory, a parent of the current directory or a bucket root
(:func:`fused_celery.storage.protected_reason`). A run that fails or is cancelled calls
:meth:`TableWriter.discard`, which leaves the location as it was before the run.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fused_celery import storage
from fused_celery.errors import (
    CorruptFileError,
    IncompleteTableError,
    TableExistsError,
    TableFormatError,
    UnsafeLocationError,
    UnsafeOverwriteError,
)
from fused_celery.table.facts import (
    ChunkMetadata,
    RowFacts,
    evenly_spaced,
    geometry_types,
)
from fused_celery.table.format import (
    COMPRESSION,
    COVERING_COLUMN,
    FORMAT_VERSION,
    KEY_FORMAT_VERSION,
    KEY_INGEST_REPORT,
    KEY_METADATA,
    KEY_WRITER,
    SAMPLE_ROWS,
    SAMPLE_ROWS_PER_FILE,
    STAGING_DIR,
    WRITING_MARKER,
    _conform,
    _crs_from_json,
    _crs_json,
    _file_url,
    _geo_from_schema,
    _sample_url,
    _unify,
    _wgs84_json,
    encode_chunk_metadata,
    frame_to_arrow,
    geo_metadata,
    resolve_table_url,
    validate_name,
    writer_marker,
    written_by_us,
)
from fused_celery.table.read import Table, _preview, open_table, read_chunk_metadata

if TYPE_CHECKING:
    import geopandas as gpd


class TableWriter:
    """Writes one table: data files into a staging area, then a commit that moves them into
    place and writes ``_sample`` last.

    url: the table (URL, path or name, see :func:`resolve_table_url`). overwrite: replace an
    existing table fused-celery committed, at commit time only (default False: an existing
    table is an error, raised here before any work; anything that is not our table nor an empty
    folder is refused either way). run_id: names this run's staging folder
    ``_staging/<run_id>`` (default ``"default"``; give a job id so reruns of one job share it).
    check: run :meth:`prepare` now (default True; workers rebuilt with :meth:`from_dict` skip
    it). sample_rows: rows kept in ``_sample`` (default 1000). created / marker_created: what
    :meth:`prepare` created (folders, the ``_staging/_writing`` marker), for :meth:`discard`;
    set by :meth:`prepare` and carried by :meth:`to_dict` (default: nothing).

    Usage, on one machine or across Celery tasks::

        writer = TableWriter(url, overwrite=False)          # checks, before any work
        meta = writer.write_file("0", [chunk0, chunk1])     # any process, any order, idempotent
        table = writer.commit(meta)                          # once, after every file
        # or, when the run fails or is cancelled (any process):
        writer.discard()                                     # the location as it was before
    """

    def __init__(
        self,
        url: str,
        *,
        overwrite: bool = False,
        run_id: str = "default",
        check: bool = True,
        sample_rows: int = SAMPLE_ROWS,
        created: Sequence[str] = (),
        marker_created: bool = False,
    ) -> None:
        self.url = resolve_table_url(url)
        self.overwrite = bool(overwrite)
        self.run_id = validate_name(run_id, "run_id")
        self.sample_rows = int(sample_rows)
        self.created = [storage.normalize(c) for c in created]
        self.marker_created = bool(marker_created)
        if check:
            self.prepare()

    # locations
    @property
    def staging_url(self) -> str:
        """This run's staging folder."""
        return storage.join(self.url, STAGING_DIR, self.run_id)

    def staged_file_url(self, file_id: str | int) -> str:
        """Where :meth:`write_file` puts ``file_id`` before commit."""
        return storage.join(self.staging_url, f"{validate_name(file_id, 'file_id')}.parquet")

    @property
    def _sidecars_url(self) -> str:
        return storage.join(self.staging_url, "_samples")

    def _sidecar_url(self, file_id: str) -> str:
        return storage.join(self._sidecars_url, f"{file_id}.parquet")

    @property
    def _marker_url(self) -> str:
        return storage.join(self.url, STAGING_DIR, WRITING_MARKER)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, to rebuild the writer in a worker with :meth:`from_dict`."""
        return {
            "url": self.url,
            "overwrite": self.overwrite,
            "run_id": self.run_id,
            "sample_rows": self.sample_rows,
            "created": list(self.created),
            "marker_created": self.marker_created,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableWriter:
        """The writer described by :meth:`to_dict` (without re-running :meth:`prepare`)."""
        return cls(**dict(data), check=False)

    # phases
    def prepare(self) -> None:
        """Check the target before any work, and mark the folder as a table being written.

        Raises :class:`BucketNotFoundError`; :class:`UnsafeLocationError` for a filesystem root,
        a home directory, a parent of the current directory or a bucket root (paths resolved);
        :class:`TableExistsError` when ``overwrite=False`` and a table is there;
        :class:`UnsafeOverwriteError` (a :class:`TableExistsError`) when ``overwrite=True`` and
        what is there is neither a table fused-celery committed nor empty; with either flag a
        non-empty folder that is not one of our tables (committed or unfinished) is refused.
        An unfinished table of ours (a crashed run) is resumed. Nothing is written when it
        raises. Records the folders and the marker it creates, for :meth:`discard`.
        """
        storage.check_bucket(self.url)
        reason = storage.protected_reason(self.url)
        if reason:
            raise UnsafeLocationError(
                f"{self.url} is {reason}, which is never a table: a table is a folder of its "
                f"own; choose a new or empty folder, e.g. {storage.join(self.url, 'tables', 'x')}"
            )
        if storage.is_file(self.url):
            raise TableExistsError(f"{self.url} is a file; a table is a folder. Choose another URL")
        marker = self._marker_url
        if storage.is_file(_sample_url(self.url)):
            if not _sample_is_ours(self.url):
                if self.overwrite:
                    raise UnsafeOverwriteError(
                        f"{self.url} holds a table that fused-celery did not write (its _sample "
                        f"has no {KEY_WRITER.decode()} key: another tool, or fused-celery before "
                        "it recorded one); overwrite=True replaces only tables fused-celery "
                        "committed. Delete it yourself if it may go, or choose another URL"
                    )
                raise TableExistsError(
                    f"{self.url} holds a table written by another tool; choose another URL"
                )
            if not self.overwrite:
                raise TableExistsError(
                    f"table {self.url} already exists; pass overwrite=True to replace it (the "
                    "old table stays readable until the new one commits) or choose another URL"
                )
        else:
            entries = storage.list_files(self.url, recursive=True)
            if entries and not _marker_is_ours(marker):
                shown = sorted(entries, key=lambda e: ("/" in e, not e.endswith(".parquet"), e))
                what = f"{len(entries)} file(s), e.g. {shown[:5]}"
                if self.overwrite:
                    raise UnsafeOverwriteError(
                        f"{self.url} is not a table written by fused-celery ({what}); "
                        "overwrite=True replaces only a table fused-celery committed or an empty "
                        "folder, and deletes nothing else. Move these files away, or choose "
                        "another URL (a new or empty folder)"
                    )
                raise TableExistsError(
                    f"{self.url} is not empty ({what}) and is not a fused table; choose another "
                    "URL (a new or empty folder)"
                )
        self.created = storage.missing_folders(storage.join(self.url, STAGING_DIR))
        self.marker_created = not storage.is_file(marker)
        if self.marker_created or not _marker_is_ours(marker):
            storage.write_bytes(marker, writer_marker(self.run_id))
            self.marker_created = True

    def write_file(
        self, file_id: str | int, chunks: Iterable[gpd.GeoDataFrame] | gpd.GeoDataFrame
    ) -> list[ChunkMetadata]:
        """Write one data file (one row group per non-empty chunk, in order) to staging.

        Idempotent: the same input gives the same object under the same name. Empty chunks are
        skipped, so chunk_ids are 0..n-1 over the non-empty ones. All chunks of a file must
        share a CRS. Returns the chunks' metadata for :meth:`commit`.
        """
        import geopandas as gpd

        if isinstance(chunks, gpd.GeoDataFrame):
            chunks = [chunks]
        return self.write_converted(file_id, [frame_to_arrow(c) for c in chunks])

    def write_converted(
        self, file_id: str | int, converted: Sequence[tuple[pa.Table, Mapping[str, Any]]]
    ) -> list[ChunkMetadata]:
        """:meth:`write_file` for chunks already converted by
        :func:`~fused_celery.table.format.frame_to_arrow` (``(table, facts)`` each, e.g. made
        where the chunk was computed and staged as Arrow): no geometry is decoded here."""
        fid = validate_name(file_id, "file_id")
        return write_converted_file(
            fid, converted, self.staged_file_url(fid), self._sidecar_url(fid)
        )

    def adopt_file(self, file_id: str | int, data_url: str, sample_url: str) -> None:
        """Take data file ``file_id`` written elsewhere by :func:`write_converted_file` (its
        ``data_url`` and ``sample_url``) into staging, as :meth:`write_converted` would have
        written it: linked or copied (:func:`~fused_celery.storage.copy`), the originals left.
        Idempotent; a missing original is skipped (the commit names missing files)."""
        fid = validate_name(file_id, "file_id")
        for src, dst in (
            (data_url, self.staged_file_url(fid)),
            (sample_url, self._sidecar_url(fid)),
        ):
            if storage.is_file(src):
                storage.copy(src, dst)

    def write_arrow_file(
        self,
        file_id: str | int,
        table: pa.Table,
        chunk_offsets: Sequence[int],
        facts: RowFacts,
        *,
        geometry: str = "geometry",
        durable: bool = True,
    ) -> list[ChunkMetadata]:
        """:meth:`write_file` for rows already encoded: ``table`` holds the attributes and the
        ISO WKB ``geometry`` column in EPSG:4326, rows in chunk order; chunk k is rows
        ``chunk_offsets[k]:chunk_offsets[k + 1]`` (empty chunks skipped); ``facts`` are the
        rows' :class:`RowFacts`. No geometry is decoded. Idempotent, like :meth:`write_file`.
        durable: fsync the staged file before returning (default True); False leaves that to
        the caller (``storage.sync(writer.staged_file_url(file_id))``), which must do it before
        the table is committed.
        """
        fid = validate_name(file_id, "file_id")
        if geometry not in table.column_names:
            raise ValueError(f"write_arrow_file({fid!r}): no geometry column {geometry!r}")
        if table.num_rows != len(facts.type_id):
            raise ValueError(f"write_arrow_file({fid!r}): facts do not match the rows")
        b = facts.bounds
        null = np.isnan(b[:, 0])  # null and empty geometries: NaN bounds
        covering = pa.StructArray.from_arrays(
            [pa.array(b[:, i], type=pa.float64()) for i in range(4)],
            names=["xmin", "ymin", "xmax", "ymax"],
            mask=pa.array(null, type=pa.bool_()) if null.any() else None,
        )
        if COVERING_COLUMN in table.column_names:
            table = table.drop_columns([COVERING_COLUMN])
        table = table.append_column(COVERING_COLUMN, covering)
        bbox = facts.bbox()
        columns = {
            geometry: {
                "geometry_types": facts.geometry_types(),
                "crs": _wgs84_json(),
                "bbox": None if math.isnan(bbox[0]) else list(bbox),
            }
        }
        geo = geo_metadata(columns, geometry)
        table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
        bounds = [(int(a), int(z)) for a, z in zip(chunk_offsets[:-1], chunk_offsets[1:]) if z > a]
        metas = facts.chunks_metadata(
            fid, [a for a, _ in bounds] + [bounds[-1][1]] if bounds else []
        )
        staged = self.staged_file_url(fid)
        if bounds:
            with (
                storage.atomic_output(staged, durable=durable) as out,
                pq.ParquetWriter(out, table.schema, **writer_options(table.schema)) as writer,
            ):
                for a, z in bounds:
                    writer.write_table(table.slice(a, z - a), row_group_size=z - a)
        else:
            storage.delete_file(staged)
        sample = table.take(evenly_spaced(table.num_rows, SAMPLE_ROWS_PER_FILE))
        storage.write_bytes(self._sidecar_url(fid), _parquet_bytes(sample), durable=False)
        return metas

    def commit(
        self,
        chunks: Iterable[ChunkMetadata | Mapping[str, Any]],
        *,
        report: Mapping[str, Any] | None = None,
        scratch: str | None = None,
    ) -> Table:
        """Make the table whole: move the staged files listed in ``chunks`` into place, delete
        data files not listed, write ``_sample`` last, drop the staging area.

        chunks: every chunk :meth:`write_file` returned, for all files (dicts accepted).
        report: what an ingest did to the rows (JSON-able), kept in ``_sample``'s metadata as
        :data:`~fused_celery.table.format.KEY_INGEST_REPORT` (default None: none).
        scratch: a folder of this run in its staging area that the commit does not read (an
        ingest's work files), deleted on a thread while the table is made whole (default
        None). Idempotent: a commit that ran before (fully or partly) completes or does
        nothing. Returns the opened :class:`Table` (:meth:`commit_chunks` does not open it).
        """
        self.commit_chunks(chunks, report=report, scratch=scratch)
        return open_table(self.url)

    def commit_chunks(
        self,
        chunks: Iterable[ChunkMetadata | Mapping[str, Any]],
        *,
        report: Mapping[str, Any] | None = None,
        scratch: str | None = None,
    ) -> list[ChunkMetadata]:
        """:meth:`commit` without opening the table afterwards; returns the committed chunks,
        sorted by file and chunk (what the table's ``chunk_metadata`` holds)."""
        if scratch is not None and not _is_parent(self.staging_url, scratch):
            raise ValueError(f"scratch {scratch!r} is not in this run's staging area")
        metas = sorted(
            (c if isinstance(c, ChunkMetadata) else ChunkMetadata(**dict(c)) for c in chunks),
            key=lambda c: (c.file_id, c.chunk_id),
        )
        file_ids = _check_layout(metas)
        sample_url = _sample_url(self.url)
        old_exists = storage.is_file(sample_url)
        if old_exists and not _sample_is_ours(self.url):
            raise UnsafeOverwriteError(
                f"cannot commit {self.url}: its _sample is now a table fused-celery did not write "
                f"(no {KEY_WRITER.decode()} key), so it is left as it is; discard this run "
                "(TableWriter.discard) and choose another URL"
            )
        if old_exists:
            try:
                committed = read_chunk_metadata(self.url)
            except (TableFormatError, CorruptFileError):
                committed = None
            if committed is not None and _metadata_key(committed) == _metadata_key(metas):
                staged_now = storage.list_files(self.staging_url)
                if not any(f"{f}.parquet" in staged_now for f in file_ids):
                    storage.delete_prefix(storage.join(self.url, STAGING_DIR))
                    return metas
        # the staged data files and sidecars (file ids have no "/": two flat listings, and
        # whatever else the staging area holds, e.g. scratch, is not walked)
        staged = set(storage.list_files(self.staging_url))
        staged |= {f"_samples/{n}" for n in storage.list_files(self._sidecars_url)}
        cleanup = _io_pool().submit(storage.delete_prefix, scratch) if scratch else None
        final = set(storage.list_files(self.url))
        missing = [
            f
            for f in file_ids
            if f"{f}.parquet" not in staged and (old_exists or f"{f}.parquet" not in final)
        ]
        if missing:
            raise IncompleteTableError(
                f"cannot commit {self.url}: data files of file_ids {_preview(missing)} were "
                f"never written to {self.staging_url}; write them (write_file) or rerun the job"
            )
        keep = {f"{f}.parquet" for f in file_ids}
        stale = [n for n in final if n.endswith(".parquet") and n not in keep]
        if stale and not old_exists and not _marker_is_ours(self._marker_url):
            raise UnsafeOverwriteError(
                f"cannot commit {self.url}: it holds files this writer did not stage "
                f"({_preview(stale)}) and is no longer marked as a table being written by "
                "fused-celery, so nothing is deleted; rerun the job into a new or empty folder"
            )
        sample = self._build_sample(file_ids, staged)
        # From here the old table (if any) stops being readable until _sample is written.
        storage.delete_file(sample_url)
        moves = [f for f in file_ids if f"{f}.parquet" in staged]
        _parallel(lambda f: storage.move(self.staged_file_url(f), _file_url(self.url, f)), moves)
        _parallel(lambda n: storage.delete_file(storage.join(self.url, n)), stale)
        kv = {
            KEY_FORMAT_VERSION: FORMAT_VERSION.encode(),
            KEY_METADATA: encode_chunk_metadata(metas),
            KEY_WRITER: writer_key(),
        }
        if report is not None:
            kv[KEY_INGEST_REPORT] = json.dumps(dict(report), sort_keys=True).encode()
        sample = sample.replace_schema_metadata({**(sample.schema.metadata or {}), **kv})
        storage.write_bytes(sample_url, _parquet_bytes(sample))
        if cleanup is not None:
            cleanup.exception()  # wait; a failure is no matter: the staging area goes next
        storage.delete_prefix(storage.join(self.url, STAGING_DIR))
        return metas

    def discard(self) -> None:
        """Undo this run, for a run that failed or was cancelled: leave the location as it was
        before :meth:`prepare`. Call it from any process (a writer rebuilt with
        :meth:`from_dict` knows what :meth:`prepare` created).

        Deletes this run's staging folder (``_staging/<run_id>``, work files included); the
        ``_staging/_writing`` marker when this run wrote it (and it still names this run); then
        each folder this run created (the table folder, its parents, ``_staging``) when it is
        empty, innermost first. A committed table (old or new) and anything this run did not
        create stay untouched. Idempotent.
        """
        storage.delete_prefix(self.staging_url)
        if self.marker_created and _marker_run_id(self._marker_url) == self.run_id:
            storage.delete_file(self._marker_url)
        own = [storage.join(self.url, STAGING_DIR), self.url]
        allowed = [
            c for c in self.created if c in own or _is_parent(c, self.url)
        ]  # never a folder elsewhere, whatever a forged dict says
        storage.remove_empty_folders(allowed)

    def abort(self) -> None:
        """The same as :meth:`discard` (the earlier name)."""
        self.discard()

    def _build_sample(self, file_ids: Sequence[str], staged: set[str]) -> pa.Table:
        """``_sample``'s rows: the per-file samples pooled in file order, thinned evenly to
        ``sample_rows``; the schema comes from them (geometry only when there is none)."""
        names = [f for f in file_ids if f"_samples/{f}.parquet" in staged]
        if not names:  # empty table: any sidecar gives the schema
            names = sorted(
                n[len("_samples/") : -len(".parquet")] for n in staged if n.startswith("_samples/")
            )[:1]
        tables = _parallel(
            lambda f: pq.read_table(io.BytesIO(storage.read_bytes(self._sidecar_url(f)))), names
        )
        if not tables:
            return _geometry_only_table()
        geo = _geo_from_schema(tables[0].schema)
        crss = {_primary_crs_key(t.schema): f for f, t in zip(names, tables)}
        if len(crss) > 1 and not _same_crs(list(crss)):
            seen = ", ".join(f"file {f}" for f in list(crss.values())[:3])
            raise ValueError(
                f"the files of table {self.url} have different CRSs ({seen}, ...); write every "
                "file in one CRS (e.g. to_crs(4326)) and rerun"
            )
        if len(tables) > 1:
            schema = _unify(tables)
            tables = [_conform(t, schema) for t in tables]
        pooled = pa.concat_tables(tables)
        pooled = pooled.take(evenly_spaced(pooled.num_rows, self.sample_rows))
        if geo:
            geo = _sample_geo(pooled, geo)
        return pooled.replace_schema_metadata({b"geo": json.dumps(geo).encode()} if geo else None)


def writer_key() -> bytes:
    """The value of :data:`KEY_WRITER` written into ``_sample``."""
    from fused_celery.version import __version__

    return json.dumps({"name": "fused-celery", "version": __version__}).encode()


def _sample_is_ours(url: str) -> bool:
    """Whether the ``_sample`` of ``url`` was written by fused-celery (carries KEY_WRITER)."""
    try:
        with storage.open_input_file(_sample_url(url)) as f:
            kv = pq.ParquetFile(f).schema_arrow.metadata or {}
    except (OSError, ValueError, pa.ArrowException):
        return False
    return written_by_us(kv)


def _marker_run_id(marker_url: str) -> str | None:
    try:
        data = json.loads(storage.read_bytes(marker_url))
    except (OSError, ValueError):
        return None
    return data.get("run_id") if isinstance(data, dict) else None


def _marker_is_ours(marker_url: str) -> bool:
    """Whether the ``_staging/_writing`` marker at ``marker_url`` was written by fused-celery:
    ``{"writer": "fused-celery", "run_id": ...}``, or ``{"run_id": ...}`` (earlier versions)."""
    try:
        data = json.loads(storage.read_bytes(marker_url))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        return False
    return data.get("writer") == "fused-celery" or set(data) == {"run_id"}


def _is_parent(folder: str, url: str) -> bool:
    sep = "/" if folder.startswith("s3://") else os.sep
    return url.startswith(folder.rstrip(sep) + sep)


def _metadata_key(chunks: Iterable[ChunkMetadata]) -> str:
    return json.dumps([c.model_dump() for c in chunks], sort_keys=True)


def _same_crs(keys: Sequence[str]) -> bool:
    """Whether PROJJSON texts (from :func:`_primary_crs_key`) name one CRS. Texts can differ for
    one CRS: PROJ versions write EPSG:4326's datum as ``datum`` or ``datum_ensemble``."""
    crss = [_crs_from_json(json.loads(k)) for k in keys]
    return all(c == crss[0] or (c is not None and c.equals(crss[0], ignore_axis_order=True))
               for c in crss)  # fmt: skip


def _primary_crs_key(schema: pa.Schema) -> str:
    geo = _geo_from_schema(schema) or {}
    col = geo.get("columns", {}).get(geo.get("primary_column"), {})
    return json.dumps(col.get("crs"), sort_keys=True)


def _check_layout(metas: Sequence[ChunkMetadata]) -> list[str]:
    """The file ids of ``metas``; each file's chunk_ids must be 0..n-1 without repeats."""
    by_file: dict[str, list[int]] = {}
    for c in metas:
        validate_name(c.file_id, "file_id")
        by_file.setdefault(c.file_id, []).append(c.chunk_id)
    for fid, ids in by_file.items():
        if sorted(ids) != list(range(len(ids))):
            raise ValueError(
                f"chunk metadata of file {fid!r} has chunk_ids {ids}; expected 0..{len(ids) - 1} "
                "once each (pass each file's write_file result exactly once)"
            )
    return sorted(by_file)


def _merge_geo_columns(facts: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for f in facts:
        for name, info in f["columns"].items():
            m = merged.setdefault(name, {"geometry_types": set(), "bbox": None, "crs": f["crs"]})
            m["geometry_types"].update(info["geometry_types"])
            b = info["bbox"]
            if b is not None:
                m["bbox"] = (
                    list(b)
                    if m["bbox"] is None
                    else [
                        min(m["bbox"][0], b[0]),
                        min(m["bbox"][1], b[1]),
                        max(m["bbox"][2], b[2]),
                        max(m["bbox"][3], b[3]),
                    ]
                )
    for m in merged.values():
        m["geometry_types"] = sorted(m["geometry_types"])
    return merged


def _sample_geo(table: pa.Table, geo: Mapping[str, Any]) -> dict[str, Any]:
    """``geo`` recomputed for the rows of ``table`` (types and bbox of the sample)."""
    import shapely

    columns: dict[str, dict[str, Any]] = {}
    for name, info in geo.get("columns", {}).items():
        if name not in table.column_names:
            continue
        geoms = shapely.from_wkb(table.column(name).to_numpy(zero_copy_only=False))
        bounds = shapely.bounds(geoms) if len(geoms) else np.empty((0, 4))
        ok = ~np.isnan(bounds).any(axis=1)
        columns[name] = {
            "geometry_types": geometry_types(geoms),
            "crs": info.get("crs"),
            "bbox": [
                bounds[ok, 0].min(),
                bounds[ok, 1].min(),
                bounds[ok, 2].max(),
                bounds[ok, 3].max(),
            ]
            if ok.any()
            else None,
        }
    return geo_metadata(
        columns,
        geo.get("primary_column", "geometry"),
        covering=COVERING_COLUMN in table.column_names,
    )


def _geometry_only_table() -> pa.Table:
    covering = pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])
    schema = pa.schema([("geometry", pa.binary()), (COVERING_COLUMN, covering)])
    geo = geo_metadata(
        {"geometry": {"geometry_types": [], "crs": _crs_json(None), "bbox": None}}, "geometry"
    )
    return schema.with_metadata({b"geo": json.dumps(geo).encode()}).empty_table()


def write_converted_file(
    fid: str,
    converted: Sequence[tuple[pa.Table, Mapping[str, Any]]],
    data_url: str,
    sample_url: str,
) -> list[ChunkMetadata]:
    """Data file ``fid`` at ``data_url`` (one row group per non-empty chunk, in order; none when
    every chunk is empty) and its sample sidecar at ``sample_url``, from chunks converted by
    :func:`~fused_celery.table.format.frame_to_arrow`; returns the chunks' metadata (chunk_ids
    0..n-1 over the non-empty chunks). The chunks must share a CRS."""
    converted = list(converted)
    if not converted:
        raise ValueError(f"write_file({fid!r}) got no chunks; pass at least one GeoDataFrame")
    crs = {json.dumps(f["crs"], sort_keys=True) for _, f in converted}
    if len(crs) > 1:
        raise ValueError(
            f"the chunks of file {fid!r} have different CRSs; reproject them to one "
            "(e.g. to_crs(4326)) before writing"
        )
    schema = _unify([t for t, _ in converted])
    primary = converted[0][1]["primary"]
    nonempty = [(t, f) for t, f in converted if t.num_rows]
    metas = [
        ChunkMetadata(**{**f["metadata"], "file_id": fid, "chunk_id": i})
        for i, (_, f) in enumerate(nonempty)
    ]
    facts = [f for _, f in (nonempty or converted)]
    geo = geo_metadata(_merge_geo_columns(facts), primary)
    schema = schema.with_metadata({b"geo": json.dumps(geo).encode()})
    tables = [_conform(t, schema) for t, _ in nonempty]
    if tables:
        with (
            storage.atomic_output(data_url) as out,
            pq.ParquetWriter(out, schema, **writer_options(schema)) as writer,
        ):
            for t in tables:
                writer.write_table(t, row_group_size=max(1, t.num_rows))
    else:
        storage.delete_file(data_url)
    sample = _sample_rows(tables, SAMPLE_ROWS_PER_FILE) if tables else schema.empty_table()
    storage.write_bytes(sample_url, _parquet_bytes(sample), durable=False)
    return metas


def _sample_rows(tables: Sequence[pa.Table], k: int) -> pa.Table:
    """``k`` rows spread evenly over the rows of ``tables`` (in order), taken from each table
    apart: a ``take`` over their concatenation would copy every row's WKB first."""
    offsets = np.cumsum([0, *(t.num_rows for t in tables)])
    picks = evenly_spaced(int(offsets[-1]), k)
    which = np.searchsorted(offsets, picks, side="right") - 1
    parts = [
        t.take(picks[which == i] - offsets[i]) for i, t in enumerate(tables) if (which == i).any()
    ]
    return pa.concat_tables(parts) if parts else tables[0].schema.empty_table()


def writer_options(schema: pa.Schema) -> dict[str, Any]:
    """ParquetWriter options of data files: snappy (pyarrow's default, twice as fast as zstd)
    but for the ``bbox`` covering's coordinates, which are stored as they are (doubles that
    snappy does not shrink: the same file size, ~10 % less write time for points);
    dictionary encoding for string columns only (WKB and floats gain nothing from it and it
    doubles the write time); statistics for every column but the WKB geometries (the ``bbox``
    covering's min/max drive row-group pruning)."""
    geo = _geo_from_schema(schema) or {}
    wkb = set(geo.get("columns", {}))
    strings = [
        f.name
        for f in schema
        if pa.types.is_string(f.type)
        or pa.types.is_large_string(f.type)
        or pa.types.is_dictionary(f.type)
    ]
    leaves = [(f.name, path) for f in schema for path in _leaf_paths(f)]
    stats = [path for name, path in leaves if name not in wkb]
    compression = {
        path: "none" if name == COVERING_COLUMN and path != name else COMPRESSION
        for name, path in leaves
    }
    return {"compression": compression, "use_dictionary": strings, "write_statistics": stats}


def _leaf_paths(field: pa.Field, prefix: str = "") -> list[str]:
    name = f"{prefix}{field.name}"
    if pa.types.is_struct(field.type):
        return [p for i in range(field.type.num_fields)
                for p in _leaf_paths(field.type.field(i), f"{name}.")]  # fmt: skip
    return [name]


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=COMPRESSION)
    return sink.getvalue()


#: Threads of the storage calls a commit makes at once (reads, moves, deletes).
IO_THREADS = 16

_io_executor: tuple[int, ThreadPoolExecutor] | None = None  # (pid, executor)
_io_lock = threading.Lock()


def _io_pool() -> ThreadPoolExecutor:
    """This process's executor of storage calls, made once per process (a commit used to start
    up to 16 threads for each of its parallel steps: about 1 ms per thread on a 2-CPU VM). A
    forked child makes its own: the parent's threads do not exist there."""
    global _io_executor
    with _io_lock:
        if _io_executor is None or _io_executor[0] != os.getpid():
            pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="fused-table-io")
            _io_executor = (os.getpid(), pool)
        return _io_executor[1]


def _parallel(fn: Any, items: Sequence[Any]) -> list[Any]:
    """``[fn(i) for i in items]`` on :func:`_io_pool` (``fn`` must not call this again)."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    return list(_io_pool().map(fn, items))


def _as_files(data: Any) -> dict[str, list[gpd.GeoDataFrame]]:
    import geopandas as gpd

    if isinstance(data, gpd.GeoDataFrame):
        return {"0": [data]}
    if isinstance(data, Mapping):
        return {
            str(k): ([v] if isinstance(v, gpd.GeoDataFrame) else list(v)) for k, v in data.items()
        }
    return {
        str(i): ([v] if isinstance(v, gpd.GeoDataFrame) else list(v)) for i, v in enumerate(data)
    }


def write_table(
    url: str,
    data: gpd.GeoDataFrame
    | Mapping[str | int, gpd.GeoDataFrame | Sequence[gpd.GeoDataFrame]]
    | Sequence[gpd.GeoDataFrame | Sequence[gpd.GeoDataFrame]],
    *,
    overwrite: bool = False,
    run_id: str = "default",
) -> Table:
    """Write a whole table from this process and commit it.

    data: one GeoDataFrame (file ``"0"``, one chunk); a mapping ``file_id -> chunks`` (a
    GeoDataFrame or a list, one row group each); or a list of files (ids ``"0"``, ``"1"``, ...).
    overwrite / run_id: as for :class:`TableWriter`. Returns the opened :class:`Table`.
    """
    writer = TableWriter(url, overwrite=overwrite, run_id=run_id)
    files = _as_files(data)
    metas: list[ChunkMetadata] = []
    for fid, chunks in files.items():
        metas.extend(writer.write_file(fid, chunks))
    return writer.commit(metas)
