"""Planning (fused_celery.partition.plan): kd-tree splitting of weighted centroids, pure numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fused_celery.partition.plan import (
    PartitionPlan,
    plan_partitions,
    resolve_maxima,
    search_right,
    utm_zone_ids,
)

coords = st.floats(-179.0, 179.0, allow_nan=False, allow_infinity=False)
lats = st.floats(-89.0, 89.0, allow_nan=False, allow_infinity=False)


@st.composite
def weighted_points(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 60))
    # Few distinct values so that ties and identical centroids are common.
    pool_x = draw(st.lists(coords, min_size=1, max_size=8))
    pool_y = draw(st.lists(lats, min_size=1, max_size=8))
    x = np.array(draw(st.lists(st.sampled_from(pool_x), min_size=n, max_size=n)))
    y = np.array(draw(st.lists(st.sampled_from(pool_y), min_size=n, max_size=n)))
    w = np.array(draw(st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n)))
    return x, y, w


def check_plan(plan: PartitionPlan, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
    """Invariants every plan satisfies."""
    n = len(x)
    # Every row is in exactly one planned chunk, and chunk ids are 0..k-1 per file.
    assert (plan.file_index >= 0).all() and (plan.chunk_index >= 0).all()
    keys = {(c.file_index, c.chunk_index) for c in plan.chunks}
    assert len(keys) == len(plan.chunks)
    assert sum(c.num_rows for c in plan.chunks) == n
    assert {c.file_index for c in plan.chunks} == set(range(plan.num_files))
    for f in range(plan.num_files):
        ids = sorted(c.chunk_index for c in plan.chunks if c.file_index == f)
        assert ids == list(range(len(ids)))
    for c in plan.chunks:
        rows = (plan.file_index == c.file_index) & (plan.chunk_index == c.chunk_index)
        assert rows.sum() == c.num_rows
        assert (c.minx, c.miny, c.maxx, c.maxy) == (
            x[rows].min(),
            y[rows].min(),
            x[rows].max(),
            y[rows].max(),
        )
        assert c.measure == pytest.approx(w[rows].sum())
    # Routing the same rows through the tree gives the same assignment.
    f, c = plan.tree.route(x, y)
    assert (f == plan.file_index).all() and (c == plan.chunk_index).all()


def over_max_allowed(rows: np.ndarray, x: np.ndarray, y: np.ndarray, split_identical: bool) -> bool:
    """A part may exceed its maximum only if it is one row, or identical centroids unsplit."""
    if rows.sum() == 1:
        return True
    same = np.unique(x[rows]).size == 1 and np.unique(y[rows]).size == 1
    return same and not split_identical


@settings(max_examples=150, deadline=None)
@given(
    pts=weighted_points(),
    per_file=st.floats(0.5, 40.0),
    chunk_frac=st.floats(0.05, 1.0),
    method=st.sampled_from(["mean", "median"]),
    split_identical=st.booleans(),
    force_utm=st.sampled_from(["file", "chunk", None]),
    ratio=st.floats(1.0, 4.0),
)
def test_plan_properties(pts, per_file, chunk_frac, method, split_identical, force_utm, ratio):
    x, y, w = pts
    per_chunk = per_file * chunk_frac
    plan = plan_partitions(
        x,
        y,
        w,
        max_per_file=per_file,
        max_per_chunk=per_chunk,
        split_method=method,
        split_identical_centroids=split_identical,
        force_utm=force_utm,
        max_width_ratio=ratio,
        max_height_ratio=ratio,
    )
    check_plan(plan, x, y, w)
    for c in plan.chunks:
        rows = (plan.file_index == c.file_index) & (plan.chunk_index == c.chunk_index)
        if c.measure > per_chunk * (1 + 1e-9):
            assert over_max_allowed(rows, x, y, split_identical)
    for f in range(plan.num_files):
        rows = plan.file_index == f
        if w[rows].sum() > per_file * (1 + 1e-9):
            assert over_max_allowed(rows, x, y, split_identical)
    zones = utm_zone_ids(x, y)
    if force_utm is not None:
        group = (
            plan.file_index
            if force_utm == "file"
            else plan.file_index * 10_000 + (plan.chunk_index)
        )
        for g in np.unique(group):
            assert np.unique(zones[group == g]).size == 1


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(200, 3000),
    method=st.sampled_from(["mean", "median"]),
)
def test_uniform_points_chunk_boxes_barely_overlap(seed, n, method):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-10, 10, n), rng.uniform(40, 50, n)
    plan = plan_partitions(x, y, split_method=method, max_per_file=n / 4, max_per_chunk=n / 20)
    data_area = (x.max() - x.min()) * (y.max() - y.min())
    boxes = sum((c.maxx - c.minx) * (c.maxy - c.miny) for c in plan.chunks)
    assert boxes <= 1.5 * data_area
    assert all(c.num_rows <= n / 20 for c in plan.chunks)


def test_defaults_are_tenth_and_hundredth_of_total():
    assert resolve_maxima(1000.0) == (100.0, 10.0)
    assert resolve_maxima(1000.0, 50, None) == (50.0, 10.0)
    # target_num_chunks below 100 makes the derived per-chunk maximum coarser...
    assert resolve_maxima(1000.0, target_num_chunks=20) == (100.0, 50.0)
    # ...and never finer, nor does it touch an explicit maximum.
    assert resolve_maxima(1000.0, target_num_chunks=5000) == (100.0, 10.0)
    assert resolve_maxima(1000.0, None, 3, target_num_chunks=20) == (100.0, 3.0)


def test_default_maxima_give_about_10_files_and_100_chunks():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 5, 20_000), rng.uniform(0, 5, 20_000)
    plan = plan_partitions(x, y, split_method="median")
    assert plan.max_per_file == 2000 and plan.max_per_chunk == 200
    assert 10 <= plan.num_files <= 20
    assert 100 <= plan.num_chunks <= 200
    assert max(c.num_rows for c in plan.chunks) <= 200


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_maximum_is_an_error(bad):
    with pytest.raises(ValueError, match="max_per_file"):
        plan_partitions(np.zeros(3), np.zeros(3), max_per_file=bad)
    with pytest.raises(ValueError, match="max_per_chunk"):
        plan_partitions(np.zeros(3), np.zeros(3), max_per_chunk=bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split_method"):
        plan_partitions(np.zeros(2), np.zeros(2), split_method="mode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="force_utm"):
        plan_partitions(np.zeros(2), np.zeros(2), force_utm="zone")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        plan_partitions(np.array([0.0, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match="weights"):
        plan_partitions(np.zeros(2), np.zeros(2), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="one length"):
        plan_partitions(np.zeros(2), np.zeros(3))


def test_empty_input_plans_nothing():
    plan = plan_partitions(np.zeros(0), np.zeros(0))
    assert plan.num_files == 0 and plan.chunks == []
    f, c = plan.tree.route(np.zeros(2), np.zeros(2))
    assert (f == -1).all() and (c == -1).all()


def test_identical_centroids_split_or_not():
    x, y = np.full(100, 3.0), np.full(100, 4.0)
    split = plan_partitions(x, y, max_per_file=30, max_per_chunk=10)
    assert split.num_files >= 4 and all(c.num_rows <= 10 for c in split.chunks)
    whole = plan_partitions(
        x, y, max_per_file=30, max_per_chunk=10, split_identical_centroids=False
    )
    assert whole.num_files == 1 and whole.num_chunks == 1
    # The hash split replays on other rows: new ids land in chunks in similar proportions.
    f, _ = split.tree.route(np.full(10_000, 3.0), np.full(10_000, 4.0), np.arange(10_000) + 7)
    counts = np.bincount(f, minlength=split.num_files) / 10_000
    expected = np.bincount(split.file_index, minlength=split.num_files) / 100
    assert np.abs(counts - expected).max() < 0.05


def test_single_heavy_row_is_its_own_chunk():
    x, y = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0, 3.0])
    w = np.array([1.0, 100.0, 1.0, 1.0])
    plan = plan_partitions(x, y, w, max_per_file=5, max_per_chunk=2)
    heavy = [c for c in plan.chunks if c.measure == 100.0]
    assert len(heavy) == 1 and heavy[0].num_rows == 1
    assert all(c.measure <= 2 for c in plan.chunks if c.measure != 100.0)


def test_elongated_box_splits_along_long_axis():
    # A thin horizontal strip: every split must be along x, so chunks are x-intervals that
    # each span the full height range of their rows and do not overlap in x.
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 100, 5000), rng.uniform(0, 1, 5000)
    plan = plan_partitions(x, y, max_per_file=5000, max_per_chunk=500, max_width_ratio=2)
    assert set(plan.tree.axis[plan.tree.axis >= 0].tolist()) == {0}
    spans = sorted((c.minx, c.maxx) for c in plan.chunks)
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    # With a huge ratio allowed, the kd-tree alternates axes instead.
    alt = plan_partitions(x, y, max_per_file=5000, max_per_chunk=500, max_width_ratio=1000)
    assert set(alt.tree.axis[alt.tree.axis >= 0].tolist()) == {0, 1}


def test_median_balances_skewed_data_better_than_mean():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.uniform(0, 1, 9000), rng.uniform(50, 100, 1000)])
    y = rng.uniform(0, 1, 10_000)
    med = plan_partitions(x, y, max_per_file=10_000, max_per_chunk=1000, split_method="median")
    mean = plan_partitions(x, y, max_per_file=10_000, max_per_chunk=1000, split_method="mean")
    assert med.num_chunks <= mean.num_chunks
    assert min(c.num_rows for c in med.chunks) >= 400


def test_weighted_split_balances_measure_not_rows():
    # Left half: many light rows; right half: few heavy ones. Chunks respect the measure.
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(0, 1, 900), rng.uniform(1, 2, 100)])
    y = rng.uniform(0, 1, 1000)
    w = np.concatenate([np.full(900, 1.0), np.full(100, 9.0)])
    for method in ("mean", "median"):
        plan = plan_partitions(x, y, w, max_per_file=1800, max_per_chunk=300, split_method=method)
        assert all(c.measure <= 300 for c in plan.chunks)
        check_plan(plan, x, y, w)


def test_five_million_points_plan_within_the_maxima():
    """At benchmark scale (clustered + uniform points) every chunk and file is within its maximum
    and every point is in exactly one chunk. (Its speed is measured by benchmarks/ingest.py.)"""
    rng = np.random.default_rng(6)
    n = 5_000_000
    x = np.concatenate([rng.uniform(-120, -70, n // 2), rng.normal(10, 1, n // 2)])
    y = np.concatenate([rng.uniform(25, 50, n // 2), rng.normal(50, 1, n // 2)])
    plan = plan_partitions(x, y, max_per_file=n / 64, max_per_chunk=n / 512, split_method="median")
    assert plan.num_chunks >= 512 and max(c.num_rows for c in plan.chunks) <= n / 512
    assert sum(c.num_rows for c in plan.chunks) == n
    assert np.bincount(plan.file_index).max() <= n / 64


@settings(max_examples=60, deadline=None)
@given(
    weighted_points(),
    st.sampled_from([None, "file", "chunk"]),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_grid_route_equals_the_tree_descent(pts, force_utm, grid_on, seed):
    """Routing through the grid gives every point the leaf the tree gives it, including points
    exactly on split lines and points under identical-centroid (hash) splits."""
    x, y, w = pts
    plan = plan_partitions(x, y, w + 0.1, max_per_file=2.0, max_per_chunk=0.5, force_utm=force_utm)
    tree = plan.tree
    rng = np.random.default_rng(seed)
    on_lines = tree.value[np.isin(tree.axis, [0, 1])]
    qx = np.concatenate([x, rng.uniform(-180, 180, 200), on_lines, rng.choice(x, 50)])
    qy = np.concatenate([y, rng.uniform(-90, 90, 200), rng.choice(y, len(on_lines)),
                         rng.choice(y, 50)])  # fmt: skip
    ids = rng.integers(0, 10**9, len(qx))
    if not grid_on:  # a tree too large for a grid descends
        tree.__dict__["grid"] = None
    f, c = tree.route(qx, qy, ids)
    leaf = tree._descend(qx, qy, ids, np.arange(len(qx)))
    assert np.array_equal(f, tree.file_index[leaf]) and np.array_equal(c, tree.chunk_index[leaf])
    assert (f >= 0).all() and (c >= 0).all()
    # The planned rows route to their planned chunks.
    f0, c0 = tree.route(x, y)
    assert np.array_equal(f0, plan.file_index) and np.array_equal(c0, plan.chunk_index)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(2, 2000), st.floats(1e-6, 100.0))
def test_search_right_equals_searchsorted(seed, n_lines, spread):
    """The bucketed search gives np.searchsorted's answer for values between, on, just below and
    outside the lines, infinities and NaN, with lines bunched or spread out."""
    rng = np.random.default_rng(seed)
    lines = np.unique(np.r_[rng.normal(0, spread, n_lines), rng.uniform(-180, 180, 2)])
    on = rng.choice(lines, 2000)
    v = np.r_[
        rng.normal(0, spread, 5000), rng.uniform(-200, 200, 2000), on,
        np.nextafter(on, -np.inf), np.nextafter(on, np.inf),
        [np.nan, np.inf, -np.inf, 1e300, -1e300, lines[0], lines[-1]],
    ]  # fmt: skip
    assert len(v) >= 4096  # the bucketed path, not the plain search
    got = search_right(lines, v)
    assert np.array_equal(got, np.searchsorted(lines, v, side="right"))
    assert np.array_equal(search_right(lines, v[:10]), np.searchsorted(lines, v[:10], "right"))


def test_grid_route_of_many_points_equals_the_tree_descent():
    """Routing many points (the bucketed grid search) gives the tree's leaves."""
    rng = np.random.default_rng(5)
    x = np.r_[rng.normal(10, 0.01, 20_000), rng.uniform(-180, 180, 20_000)]
    y = np.r_[rng.normal(45, 0.01, 20_000), rng.uniform(-90, 90, 20_000)]
    plan = plan_partitions(x, y, np.ones(len(x)), max_per_file=4000, max_per_chunk=500,
                           force_utm=None, split_method="median")  # fmt: skip
    tree = plan.tree
    assert tree.grid is not None
    f, c = tree.route(x, y)
    assert np.array_equal(f, plan.file_index) and np.array_equal(c, plan.chunk_index)
