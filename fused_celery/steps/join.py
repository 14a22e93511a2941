"""The spatial join steps of seed 000: ``JoinJobStepConfig`` (``fused.join(left, right, ...)``:
two tables) and ``JoinSinglefileJobStepConfig`` (``fused.join_singlefile(left, right_file_url,
...)``: a table and one file).

Each left chunk meets only the right rows it can match: for a right table, the rows of the right
chunks whose bboxes intersect the left chunk's bbox grown by ``buffer_distance`` metres
(:mod:`fused_celery.steps.overlap`); for a single file, the whole file (or, with
``right_bbox_filter``, its rows in that grown bbox). The UDF's first two parameters (other than
``metadata``) receive ``(left, right)`` GeoDataFrames, right reprojected to left's CRS; a
``metadata`` parameter receives the left chunk's ``{file_id, chunk_id, bbox, num_rows}`` and
``right_chunks`` (the right chunks read, ``[file_id, chunk_id]`` each). Without a UDF the step
joins itself (:func:`fused_celery.steps.join_frames.spatial_join`: ``how``, predicate
``intersects``, or within ``buffer_distance`` metres). The output keeps the left table's
file/chunk layout. The stages (the map step's, with the join's chunk) are in
:mod:`fused_celery.steps.join_stages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, PrivateAttr, StrictBool, field_validator

from fused_celery.errors import StepInputError, StepUdfError
from fused_celery.steps.base import UdfStepConfig, call_udf, coerce_udf
from fused_celery.steps.map import METADATA_PARAMETER, MapJobStepConfig, input_url
from fused_celery.steps.overlap import check_buffer_distance
from fused_celery.udf import Udf

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = [
    "JoinInput",
    "JoinJobStepConfig",
    "JoinSinglefileJobStepConfig",
    "join_parameters",
    "join_singlefile",
    "join_tables",
]


def join_parameters(udf: Udf) -> tuple[str, str, bool]:
    """``(left parameter, right parameter, whether the UDF takes metadata)``; a
    :class:`StepUdfError` when the UDF has fewer than two parameters for the frames."""
    params = [p for p in udf.signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = [p.name for p in params if p.kind is not p.KEYWORD_ONLY]
    frames = [n for n in names if n != METADATA_PARAMETER]
    if len(frames) < 2:
        raise StepUdfError(
            f"UDF {udf.name} takes {len(frames)} parameter(s) for the frames: a join UDF's first "
            f"two parameters receive the left and right GeoDataFrames (e.g. def "
            f"{udf.entrypoint}(left, right, metadata=None)); add them"
        )
    return frames[0], frames[1], any(p.name == METADATA_PARAMETER for p in params)


def join_kwargs(udf: Udf, left: Any, right: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a join ``udf`` on ``(left, right)`` with ``metadata``."""
    a, b, wants_metadata = join_parameters(udf)
    kwargs = {a: left, b: right}
    if wants_metadata:
        kwargs[METADATA_PARAMETER] = metadata
    return kwargs


@dataclass
class JoinInput:
    """What a join UDF receives for one left chunk: ``left`` and ``right`` GeoDataFrames and the
    ``metadata``; unpacks as ``left, right = sample``."""

    left: Any
    right: Any
    metadata: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Any:
        return iter((self.left, self.right))


#: The seed's name of a single-file join's sample.
JoinSingleFileInput = JoinInput


class _JoinStep(UdfStepConfig):
    """What the two join steps share (fields and methods; see the subclasses)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    input_left: str | None = None
    input_right: str | None = None
    output: str | None = None
    overwrite: StrictBool = False
    how: Literal["inner", "left"] = "inner"
    buffer_distance: float | None = None
    chunks_per_task: int | None = Field(default=None, ge=1)

    _samples: dict[tuple[str, int], Any] = PrivateAttr(default_factory=dict)
    _right_kind: ClassVar[str] = "table"

    @field_validator("udf", mode="before")
    @classmethod
    def _coerce_udf(cls, value: Any) -> Any:
        found = coerce_udf(value)
        if found is not None:
            join_parameters(found)
        return found

    @field_validator("input_left", mode="before")
    @classmethod
    def _coerce_left(cls, value: Any) -> Any:
        return input_url(value)

    @field_validator("buffer_distance", mode="before")
    @classmethod
    def _check_distance(cls, value: Any) -> Any:
        return None if value is None else check_buffer_distance(value)

    def __eq__(self, other: object) -> bool:  # the sample cache is not part of the step
        return type(other) is type(self) and self.model_dump() == other.model_dump()  # type: ignore[union-attr]

    __hash__ = None  # type: ignore[assignment]

    # what the map step's stages read of a step
    @property
    def input(self) -> str | None:
        """The left table (the map step's stages read the chunks of ``input``)."""
        return self.input_left

    @property
    def distance(self) -> float:
        """``buffer_distance`` in metres, 0.0 when None."""
        return check_buffer_distance(self.buffer_distance)

    # --- configuration ----------------------------------------------------------------------

    @property
    def input_metadata(self) -> gpd.GeoDataFrame:
        """The left table's chunks, one row each (see ``MapJobStepConfig.input_metadata``)."""
        from fused_celery.table import get_chunks_metadata

        return get_chunks_metadata(self._left())

    def set_input(
        self, input_left: Any = None, input_right: Any = None, *, inplace: bool = False
    ) -> Any:
        """This step reading ``input_left`` (a table URL, a Table or a step with an output) and
        ``input_right`` (default None / None: unchanged). inplace: change this object (default
        False: a copy)."""
        target = self if inplace else self.model_copy(deep=True)
        if input_left is not None:
            target.input_left = input_left
        if input_right is not None:
            target.input_right = input_right
        target._samples = {}
        return target

    def _check_udf(self, udf: Udf) -> None:
        """A join UDF takes ``(left, right)`` (:func:`join_parameters`)."""
        join_parameters(udf)

    def bind_inputs(self, outputs: list[str | None]) -> tuple[Any, bool]:
        """This step inside a ``JobConfig`` after steps writing ``outputs``: with neither input
        set, left and right are the outputs of the two steps before it (in order); with only the
        right set, left is the previous step's. Returns ``(step, bound)``."""
        if self.input_left is not None and self.input_right is not None:
            return self, False
        kind = self.type  # type: ignore[attr-defined]
        if self.input_left is None and self.input_right is None and self._right_kind == "table":
            if len(outputs) < 2 or outputs[-1] is None or outputs[-2] is None:
                raise StepInputError(
                    f"the {kind} step has no inputs and the two steps before it do not both "
                    "write a table; give it input_left and input_right (set_input(...))"
                )
            return self.model_copy(
                update={"input_left": outputs[-2], "input_right": outputs[-1]}
            ), True
        if self.input_left is None:
            if not outputs or outputs[-1] is None:
                raise StepInputError(
                    f"the {kind} step has no left input and no previous step writes a table; "
                    "set_input(input_left=...)"
                )
            return self.model_copy(update={"input_left": outputs[-1]}), True
        raise StepInputError(f"the {kind} step has no right input; set_input(input_right=...)")

    def _left(self) -> str:
        if self.input_left is None:
            raise StepInputError(
                "the join step has no left table; pass one to fused.join(...) or "
                "set_input(input_left=url)"
            )
        return self.input_left

    def _right(self) -> str:
        if self.input_right is None:
            raise StepInputError(
                "the join step has no right input; pass one to fused.join(...) or "
                "set_input(input_right=url)"
            )
        return self.input_right

    # --- samples and local runs -------------------------------------------------------------

    def get_sample(
        self,
        file_id: str | int | None = None,
        chunk_id: int | None = None,
        n_rows: int | None = None,
        use_cache: bool = True,
    ) -> JoinInput:
        """One left chunk and its matching right rows, as the UDF receives them.

        file_id: default None (the first file). chunk_id: default None (the file's first
        chunk). n_rows: at most this many left rows (default None: all). use_cache: reuse a
        sample read before by this object (default True)."""
        sample = self._sample(file_id, chunk_id, use_cache)
        if n_rows is None:
            return sample
        left = sample.left.iloc[: int(n_rows)]
        return JoinInput(left, sample.right, {**sample.metadata, "num_rows": len(left)})

    def _sample(
        self, file_id: str | int | None, chunk_id: int | None, use_cache: bool
    ) -> JoinInput:
        from fused_celery.steps.join_stages import join_input

        probe = MapJobStepConfig(input=self._left())
        probe._samples = {}
        left, meta = probe._sample(file_id, chunk_id, use_cache=False)
        key = (meta["file_id"], meta["chunk_id"])
        if use_cache and key in self._samples:
            return self._samples[key]
        self._right()
        found = join_input(self, left, meta, job_id=None)
        self._samples[key] = found
        return found

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
        """The step's output on one left chunk, in this process (the whole step on this machine
        is ``JobConfig(steps=[step]).run_local()``): the UDF's, or the join's when there is no
        UDF.

        file_id / chunk_id / n_rows / use_cache: the sample, as :meth:`get_sample`. sample: a
        :class:`JoinInput` or ``(left, right)`` to use instead (default None).
        validate_output: return the output as the table would store it, a GeoDataFrame
        (default True; a non-frame output raises
        :class:`~fused_celery.errors.StepOutputError`). validate_imports: unused (default None).
        kwargs: more keyword arguments of the UDF's call."""
        from fused_celery.steps.join_frames import spatial_join
        from fused_celery.steps.map_stages import output_frame

        del validate_imports
        if sample is None:
            found = self.get_sample(file_id, chunk_id, n_rows, use_cache)
        elif isinstance(sample, JoinInput):
            found = sample
        else:
            left, right = sample
            found = JoinInput(left, right, {"file_id": None, "chunk_id": None, "bbox": None,
                                            "num_rows": len(left), "right_chunks": []})  # fmt: skip
        where = f"chunk {found.metadata.get('file_id')}/{found.metadata.get('chunk_id')}"
        if self.udf is None:
            return spatial_join(found.left, found.right, how=self.how, distance_m=self.distance)
        call = {**kwargs, **join_kwargs(self.udf, found.left, found.right, found.metadata)}
        out = call_udf(self.udf, call, where=where)
        if not validate_output:
            return out
        return output_frame(out, getattr(found.left, "crs", None), where=where)

    def _show(self, path: Any = None, **kwargs: Any) -> Any:
        """The map of both inputs (:func:`fused_celery.maps.join_map.show_join`), the chunk
        pairs of the overlap plan highlighted; kwargs: passed on."""
        import numpy as np

        from fused_celery.maps.join_map import show_join
        from fused_celery.steps.overlap import overlap_pairs
        from fused_celery.table import open_table

        left = open_table(self._left())
        left_chunks = left.metadata_gdf
        lb = left_chunks[["bbox_minx", "bbox_miny", "bbox_maxx", "bbox_maxy"]].to_numpy()
        right_chunks = None
        if self._right_kind == "table":
            right = open_table(self._right())
            right_chunks, right_rows, total = right.metadata_gdf, right.sample, right.num_rows
            rb = right_chunks[["bbox_minx", "bbox_miny", "bbox_maxx", "bbox_maxy"]].to_numpy()
            rkeys = list(zip(right_chunks["file_id"], right_chunks["chunk_id"].astype(int)))
        else:
            from fused_celery.steps.join_stages import read_right_file

            right_rows = read_right_file(self._right())
            total = len(right_rows)
            wgs = right_rows if right_rows.crs is None else right_rows.to_crs(4326)
            rb = np.array([wgs.total_bounds]) if len(wgs) else np.empty((0, 4))
            rkeys = [("file", 0)]
        li, ri = overlap_pairs(lb, rb, self.distance)
        lkeys = list(zip(left_chunks["file_id"], left_chunks["chunk_id"].astype(int)))
        pairs = [(lkeys[i], rkeys[j]) for i, j in zip(li.tolist(), ri.tolist())]
        kwargs.setdefault("name", f"{left.name}-join")
        kwargs.setdefault("subtitle", f"{self._left()} with {self._right()}")
        return show_join(left_chunks, left.sample, right_chunks, right_rows, pairs, path,
                         right_total_rows=total, **kwargs)  # fmt: skip

    # --- the output -------------------------------------------------------------------------

    _output_url = MapJobStepConfig._output_url
    open_output = MapJobStepConfig.open_output
    get_output_chunk = MapJobStepConfig.get_output_chunk


class JoinJobStepConfig(_JoinStep):
    """A spatial join of two tables, one task per left chunk (batched when small).

    udf: the UDF of ``(left, right)`` (default None: the step joins itself). input_left /
    input_right: the tables' URLs (default None: in a ``JobConfig``, the outputs of the two
    steps before). output: the output table (default None). overwrite: replace an existing
    output (default False). how: ``"inner"`` (default) or ``"left"`` (keep unmatched left rows;
    for the built-in join). buffer_distance: metres a left chunk's bbox is grown by to find its
    right chunks, and the join's ``within`` distance (default None: 0, ``intersects``).
    chunks_per_task: as ``MapJobStepConfig`` (default None: batched by rows). name, metadata,
    ignore_chunk_error: as :class:`~fused_celery.jobs.step.JobStepConfig`.
    """

    type: Literal["join"] = "join"

    @field_validator("input_right", mode="before")
    @classmethod
    def _coerce_right(cls, value: Any) -> Any:
        return input_url(value)

    def show(
        self,
        dataset_config_left: Any = None,
        dataset_config_right: Any = None,
        app_config: Any = None,
        **kwargs: Any,
    ) -> Any:
        """An offline HTML map of both tables: their chunks' bboxes and sample rows, the chunk
        pairs the join reads highlighted (:func:`fused_celery.maps.join_map.show_join`).
        dataset_config_left / dataset_config_right / app_config: unused (default None);
        kwargs: passed on (``path``, ``sample_rows``, ``title``, ``tiles``)."""
        del dataset_config_left, dataset_config_right, app_config
        return self._show(**kwargs)


class JoinSinglefileJobStepConfig(_JoinStep):
    """A spatial join of a table with one file (GeoParquet, or a GDAL format: GeoJSON,
    GeoPackage, Shapefile, FlatGeobuf, ...), read once per worker and cached.

    input_right: the file's URL or path. right_bbox_filter: give each left chunk only the right
    rows whose bbox meets its bbox grown by ``buffer_distance`` (default False: the whole file,
    as the seed says). The other fields as :class:`JoinJobStepConfig`. A file larger than
    ``options.join_cache_bytes`` (``FUSED_CELERY_JOIN_CACHE_BYTES``) is refused.
    """

    type: Literal["join_singlefile"] = "join_singlefile"
    right_bbox_filter: StrictBool = False
    _right_kind: ClassVar[str] = "file"

    @field_validator("input_right", mode="before")
    @classmethod
    def _coerce_right(cls, value: Any) -> Any:
        import os

        if value is None or isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise StepInputError(
            f"join_singlefile's right input must be a file URL or path, not {type(value).__name__}"
        )

    def show(self, dataset_config: Any = None, **kwargs: Any) -> Any:
        """An offline HTML map of the left table and the right file (rows of both, the left
        chunks that meet the file highlighted). dataset_config: unused (default None); kwargs:
        passed on (``path``, ``sample_rows``, ``title``, ``tiles``)."""
        del dataset_config
        return self._show(**kwargs)


def join_tables(
    left: Any,
    right: Any,
    udf: Any = None,
    *,
    how: Literal["inner", "left"] = "inner",
    buffer_distance: float | None = None,
    output_table: str | None = None,
    **kwargs: Any,
) -> JoinJobStepConfig:
    """``fused.join``: the join step of ``left`` and ``right`` tables (URLs, Tables or steps
    with an output; None: bound in a JobConfig). udf: of ``(left, right)`` (default None: the
    built-in join). how: ``"inner"`` or ``"left"`` (default ``"inner"``). buffer_distance:
    metres (default None: intersects). output_table: default None. kwargs: the step's other
    fields (``overwrite``, ``chunks_per_task``, ``ignore_chunk_error``, ``name``,
    ``metadata``). A bad ``buffer_distance`` or UDF raises here."""
    check_buffer_distance(buffer_distance)
    return JoinJobStepConfig(
        input_left=left, input_right=right, udf=udf, how=how,
        buffer_distance=buffer_distance, output=output_table, **kwargs,
    )  # fmt: skip


def join_singlefile(
    left: Any,
    right_file_url: Any,
    udf: Any = None,
    *,
    how: Literal["inner", "left"] = "inner",
    buffer_distance: float | None = None,
    output_table: str | None = None,
    **kwargs: Any,
) -> JoinSinglefileJobStepConfig:
    """``fused.join_singlefile``: the join of table ``left`` with the file ``right_file_url``;
    the other arguments as :func:`join_tables` (plus ``right_bbox_filter``)."""
    check_buffer_distance(buffer_distance)
    return JoinSinglefileJobStepConfig(
        input_left=left, input_right=right_file_url, udf=udf, how=how,
        buffer_distance=buffer_distance, output=output_table, **kwargs,
    )  # fmt: skip
