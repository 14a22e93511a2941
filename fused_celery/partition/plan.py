"""Planning a partitioned table: recursive kd-tree splitting of weighted centroids.

Pure numpy: no I/O, no Celery. :func:`plan_partitions` takes one centroid per row (``x``, ``y``
in EPSG:4326 degrees) and the row's measure (``weight``: 1 for ``rows``, its area, length or
coordinate count) and splits the rows into files, then each file into chunks:

- a node is split while its measure is over the maximum (``max_per_file`` at file level,
  ``max_per_chunk`` inside a file), or when ``force_utm`` requires it (see below);
- the split axis is x when the node's centroid bbox is wider than ``max_width_ratio`` × its
  height, y when it is taller than ``max_height_ratio`` × its width, and otherwise alternates
  (x at even depths, y at odd ones), as in a classic kd-tree;
- the split value is the weight-weighted ``mean`` or ``median`` of the coordinate;
- a node whose rows all share one centroid is split (when ``split_identical_centroids``) by a
  deterministic hash of the row ids into halves of equal measure, so the split can be replayed on
  other rows with :meth:`PartitionPlan.route`; a node of one row is never split.

A node is a leaf once within its maximum, so every file and chunk is within its maximum unless it
is a single row, or rows with one centroid and ``split_identical_centroids=False``.

``force_utm``: ``"file"`` splits at UTM zone boundaries (6° of longitude, and the equator) before
anything else, so no file (hence no chunk) spans two zones; ``"chunk"`` does so inside each file,
so no chunk spans two zones; None never does.

Defaults of the maxima (:func:`resolve_maxima`): None → 1/10 of the total measure per file (the
seed's and the reference's rule), and per chunk 1/100 of the total (the seed's rule) — or
``1/target_num_chunks`` of it when ``target_num_chunks`` is below 100. The seed calls
``target_num_chunks`` "the target for the number of chunks if partitioning_maximum_per_file is
None" and the reference SDK uses it as a target number of *files*; both conflict with the
documented 1/10 and 1/100 defaults, which we keep. So ``target_num_chunks`` (default 500) only
ever makes the derived per-chunk maximum coarser, never finer: it caps the number of chunks
aimed at when ``partitioning_maximum_per_chunk`` is None, and has no effect when that is given.

The result is a :class:`PartitionPlan`: each row's ``file_index`` / ``chunk_index`` and the
planned chunks in kd order (spatially close chunks get close ids), plus the split tree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np

SplitMethod = Literal["mean", "median"]
ForceUtm = Literal["file", "chunk"] | None

LEAF = -1
"""``PartitionTree.axis`` of a leaf (a chunk)."""
AXIS_X, AXIS_Y, AXIS_HASH = 0, 1, 2
"""Split axes: longitude, latitude, and the row-id hash used to split identical centroids."""

_GOLDEN = 0.6180339887498949
DEFAULT_FILE_FRACTION = 10
DEFAULT_CHUNK_FRACTION = 100


def resolve_maxima(
    total: float,
    max_per_file: float | None = None,
    max_per_chunk: float | None = None,
    target_num_chunks: int = 500,
) -> tuple[float, float]:
    """``(max_per_file, max_per_chunk)`` with None replaced by the defaults.

    total: the total measure of all rows. max_per_file: None → ``total / 10``. max_per_chunk:
    None → ``total / min(100, target_num_chunks)``. Given values must be > 0 (ValueError).
    """
    if target_num_chunks < 1:
        raise ValueError(f"target_num_chunks must be >= 1, got {target_num_chunks}")
    for name, value in (("max_per_file", max_per_file), ("max_per_chunk", max_per_chunk)):
        if value is not None and not (value > 0 and np.isfinite(value)):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    total = float(total)
    per_file = float(max_per_file) if max_per_file is not None else total / DEFAULT_FILE_FRACTION
    if max_per_chunk is not None:
        per_chunk = float(max_per_chunk)
    else:
        per_chunk = total / min(DEFAULT_CHUNK_FRACTION, int(target_num_chunks))
    return per_file, per_chunk


def row_hash(ids: np.ndarray) -> np.ndarray:
    """Deterministic values in [0, 1) spread evenly over integer row ids (Weyl sequence)."""
    v = np.asarray(ids, dtype=np.float64) * _GOLDEN
    return v - np.floor(v)


def utm_zone_ids(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """UTM zone of each point as ``zone0 * 2 + south``: ``zone0`` in 0..59 (6° bands from
    -180°), ``south`` 1 below the equator."""
    zone = np.clip(np.floor((np.asarray(x, float) + 180.0) / 6.0), 0, 59).astype(np.int64)
    return zone * 2 + (np.asarray(y, float) < 0)


@dataclass(frozen=True)
class PartitionTree:
    """The split tree, node 0 the root; arrays indexed by node.

    axis: :data:`LEAF`, :data:`AXIS_X`, :data:`AXIS_Y` or :data:`AXIS_HASH`; value: the split
    (rows with coordinate < value go ``left``); left / right: child nodes (-1 for leaves);
    file_index / chunk_index: the chunk of a leaf (-1 elsewhere).
    """

    axis: np.ndarray
    value: np.ndarray
    left: np.ndarray
    right: np.ndarray
    file_index: np.ndarray
    chunk_index: np.ndarray

    def route(
        self, x: np.ndarray, y: np.ndarray, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(file_index, chunk_index)`` of points ``x``, ``y`` (row ids ``ids``, default
        ``0..n-1``, only used by identical-centroid splits), following the splits.

        Through :attr:`grid` when the tree has one: two binary searches and a lookup per point;
        points in a cell under an identical-centroid split, and every point of a tree without a
        grid, go down the tree."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        n = len(x)
        if len(self.axis) == 0:
            return np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        grid = self.grid
        if grid is None:
            leaf = self._descend(x, y, ids, np.arange(n))
        else:
            xs, ys, cells = grid
            leaf = cells[search_right(xs, x), search_right(ys, y)]
            rest = np.flatnonzero(leaf < 0)
            if len(rest):
                leaf = leaf.astype(np.int64)
                leaf[rest] = self._descend(x, y, ids, rest)
        return self.file_index[leaf], self.chunk_index[leaf]

    def _descend(
        self, x: np.ndarray, y: np.ndarray, ids: np.ndarray | None, rows: np.ndarray
    ) -> np.ndarray:
        """The leaf of each of ``rows``, depth first, each node partitioning its rows."""
        n = len(x)
        h: np.ndarray | None = None
        leaf = np.empty(n, dtype=np.int64)
        stack = [(0, rows)]
        while stack:
            node, idx = stack.pop()
            ax = self.axis[node]
            if ax == LEAF or not len(idx):
                leaf[idx] = node
                continue
            if ax == AXIS_X:
                v = x[idx]
            elif ax == AXIS_Y:
                v = y[idx]
            else:
                if h is None:
                    h = row_hash(np.arange(n) if ids is None else ids)
                v = h[idx]
            go_left = v < self.value[node]
            stack.append((int(self.right[node]), idx[~go_left]))
            stack.append((int(self.left[node]), idx[go_left]))
        return leaf[rows]

    @functools.cached_property
    def grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(xs, ys, cells)``: the sorted distinct x and y split values, and the leaf of each
        grid cell (cell ``(i, j)`` spans ``xs[i - 1] <= x < xs[i]``, ``ys[j - 1] <= y < ys[j]``;
        every split line is a grid line, so a cell lies in one leaf), -1 where an
        identical-centroid split decides. None when the grid would exceed
        :data:`MAX_GRID_CELLS` cells."""
        xs = np.unique(self.value[self.axis == AXIS_X])
        ys = np.unique(self.value[self.axis == AXIS_Y])
        if (len(xs) + 1) * (len(ys) + 1) > MAX_GRID_CELLS:
            return None
        cells = np.full((len(xs) + 1, len(ys) + 1), -1, dtype=np.int32)
        # (node, first and last+1 cell in x, in y)
        stack = [(0, 0, len(xs) + 1, 0, len(ys) + 1)]
        while stack:
            node, x0, x1, y0, y1 = stack.pop()
            ax = self.axis[node]
            if ax == LEAF:
                cells[x0:x1, y0:y1] = node
            elif ax in (AXIS_X, AXIS_Y):
                lines = xs if ax == AXIS_X else ys
                cut = int(np.searchsorted(lines, self.value[node])) + 1  # first cell >= value
                left, right = int(self.left[node]), int(self.right[node])
                if ax == AXIS_X:
                    stack += [(left, x0, min(cut, x1), y0, y1), (right, max(cut, x0), x1, y0, y1)]
                else:
                    stack += [(left, x0, x1, y0, min(cut, y1)), (right, x0, x1, max(cut, y0), y1)]
            # an identical-centroid split: its cells stay -1 (its rows go down the tree)
        return xs, ys, cells


def search_right(lines: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``np.searchsorted(lines, v, side="right")`` (``lines`` sorted, finite) for many values,
    several times faster: each value's answer is guessed from a table over
    :data:`SEARCH_BUCKETS` equal buckets spanning ``lines``, checked against its neighbouring
    lines, and searched only where the guess is wrong (buckets holding a line, NaN)."""
    v = np.asarray(v, dtype=np.float64)
    if len(v) < SEARCH_MIN_VALUES or len(lines) < 2 or not lines[-1] > lines[0]:
        return np.searchsorted(lines, v, side="right")
    lo, hi = float(lines[0]), float(lines[-1])
    scale = SEARCH_BUCKETS / (hi - lo)
    edges = lo + np.arange(SEARCH_BUCKETS + 1) / scale  # bucket b + 1 starts at edges[b]
    guess = np.r_[0, np.searchsorted(lines, edges, side="right")].astype(np.int32)
    b = (v - lo) * scale + 1.0  # bucket 0: below lines[0]; SEARCH_BUCKETS + 1: above
    np.fmin(b, SEARCH_BUCKETS + 1, out=b)  # NaN becomes the top bucket (then searched)
    np.fmax(b, 0.0, out=b)
    out = guess[b.astype(np.int32)]
    padded = np.r_[-np.inf, lines, np.inf]  # padded[k] = lines[k - 1]
    ok = padded[out] <= v
    ok &= v < padded[out + 1]
    if not ok.all():
        wrong = np.flatnonzero(~ok)
        out[wrong] = np.searchsorted(lines, v[wrong], side="right")
    return out.astype(np.intp)


SEARCH_BUCKETS = 1 << 16
"""Buckets of :func:`search_right`'s guess table (256 KiB of int32)."""
SEARCH_MIN_VALUES = 4096
"""Fewer values than this: :func:`search_right` is a plain ``np.searchsorted``."""

MAX_GRID_CELLS = 4_000_000
"""Largest routing grid (:attr:`PartitionTree.grid`), 16 MB of int32."""


@dataclass(frozen=True)
class PlannedChunk:
    """One planned chunk: its ``file_index``, ``chunk_index`` (0..k-1 within the file), bbox of
    its centroids, total ``measure`` and ``num_rows``."""

    file_index: int
    chunk_index: int
    minx: float
    miny: float
    maxx: float
    maxy: float
    measure: float
    num_rows: int


@dataclass(frozen=True)
class PartitionPlan:
    """Result of :func:`plan_partitions`.

    file_index / chunk_index: per input row. chunks: in kd order (file by file). num_files.
    max_per_file / max_per_chunk: the maxima used. tree: the splits, to route other rows.
    """

    file_index: np.ndarray
    chunk_index: np.ndarray
    chunks: list[PlannedChunk]
    num_files: int
    max_per_file: float
    max_per_chunk: float
    tree: PartitionTree

    @property
    def num_chunks(self) -> int:
        """Total number of chunks over all files."""
        return len(self.chunks)

    def file_rows(self, file_index: int) -> np.ndarray:
        """Row positions of one file, sorted by chunk (stable within a chunk)."""
        rows = np.flatnonzero(self.file_index == file_index)
        return rows[np.argsort(self.chunk_index[rows], kind="stable")]


def _check_inputs(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray | None, ids: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    n = len(x)
    w = np.ones(n) if weight is None else np.ascontiguousarray(weight, dtype=np.float64)
    i = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if x.ndim != 1 or y.shape != x.shape or w.shape != x.shape or i.shape != x.shape:
        raise ValueError(
            f"x, y, weight and ids must be 1-D arrays of one length; got shapes {x.shape}, "
            f"{y.shape}, {w.shape}, {i.shape}"
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("centroids must be finite numbers; drop or repair NaN/inf coordinates")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    return x, y, w, i


def _split_mask(v: np.ndarray, s: float, vmin: float, vmax: float) -> tuple[np.ndarray, float]:
    """``(v < split, split)`` with both sides non-empty (requires ``vmin < vmax``)."""
    n = len(v)
    for cand in (s, np.nextafter(s, np.inf), (vmin + vmax) / 2.0, vmax):
        if not (vmin < cand <= vmax):
            continue
        mask = v < cand
        k = int(np.count_nonzero(mask))
        if 0 < k < n:
            return mask, float(cand)
    raise AssertionError("unreachable: vmin < vmax always gives a split")  # pragma: no cover


def _split_value(v: np.ndarray, w: np.ndarray | None, method: str) -> float:
    """The split value of ``v`` (weights ``w``; None: all equal)."""
    wsum = 0.0 if w is None else float(w.sum())
    if method == "mean":
        return float(v.mean()) if wsum <= 0 else float(np.dot(v, w) / wsum)
    if wsum <= 0:
        k = len(v) // 2
        return float(np.partition(v, k)[k])
    order = np.argsort(v)  # ties: any order gives the same value at the crossing
    cum = np.cumsum(w[order])
    pos = int(np.searchsorted(cum, wsum / 2.0, side="right"))
    return float(v[order[min(pos, len(v) - 1)]])


def _utm_split(b: tuple[float, float, float, float]) -> tuple[int, float | None] | None:
    """The split at a UTM zone boundary needed by a node with bbox ``b``, or None."""
    minx, miny, maxx, maxy = b
    if miny < 0.0 <= maxy:
        return AXIS_Y, 0.0
    zmin = int(np.clip(np.floor((minx + 180.0) / 6.0), 0, 59))
    zmax = int(np.clip(np.floor((maxx + 180.0) / 6.0), 0, 59))
    if zmin != zmax:
        k = (zmin + zmax + 1) // 2
        return AXIS_X, -180.0 + 6.0 * k
    return None


def plan_partitions(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray | None = None,
    *,
    max_per_file: float | None = None,
    max_per_chunk: float | None = None,
    target_num_chunks: int = 500,
    split_method: SplitMethod = "mean",
    max_width_ratio: float = 2.0,
    max_height_ratio: float = 2.0,
    split_identical_centroids: bool = True,
    force_utm: ForceUtm = None,
    ids: np.ndarray | None = None,
) -> PartitionPlan:
    """Split rows into files and chunks (see the module docstring for the rules).

    x, y: centroids (degrees). weight: each row's measure (default 1, i.e. ``rows``).
    max_per_file / max_per_chunk / target_num_chunks: see :func:`resolve_maxima` (defaults
    None, None, 500). split_method: ``"mean"`` (default) or ``"median"``. max_width_ratio /
    max_height_ratio: elongation that forces the split axis (default 2; must be > 0).
    split_identical_centroids: split rows sharing one centroid (default True). force_utm:
    ``"file"``, ``"chunk"`` or None (default None here; the job config defaults to ``"chunk"``).
    ids: integer row ids for identical-centroid splits (default ``0..n-1``).
    """
    if split_method not in ("mean", "median"):
        raise ValueError(f"split_method must be 'mean' or 'median', got {split_method!r}")
    if force_utm not in ("file", "chunk", None):
        raise ValueError(f"force_utm must be 'file', 'chunk' or None, got {force_utm!r}")
    if not (max_width_ratio > 0 and max_height_ratio > 0):
        raise ValueError(
            f"max_width_ratio and max_height_ratio must be > 0, got {max_width_ratio}, "
            f"{max_height_ratio}"
        )
    x, y, w, ids = _check_inputs(x, y, weight, ids)
    n = len(x)
    total = float(w.sum())
    per_file, per_chunk = resolve_maxima(total, max_per_file, max_per_chunk, target_num_chunks)
    unit = bool(n == 0 or (w == w[0]).all())
    w0 = float(w[0]) if n else 0.0

    axis: list[int] = []
    value: list[float] = []
    left: list[int] = []
    right: list[int] = []
    leaf_file: list[int] = []
    leaf_chunk: list[int] = []

    def new_node() -> int:
        axis.append(LEAF)
        value.append(np.nan)
        left.append(-1)
        right.append(-1)
        leaf_file.append(-1)
        leaf_chunk.append(-1)
        return len(axis) - 1

    file_of = np.full(n, -1, dtype=np.int64)
    chunk_of = np.full(n, -1, dtype=np.int64)
    chunks: list[PlannedChunk] = []
    num_files = 0
    chunk_counter = 0
    h_all: np.ndarray | None = None

    if n == 0:
        empty_i = np.zeros(0, np.int64)
        tree = PartitionTree(np.zeros(0, np.int8), np.zeros(0), empty_i, empty_i, empty_i, empty_i)
        return PartitionPlan(file_of, chunk_of, [], 0, per_file, per_chunk, tree)

    # Stack of (node, row positions, depth, level); level 0 = file level, 1 = chunk level.
    # Popped LIFO with the right child pushed first, so leaves come out in kd (pre-)order.
    root = new_node()
    stack: list[tuple[int, np.ndarray, int, int]] = [(root, np.arange(n), 0, 0)]
    while stack:
        node, idx, depth, level = stack.pop()
        xs, ys = x[idx], y[idx]
        ws = None if unit else w[idx]  # equal weights: neither summed nor split by
        measure = w0 * len(idx) if ws is None else float(ws.sum())
        bounds = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
        limit = per_file if level == 0 else per_chunk
        split: tuple[int, float | None] | None = None
        mask: np.ndarray | None = None
        if force_utm == "file" or (force_utm == "chunk" and level == 1):
            split = _utm_split(bounds)
        if split is None and measure > limit and len(idx) > 1:
            width, height = bounds[2] - bounds[0], bounds[3] - bounds[1]
            if width == 0.0 and height == 0.0:
                if split_identical_centroids:
                    if h_all is None:
                        h_all = row_hash(ids)
                    hs = h_all[idx]
                    hmin, hmax = float(hs.min()), float(hs.max())
                    if hmin < hmax:
                        s = _split_value(hs, ws, "median")
                        mask, s = _split_mask(hs, s, hmin, hmax)
                        split = (AXIS_HASH, s)
            else:
                if height == 0.0 or width > max_width_ratio * height:
                    ax = AXIS_X
                elif width == 0.0 or height > max_height_ratio * width:
                    ax = AXIS_Y
                else:
                    ax = AXIS_X if depth % 2 == 0 else AXIS_Y
                split = (ax, None)
        if split is not None:
            ax, s = split
            if mask is None:
                v = xs if ax == AXIS_X else ys
                lo, hi = (bounds[0], bounds[2]) if ax == AXIS_X else (bounds[1], bounds[3])
                if s is None:
                    s = _split_value(v, ws, split_method)
                mask, s = _split_mask(v, s, lo, hi)
            ln, rn = new_node(), new_node()
            axis[node], value[node], left[node], right[node] = ax, s, ln, rn
            stack.append((rn, idx[~mask], depth + 1, level))
            stack.append((ln, idx[mask], depth + 1, level))
            continue
        if level == 0:  # a file: now split it into chunks
            num_files += 1
            chunk_counter = 0
            stack.append((node, idx, depth, 1))
            continue
        f, c = num_files - 1, chunk_counter
        chunk_counter += 1
        leaf_file[node], leaf_chunk[node] = f, c
        file_of[idx] = f
        chunk_of[idx] = c
        chunks.append(PlannedChunk(f, c, *bounds, measure=measure, num_rows=len(idx)))

    tree = PartitionTree(
        axis=np.asarray(axis, np.int8),
        value=np.asarray(value, np.float64),
        left=np.asarray(left, np.int64),
        right=np.asarray(right, np.int64),
        file_index=np.asarray(leaf_file, np.int64),
        chunk_index=np.asarray(leaf_chunk, np.int64),
    )
    return PartitionPlan(file_of, chunk_of, chunks, num_files, per_file, per_chunk, tree)
