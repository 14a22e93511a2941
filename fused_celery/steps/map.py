"""``MapJobStepConfig`` (seed 000) and ``fused.map(table, udf=..., output_table=...)``: a UDF
run once per chunk of a table, its outputs written to a table with the input's file/chunk layout.

The UDF's first parameter (other than ``metadata``) receives the chunk as a GeoDataFrame (its
CRS kept); a ``metadata`` parameter receives ``{file_id, chunk_id, bbox, num_rows}``. The stages
that run it on the cluster or this machine are in :mod:`fused_celery.steps.map_stages`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, PrivateAttr, StrictBool, field_validator

from fused_celery.errors import StepInputError, StepUdfError
from fused_celery.steps.base import UdfStepConfig, call_udf, require_udf
from fused_celery.udf import Udf

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd

    from fused_celery.maps.output import MapFile
    from fused_celery.table import Table

METADATA_PARAMETER = "metadata"


def frame_parameter(udf: Udf) -> tuple[str, bool]:
    """``(name of the parameter receiving the chunk, whether the UDF takes metadata)``; a
    :class:`StepUdfError` when no parameter can receive the chunk."""
    params = [p for p in udf.signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = [p.name for p in params if p.kind is not p.KEYWORD_ONLY]
    frame = [n for n in names if n != METADATA_PARAMETER]
    if not frame:
        raise StepUdfError(
            f"UDF {udf.name} takes no parameter for the chunk: a map UDF's first parameter "
            f"receives each chunk as a GeoDataFrame (e.g. def {udf.entrypoint}(gdf, "
            "metadata=None)); add one"
        )
    return frame[0], any(p.name == METADATA_PARAMETER for p in params)


def chunk_kwargs(udf: Udf, frame: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``udf`` on one chunk ``frame`` with its ``metadata``."""
    name, wants_metadata = frame_parameter(udf)
    kwargs = {name: frame}
    if wants_metadata:
        kwargs[METADATA_PARAMETER] = metadata
    return kwargs


def input_url(value: Any) -> Any:
    """A table URL from a URL/path, a :class:`~fused_celery.table.Table` or a step with an
    ``output`` (its output table); None stays None."""
    import os

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    url = getattr(value, "url", None) or getattr(value, "output", None)
    if isinstance(url, str):
        return url
    raise StepInputError(
        f"a map step's input must be a table URL, a Table or a step with an output, not "
        f"{type(value).__name__}"
    )


class MapJobStepConfig(UdfStepConfig):
    """A UDF mapped over the chunks of a table.

    udf: the UDF (default None: :meth:`set_udf`). input: the table's URL (default None: the
    previous step's output in a ``JobConfig``). output: the output table's URL (default None).
    overwrite: replace an existing output table (default False). chunks_per_task: chunks one
    task runs (default None: consecutive chunks share a task until it has
    :data:`~fused_celery.steps.map_stages.TASK_ROWS` rows, so a big chunk runs alone and small
    ones are batched, at most :data:`~fused_celery.steps.map_stages.MAX_CHUNKS_PER_TASK`).
    name, metadata, ignore_chunk_error: as :class:`~fused_celery.jobs.step.JobStepConfig`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    type: Literal["map"] = "map"
    input: str | None = None
    output: str | None = None
    overwrite: StrictBool = False
    chunks_per_task: int | None = Field(default=None, ge=1)

    _samples: dict[tuple[str, int], Any] = PrivateAttr(default_factory=dict)
    #: The UDF of a step run without one (``ignore_no_udf``): each chunk passes through.
    _identity_udf: ClassVar[str] = "def identity(gdf):\n    return gdf\n"

    def __eq__(self, other: object) -> bool:  # the sample cache is not part of the step
        return isinstance(other, MapJobStepConfig) and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    @field_validator("input", mode="before")
    @classmethod
    def _coerce_input(cls, value: Any) -> Any:
        return input_url(value)

    # --- configuration ----------------------------------------------------------------------

    @property
    def input_metadata(self) -> gpd.GeoDataFrame:
        """The input table's chunks, one row each (``file_id, chunk_id, bbox_*, num_rows``,
        ...; see :func:`~fused_celery.table.get_chunks_metadata`)."""
        from fused_celery.table import get_chunks_metadata

        return get_chunks_metadata(self._input())

    def set_input(self, input: Any = None, *, inplace: bool = False) -> MapJobStepConfig:
        """This step reading ``input`` (a table URL, a Table or a step with an output; default
        None: the previous step's output in a job). inplace: change this object (default
        False: a copy)."""
        return self._set_input(input, inplace)

    def _input_changed(self) -> None:
        self._samples = {}

    def _check_udf(self, udf: Udf) -> None:
        frame_parameter(udf)

    def _input(self) -> str:
        if self.input is None:
            raise StepInputError(
                f"map step {self.name or ''} has no input table; pass one to fused.map(...) or "
                "set_input(url) (in a JobConfig, a step after another reads its output)"
            )
        return self.input

    # --- samples and local runs -------------------------------------------------------------

    def get_sample(
        self,
        file_id: str | int | None = None,
        chunk_id: int | None = None,
        n_rows: int | None = None,
        use_cache: bool = True,
    ) -> gpd.GeoDataFrame:
        """One chunk of the input, as the UDF receives it.

        file_id: default None (the first file). chunk_id: default None (the file's first
        chunk). n_rows: at most this many rows (default None: all). use_cache: reuse a chunk
        read before by this object (default True)."""
        frame, _ = self._sample(file_id, chunk_id, use_cache)
        return frame if n_rows is None else frame.iloc[: int(n_rows)]

    def _sample(
        self, file_id: str | int | None, chunk_id: int | None, use_cache: bool
    ) -> tuple[Any, dict[str, Any]]:
        from fused_celery.steps.map_stages import chunk_metadata_dict, read_chunk
        from fused_celery.table import read_chunk_metadata

        url = self._input()
        chunks = read_chunk_metadata(url)
        if not chunks:
            raise StepInputError(f"input table {url} is empty (no chunks); nothing to sample")
        fid = chunks[0].file_id if file_id is None else str(file_id)
        in_file = [c for c in chunks if c.file_id == fid] or chunks[:0]
        cid = (in_file[0].chunk_id if in_file else 0) if chunk_id is None else int(chunk_id)
        meta = next((c for c in in_file if c.chunk_id == cid), None)
        if meta is None:
            from fused_celery.errors import ChunkNotFoundError

            raise ChunkNotFoundError(f"chunk {fid}/{cid} is not in table {url}")
        key = (fid, cid)
        if use_cache and key in self._samples:
            return self._samples[key], chunk_metadata_dict(meta)
        frame = read_chunk(url, chunk_metadata_dict(meta))
        self._samples[key] = frame
        return frame, chunk_metadata_dict(meta)

    def run_local(  # type: ignore[override]
        self,
        file_id: str | int | None = None,
        chunk_id: int | None = None,
        n_rows: int | None = None,
        sample: Any | None = None,
        validate_output: bool = True,
        validate_imports: bool | None = None,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> Any:
        """The UDF's output on one sample chunk, in this process (the whole step on this
        machine is ``JobConfig(steps=[step]).run_local()``).

        file_id / chunk_id / n_rows / use_cache: the sample, as :meth:`get_sample`. sample: a
        frame to use instead (default None). validate_output: return the output as the table
        would store it, a GeoDataFrame (default True; a non-frame output raises
        :class:`~fused_celery.errors.StepOutputError`). validate_imports: first check that the
        UDF's imports resolve (default None: no check). kwargs: more keyword arguments of the
        call."""
        from fused_celery.steps.map_stages import output_frame

        udf = require_udf(self)
        if validate_imports:
            from fused_celery.jobs.run_options import check_imports

            check_imports(self, udf)
        if sample is not None:
            meta = {"file_id": None, "chunk_id": None, "bbox": None, "num_rows": len(sample)}
            frame = sample
        else:
            frame, meta = self._sample(file_id, chunk_id, use_cache)
        if n_rows is not None:
            frame = frame.iloc[: int(n_rows)]
            meta = {**meta, "num_rows": len(frame)}
        where = f"chunk {meta['file_id']}/{meta['chunk_id']}"
        out = call_udf(udf, {**kwargs, **chunk_kwargs(udf, frame, meta)}, where=where)
        if not validate_output:
            return out
        return output_frame(out, getattr(frame, "crs", None), where=where)

    # --- the output -------------------------------------------------------------------------

    def _output_url(self) -> str:
        if self.output is None:
            raise StepInputError("this map step has no output table; set_output(url) first")
        return self.output

    def open_output(self, **kwargs: Any) -> Table:
        """The committed output table (kwargs: unused, for the SDK's signature)."""
        from fused_celery.table import open_table

        del kwargs
        return open_table(self._output_url())

    def get_output_chunk(
        self, file_id: str | int | None = None, chunk_id: int | None = None
    ) -> pd.DataFrame:
        """One chunk of the output table (default None / None: its first chunk; a file_id alone:
        that file's first chunk)."""
        table = self.open_output()
        if not table.chunk_metadata:
            raise StepInputError(f"output table {table.url} is empty (no chunks)")
        fid = table.chunk_metadata[0].file_id if file_id is None else str(file_id)
        return table.get_chunk(fid, 0 if chunk_id is None else int(chunk_id))

    def show(self, dataset_config: dict[str, Any] | None = None, **kwargs: Any) -> MapFile:
        """An offline HTML map of the committed output table (chunk bboxes coloured by file, a
        sample of rows, a legend): :meth:`Table.show <fused_celery.table.Table.show>`, i.e.
        :func:`fused_celery.maps.table_map.show_table`. Returns the ``MapFile`` (``.path``;
        inline in Jupyter).

        dataset_config: the map's options as a dict (``path``, ``sample_rows``, ``title``,
        ``tiles``, ``tiles_attribution``; default None), kwargs: the same, taking precedence.
        The title defaults to the step's name, else the table's. An unknown option is a
        ``TypeError`` listing the known ones; an output not committed yet a
        :class:`~fused_celery.errors.StepInputError`.
        """
        import inspect

        from fused_celery.errors import TableNotFoundError
        from fused_celery.maps.table_map import show_table

        if dataset_config is not None and not isinstance(dataset_config, dict):
            raise TypeError(
                f"dataset_config must be a dict of map options, not {type(dataset_config).__name__}"
            )
        given = {**(dataset_config or {}), **kwargs}
        known = [p for p in inspect.signature(show_table).parameters if p != "table"]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise TypeError(f"unknown map option(s) {unknown}; known: {', '.join(known)}")
        if self.name and "title" not in given:
            given["title"] = self.name
        try:
            table = self.open_output()
        except TableNotFoundError as exc:
            raise StepInputError(
                f"the output of this map step is not committed yet ({exc}); run the step first "
                "(run_remote().wait_for_job(), or JobConfig(steps=[step]).run_local())"
            ) from exc
        return show_table(table, **given)


def map_table(
    table: Any, udf: Any = None, output_table: str | None = None, **kwargs: Any
) -> MapJobStepConfig:
    """``fused.map``: the map step of ``udf`` over the chunks of ``table`` (a URL, a Table or a
    step with an output; None: the previous step's in a job), writing ``output_table`` (default
    None: give it to ``run_remote`` / ``set_output``). kwargs: the step's other fields
    (``overwrite``, ``chunks_per_task``, ``ignore_chunk_error``, ``name``, ``metadata``)."""
    step = MapJobStepConfig(input=table, udf=udf, output=output_table, **kwargs)
    if step.udf is not None:
        frame_parameter(step.udf)
    return step
