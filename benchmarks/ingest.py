"""Ingest benchmark: ``fused.ingest`` on a 2-worker local cluster against pyarrow, dask-geopandas,
DuckDB spatial and geopandas.

Run from the repository root::

    .venv/bin/python benchmarks/ingest.py

One run: a seeded GeoParquet of ``--points`` (5,000,000) points (clusters and uniform, 3
attribute columns) becomes a table of about ``--files`` (64) files × ``--chunks-per-file`` (8)
chunks, against

* (a) the I/O floor: ``pyarrow.parquet.read_table`` + ``write_table`` of the same file;
* (b) dask-geopandas on a ``distributed.LocalCluster(n_workers=2, threads_per_worker=1)``:
  ``read_parquet``, ``spatial_shuffle(by="hilbert", npartitions=64)`` (task-based shuffle, as
  the p2p one fails here), ``to_parquet``;
* (c) DuckDB with its spatial extension (PyPI ``duckdb-extension-spatial``, loaded from the
  package's file, nothing downloaded): sort by ``ST_Hilbert`` over the data's extent into a
  temporary table, write 64 files of consecutive rows (``duckdb-partition``, without a target:
  one ``COPY ... PARTITION_BY``, whose files are not in order). DuckDB runs in its own venv,
  ``benchmarks/.work/duckdb-venv``, created on first run, because the extension pins a DuckDB
  version other than the one in the project's venv;

plus ``--polygons`` (500,000) polygons ingested with ``partitioning_method="area"`` against a
geopandas ``read_parquet`` + ``to_parquet`` of the same file, and ``--points-small``
(2,000,000) points for the memory growth of ours. Every contender runs in a fresh child process
(clusters are started, and DuckDB's extension loaded, before the clock starts); the peak RSS of
every process of its tree (the benchmark process, the child and all their descendants: Redis,
Celery workers and their pool processes, dask scheduler and workers) is sampled every 50 ms
(``VmHWM``). The table checks the targets of the issue. Input files are cached in
``benchmarks/.work/ingest-data/`` by size and seed; raw results go to
``benchmarks/.work/ingest.json``. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Standard library only above and in _common: the DuckDB child runs this file in its own venv.
from _common import (  # noqa: E402
    REPO,
    WORK,
    add_load_arguments,
    describe,
    ensure_venv,
    fmt_ratio,
    load,
    machine,
    mark,
    mib,
    prefault_memory,
    start_ours,
    wait_for_quiet,
    warm_up_ingest,
)
from _common import run_child as _run_child  # noqa: E402

DATA = WORK / "ingest-data"
OUT = WORK / "ingest-out"
CLUSTER_DIR = WORK / "ingest-cluster"
DUCKDB_VENV = WORK / "duckdb-venv"
DUCKDB_VERSION = "1.5.5"
DUCKDB_PACKAGES = (f"duckdb=={DUCKDB_VERSION}", f"duckdb-extension-spatial=={DUCKDB_VERSION}")
#: Bump when the generated data change, so cached files are not reused.
DATA_VERSION = 1

OURS_POINTS, OURS_SMALL, OURS_POLYGONS = "ours-points", "ours-points-small", "ours-polygons"
PYARROW, DASK, DUCKDB, GEOPANDAS = "pyarrow", "dask", "duckdb", "geopandas"
DUCKDB_PARTITION = "duckdb-partition"
OURS = (OURS_POINTS, OURS_SMALL, OURS_POLYGONS)
PEERS = (PYARROW, DASK, DUCKDB, DUCKDB_PARTITION, GEOPANDAS)
DUCKDBS = (DUCKDB, DUCKDB_PARTITION)
ORDER = (OURS_POINTS, PYARROW, DASK, DUCKDB, DUCKDB_PARTITION, OURS_SMALL, OURS_POLYGONS, GEOPANDAS)

LABELS = {
    OURS_POINTS: "fused_celery `fused.ingest` (rows)",
    OURS_SMALL: "fused_celery `fused.ingest` (rows)",
    OURS_POLYGONS: "fused_celery `fused.ingest` (area)",
    PYARROW: "(a) pyarrow read + write (I/O floor)",
    DASK: "(b) dask-geopandas spatial_shuffle + to_parquet",
    DUCKDB: "(c) DuckDB spatial: sorted table, 64 × COPY",
    DUCKDB_PARTITION: "DuckDB spatial: one COPY PARTITION_BY (files not sorted)",
    GEOPANDAS: "geopandas read_parquet + to_parquet",
}
#: contender -> (ours' time ÷ its time must be at most this, how the target reads).
TIME_TARGETS = {
    PYARROW: (5.0, "≤ 5×"),
    DASK: (0.2, "≤ 0.2× (5× faster)"),
    DUCKDB: (2.0, "≤ 2×"),
    GEOPANDAS: (2.0, "≤ 2×"),
}
RSS_LIMIT = 1e9  # bytes: "peak RSS of any process ≤ 1 GB" for the large points run
RSS_GROWTH = 1.3  # "growing ≤ 1.3× from 2M to 5M"

NOT_LANDED = (
    "fused.ingest(...).run_remote() is not available in this fused_celery yet (the distributed "
    "ingest has not landed); run the peers alone with --only peers"
)
SLACK = 1.1
"""Maxima of ours are ``SLACK * total / count`` (files, chunks)."""


# ----------------------------------------------------------------------------- data


def data_path(kind: str, n: int, seed: int) -> Path:
    """The cached input file for ``kind`` ("points"/"polygons"), ``n`` rows and ``seed``."""
    return DATA / f"{kind}-{n}-seed{seed}-v{DATA_VERSION}.parquet"


def _centres(rng: Any, n: int, clustered: float) -> tuple[Any, Any]:
    """``n`` lon/lat pairs: a ``clustered`` share around 64 centres (Gaussian, spreads from
    ~1 km to ~200 km, uneven weights), the rest uniform; shuffled, within (-180, 180) ×
    (-90, 90)."""
    import numpy as np

    k = 64
    cx = rng.uniform(-170.0, 170.0, k)
    cy = rng.uniform(-55.0, 70.0, k)
    sigma = 10 ** rng.uniform(-2.0, 0.3, k)
    weights = rng.pareto(1.5, k) + 0.05
    n_clustered = int(n * clustered)
    which = rng.choice(k, size=n_clustered, p=weights / weights.sum())
    x = np.concatenate(
        [
            cx[which] + rng.normal(0, 1, n_clustered) * sigma[which],
            rng.uniform(-180.0, 180.0, n - n_clustered),
        ]
    )
    y = np.concatenate(
        [
            cy[which] + rng.normal(0, 1, n_clustered) * sigma[which],
            rng.uniform(-85.0, 85.0, n - n_clustered),
        ]
    )
    order = rng.permutation(n)
    return np.clip(x[order], -179.95, 179.95), np.clip(y[order], -89.95, 89.95)


def _attributes(rng: Any, n: int) -> dict[str, Any]:
    """The 3 attribute columns: ``id`` int64 (a permutation of 0..n-1), ``value`` float64,
    ``category`` string (12 labels)."""
    import numpy as np

    labels = np.array([f"class_{i:02d}" for i in range(12)], dtype=object)
    return {
        "id": rng.permutation(n).astype(np.int64),
        "value": rng.normal(100.0, 25.0, n),
        "category": labels[rng.integers(0, len(labels), n)],
    }


def generate(kind: str, n: int, seed: int, path: Path) -> dict[str, Any]:
    """Write ``n`` seeded points or polygons as GeoParquet (geopandas ``to_parquet``) to
    ``path``, atomically; returns its description (also saved next to it as JSON).

    Points: 80 % clustered, 20 % uniform. Polygons: star-shaped octagons (random radii and
    angles, always valid) 20 m to 2 km across, centred like the points.
    """
    import geopandas as gpd
    import numpy as np
    import pyarrow.parquet as pq
    import shapely

    started = time.perf_counter()
    rng = np.random.default_rng([seed, 1 if kind == "points" else 2])
    x, y = _centres(rng, n, clustered=0.8)
    attrs = _attributes(rng, n)
    if kind == "points":
        geometry = gpd.points_from_xy(x, y)
    elif kind == "polygons":
        corners = 8
        size = 10 ** rng.uniform(-4.0, -2.0, n)  # radius in degrees (~10 m to ~1 km)
        step = 2 * np.pi / corners
        angle = (
            rng.uniform(0, step, (n, 1))
            + np.arange(corners) * step
            + rng.uniform(0, 0.8 * step, (n, corners))
        )
        radius = size[:, None] * rng.uniform(0.4, 1.0, (n, corners))
        ring = np.stack(
            [x[:, None] + radius * np.cos(angle), y[:, None] + radius * np.sin(angle)], axis=-1
        )
        ring = np.concatenate([ring, ring[:, :1]], axis=1)  # close each ring
        geometry = shapely.polygons(ring)
        del ring, angle, radius
    else:
        raise ValueError(kind)
    gdf = gpd.GeoDataFrame(attrs, geometry=geometry, crs="EPSG:4326")
    tmp = path.with_name(path.name + ".tmp")
    gdf.to_parquet(tmp)
    meta = pq.ParquetFile(tmp).metadata
    info = {
        "kind": kind,
        "rows": n,
        "seed": seed,
        "version": DATA_VERSION,
        "bounds": [float(v) for v in gdf.total_bounds],
        "total_area": float(shapely.area(gdf.geometry.values).sum()),
        "row_groups": meta.num_row_groups,
        "bytes": tmp.stat().st_size,
        "seconds": time.perf_counter() - started,
    }
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return info


# ----------------------------------------------------------------------------- contenders
# Each runs in a fresh child process (``--child SPEC``), starts what it needs, then times its
# work; checks run after the clock stops. Each returns a dict with at least ``seconds``.


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """``fused.ingest(...).run_remote()`` + ``wait_for_job`` on a ``LocalCluster`` started
    (embedded Redis, ``spec["workers"]`` workers, no Flower) before the clock, and warmed up by
    a 1,000-point ingest (a cluster's steady state: client imports done, pool processes up).
    ``spec["runs"]`` (default 1): the same ingest again on the same cluster, into the same
    output (``overwrite=True``); ``seconds`` is the first run's, ``runs_seconds`` all of them
    (the later ones: a cluster whose pool processes have done this work before)."""
    import fused_celery as fused

    if not hasattr(fused, "ingest"):
        raise SystemExit(NOT_LANDED)
    t0 = time.perf_counter()
    cluster = start_ours(spec["workers"], spec["cluster_dir"])
    runs: list[float] = []
    try:
        warm_up_ingest(Path(spec["cluster_dir"]))
        setup = time.perf_counter() - t0
        for _ in range(max(1, int(spec.get("runs", 1)))):
            started = time.perf_counter()
            job = fused.ingest(
                spec["src"],
                output=spec["out"],
                partitioning_method=spec["method"],
                partitioning_maximum_per_file=spec["per_file"],
                partitioning_maximum_per_chunk=spec["per_chunk"],
                partitioning_split_method="median",  # balanced splits: the asked counts
                partitioning_force_utm=None,  # worldwide data: no split at all 120 UTM zones
                overwrite=True,
            )
            if not hasattr(job, "run_remote"):
                raise SystemExit(NOT_LANDED)
            resp = job.run_remote()
            resp.wait_for_job(poll_interval_seconds=0.1, timeout=spec["timeout"])
            runs.append(time.perf_counter() - started)
            status = str(getattr(resp, "status", "?"))
            if status != "Done":
                break
    finally:
        cluster.stop()
    table = fused.open_table(spec["out"])
    return {
        "seconds": runs[0],
        "runs_seconds": runs,
        "setup_seconds": setup,
        "status": status,
        "rows_out": int(table.num_rows),
        "files": int(table.num_files),
        "chunks": int(table.num_chunks),
        "ok": status == "Done" and int(table.num_rows) == spec["n"],
    }


def run_pyarrow(spec: dict[str, Any]) -> dict[str, Any]:
    """The I/O floor: ``pq.read_table(src)`` then ``pq.write_table(table, out)`` (defaults)."""
    import pyarrow.parquet as pq

    Path(spec["out"]).mkdir(parents=True)
    dst = Path(spec["out"]) / "copy.parquet"
    started = time.perf_counter()
    table = pq.read_table(spec["src"])
    pq.write_table(table, dst)
    seconds = time.perf_counter() - started
    rows = pq.ParquetFile(dst).metadata.num_rows
    return {"seconds": seconds, "rows_out": rows, "files": 1, "ok": rows == spec["n"]}


def run_geopandas(spec: dict[str, Any]) -> dict[str, Any]:
    """``gpd.read_parquet(src).to_parquet(out)`` (defaults)."""
    import geopandas as gpd
    import pyarrow.parquet as pq

    Path(spec["out"]).mkdir(parents=True)
    dst = Path(spec["out"]) / "copy.parquet"
    started = time.perf_counter()
    gpd.read_parquet(spec["src"]).to_parquet(dst)
    seconds = time.perf_counter() - started
    rows = pq.ParquetFile(dst).metadata.num_rows
    return {"seconds": seconds, "rows_out": rows, "files": 1, "ok": rows == spec["n"]}


def run_dask(spec: dict[str, Any]) -> dict[str, Any]:
    """dask-geopandas ``read_parquet(split_row_groups=True)`` (a partition per row group, so
    both workers read) → ``spatial_shuffle(by="hilbert", npartitions=files,
    shuffle_method="tasks")`` → ``to_parquet``, on a loopback ``distributed.LocalCluster(
    n_workers=workers, threads_per_worker=1)`` started before the clock (no dashboard).

    ``shuffle_method="tasks"``: with dask/distributed 2026.8 and dask-geopandas 0.5 the default
    p2p shuffle fails in ``spatial_shuffle``'s ``calculate_spatial_partitions`` (``TypeError:
    Input must be valid geometry objects: b'...'``, the geometry comes back as WKB bytes).
    """
    import dask_geopandas
    import pyarrow.parquet as pq
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=spec["workers"],
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    client = Client(cluster)
    setup = time.perf_counter() - t0
    try:
        started = time.perf_counter()
        ddf = dask_geopandas.read_parquet(spec["src"], split_row_groups=True)
        shuffled = ddf.spatial_shuffle(
            by="hilbert", npartitions=spec["files"], shuffle_method="tasks"
        )
        shuffled.to_parquet(spec["out"])
        seconds = time.perf_counter() - started
        partitions = shuffled.npartitions
        input_partitions = ddf.npartitions
    finally:
        client.close()
        cluster.close()
    files = sorted(Path(spec["out"]).glob("*.parquet"))
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return {
        "seconds": seconds,
        "setup_seconds": setup,
        "rows_out": rows,
        "files": len(files),
        "partitions": partitions,
        "input_partitions": input_partitions,
        "ok": rows == spec["n"] and len(files) == spec["files"] == partitions,
    }


def spatial_extension_path() -> Path:
    """The ``spatial.duckdb_extension`` file shipped in the ``duckdb-extension-spatial``
    package for this DuckDB version (the package has no loader of its own)."""
    import duckdb
    import duckdb_extension_spatial

    root = Path(duckdb_extension_spatial.__file__).parent / "extensions"
    path = root / f"v{duckdb.__version__}" / "spatial.duckdb_extension"
    if not path.exists():
        found = ", ".join(p.parent.name for p in root.glob("*/spatial.duckdb_extension"))
        raise RuntimeError(f"no spatial extension for DuckDB {duckdb.__version__} (has: {found})")
    return path


def run_duckdb(spec: dict[str, Any]) -> dict[str, Any]:
    """DuckDB + spatial, sorting by ``ST_Hilbert(geometry, extent)`` over the extent of all
    geometries (``ST_Extent(ST_Extent_Agg(geometry))``, a first scan) and writing ``files``
    files of ~``chunks_per_file`` row groups (``ROW_GROUP_SIZE``). ``spec["method"]``:

    * ``sorted``: ``CREATE TEMP TABLE sorted AS SELECT ... ORDER BY ST_Hilbert(...)``, then one
      ``COPY (SELECT * FROM sorted WHERE rowid >= a AND rowid < b)`` per file: every file is a
      contiguous Hilbert range, its rows in Hilbert order (like our chunks).
    * ``partition``: one ``COPY``, each row's rank in Hilbert order (``row_number() OVER``)
      mapped to a file number, ``PARTITION_BY (file_no)``: files are contiguous Hilbert
      ranges, but DuckDB's partitioned writer does not keep the order within a file.

    The connection is made and the extension loaded (from the package's file; auto-install and
    auto-load off, so nothing is downloaded) before the clock. After it: row count, files, row
    groups, and whether every file's rows are in Hilbert order.
    """
    import duckdb

    t0 = time.perf_counter()
    ext = spatial_extension_path()
    con = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    con.execute(f"LOAD '{ext}'")
    setup = time.perf_counter() - t0
    src, out, n, files = spec["src"], Path(spec["out"]), spec["n"], spec["files"]
    per_file = math.ceil(n / files)
    per_group = max(1, math.ceil(per_file / spec["chunks_per_file"]))
    extent = "(SELECT ST_Extent(ST_Extent_Agg(geometry)) AS box FROM read_parquet($src))"
    started = time.perf_counter()
    if spec["method"] == "sorted":
        out.mkdir(parents=True)
        con.execute(
            f"CREATE TEMP TABLE sorted AS WITH e AS {extent} "
            "SELECT p.* FROM read_parquet($src) AS p, e ORDER BY ST_Hilbert(p.geometry, e.box)",
            {"src": src},
        )
        for i in range(files):
            con.execute(
                f"COPY (SELECT * FROM sorted WHERE rowid >= {i * per_file} "
                f"AND rowid < {(i + 1) * per_file}) TO '{out / f'part-{i:03d}.parquet'}' "
                f"(FORMAT parquet, ROW_GROUP_SIZE {per_group})"
            )
    else:
        con.execute(
            f"COPY (WITH e AS {extent} "
            f"SELECT p.*, (row_number() OVER (ORDER BY ST_Hilbert(p.geometry, e.box)) - 1) "
            f"* {files} // {n} AS file_no FROM read_parquet($src) AS p, e) "
            f"TO '{out}' (FORMAT parquet, PARTITION_BY (file_no), ROW_GROUP_SIZE {per_group})",
            {"src": src},
        )
    seconds = time.perf_counter() - started
    glob = f"{out}/**/*.parquet" if spec["method"] == "partition" else f"{out}/*.parquet"
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()[0]
    groups = con.execute(
        f"SELECT count(DISTINCT (file_name, row_group_id)) FROM parquet_metadata('{glob}')"
    ).fetchone()[0]
    in_order = con.execute(
        f"WITH e AS {extent}, h AS (SELECT filename, file_row_number AS r, "
        "ST_Hilbert(p.geometry, e.box) AS h "
        f"FROM read_parquet('{glob}', filename = true, file_row_number = true) AS p, e) "
        "SELECT bool_and(h >= prev) FROM (SELECT h, lag(h) OVER (PARTITION BY filename "
        "ORDER BY r) AS prev FROM h) WHERE prev IS NOT NULL",
        {"src": src},
    ).fetchone()[0]
    written = len(list(out.rglob("*.parquet")))
    return {
        "seconds": seconds,
        "setup_seconds": setup,
        "rows_out": int(rows),
        "files": written,
        "chunks": int(groups),
        "files_in_hilbert_order": bool(in_order),
        "duckdb": duckdb.__version__,
        "extension": str(ext),
        "ok": rows == n and written == files and (in_order or spec["method"] != "sorted"),
    }


def run_generate(spec: dict[str, Any]) -> dict[str, Any]:
    return generate(spec["data"], spec["n"], spec["seed"], Path(spec["path"]))


CHILDREN = {
    "ours": run_ours,
    PYARROW: run_pyarrow,
    GEOPANDAS: run_geopandas,
    DASK: run_dask,
    DUCKDB: run_duckdb,
    DUCKDB_PARTITION: run_duckdb,
    "generate": run_generate,
}


# ----------------------------------------------------------------------------- parent


def run_child(python: Path, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a fresh child process of ``python`` running this file (see
    :func:`_common.run_child`)."""
    return _run_child(Path(__file__), python, spec, timeout)


def ensure_data(kind: str, n: int, seed: int, timeout: float) -> dict[str, Any]:
    """The description of the cached input file, generating it (in a child) if missing."""
    path = data_path(kind, n, seed)
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return json.loads(meta.read_text())
    DATA.mkdir(parents=True, exist_ok=True)
    print(f"generating {n:,} {kind} (seed {seed}) → {path.relative_to(REPO)}", flush=True)
    spec = {"kind": "generate", "data": kind, "n": n, "seed": seed, "path": str(path)}
    info = run_child(Path(sys.executable), spec, timeout)
    print(f"  {info['seconds']:.1f} s, {info['bytes'] / 2**20:,.0f} MiB", flush=True)
    return json.loads(meta.read_text())


def tables(res: dict[str, Any], sizes: dict[str, int]) -> str:
    """The time table and the memory table, as Markdown."""
    med = {k: v["median"] for k, v in res.items() if v.get("median") is not None}
    rows = [
        "| data | contender | seconds (median) | output | ours' time ÷ this | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = (
        (f"{sizes['points']:,} points", OURS_POINTS, (PYARROW, DASK, *DUCKDBS)),
        (f"{sizes['points_small']:,} points", OURS_SMALL, ()),
        (f"{sizes['polygons']:,} polygons", OURS_POLYGONS, (GEOPANDAS,)),
    )
    for data, ours, peers in groups:
        for name in (ours, *peers):
            if name not in res:
                continue
            r = res[name]
            secs = med.get(name)
            layout = r.get("layout", "—")
            if name == ours:
                ratio, target, met = (1.0 if secs else None), "—", None
            else:
                limit, target = TIME_TARGETS.get(name, (None, "—"))
                ratio = med[ours] / secs if (ours in med and secs) else None
                met = None if ratio is None or limit is None else ratio <= limit
            shown = "failed" if secs is None else f"{secs:.2f}"
            rows.append(
                f"| {data} | {LABELS[name]} | {shown} | {layout} | {fmt_ratio(ratio)} "
                f"| {target} | {mark(met)} |"
            )
    mem = [
        "",
        "| data | contender | peak RSS of one process, MiB | that process | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for data, names in (
        (f"{sizes['points_small']:,} points", (OURS_SMALL,)),
        (f"{sizes['points']:,} points", (OURS_POINTS, PYARROW, DASK, *DUCKDBS)),
        (f"{sizes['polygons']:,} polygons", (OURS_POLYGONS, GEOPANDAS)),
    ):
        for name in names:
            if name not in res or not res[name].get("peak_rss"):
                continue
            peak = res[name]["peak_rss"]
            target, met = "—", None
            if name == OURS_POINTS:
                target, met = "≤ 1 GB", peak <= RSS_LIMIT
            who = describe(res[name].get("peak_process", "? ?"))
            mem.append(
                f"| {data} | {LABELS[name]} | {mib(peak)} | `{who}` | {target} | {mark(met)} |"
            )
    if OURS_SMALL in res and OURS_POINTS in res:
        small, big = res[OURS_SMALL].get("peak_rss"), res[OURS_POINTS].get("peak_rss")
        if small and big:
            growth = big / small
            mem.append(
                f"| {sizes['points_small']:,} → {sizes['points']:,} points | growth of "
                f"ours' peak | {growth:.2f}× | — | ≤ {RSS_GROWTH}× "
                f"| {mark(growth <= RSS_GROWTH)} |"
            )
    return "\n".join(rows + mem)


def check_ours_available() -> None:
    """Exit with :data:`NOT_LANDED` unless ``fused.ingest(...)`` has ``run_remote``."""
    probe = (
        "import fused_celery as f, sys\n"
        "ok = hasattr(f, 'ingest')\n"
        "if ok:\n"
        "    from fused_celery.partition.config import GeospatialPartitionJobStepConfig as C\n"
        "    ok = hasattr(C, 'run_remote')\n"
        "sys.exit(0 if ok else 3)\n"
    )
    if subprocess.run([sys.executable, "-c", probe]).returncode != 0:
        raise SystemExit(NOT_LANDED)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0].replace("\n", " ").replace("``", ""),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--points", type=int, default=5_000_000, help="points of the main run")
    p.add_argument(
        "--points-small",
        type=int,
        default=2_000_000,
        help="points of ours' second run, for memory growth (0 skips it)",
    )
    p.add_argument("--polygons", type=int, default=500_000, help="polygons (0 skips them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    p.add_argument("--files", type=int, default=64, help="files of the output table")
    p.add_argument("--chunks-per-file", type=int, default=8, help="chunks (row groups) per file")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes of ours' LocalCluster and dask's LocalCluster",
    )
    p.add_argument("--repeats", type=int, default=1, help="runs of each contender (median)")
    p.add_argument(
        "--only",
        default="all",
        help=f"comma-separated contenders or groups: all, ours, peers, or among {', '.join(ORDER)}",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run")
    p.add_argument(
        "--duckdb-python",
        metavar="PATH",
        help=f"an interpreter with duckdb=={DUCKDB_VERSION} and "
        "duckdb-extension-spatial (default: benchmarks/.work/duckdb-venv, made once)",
    )
    p.add_argument(
        "--keep-outputs",
        action="store_true",
        help="keep the outputs in benchmarks/.work/ingest-out/",
    )
    add_load_arguments(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)

    if opts.child is not None:
        spec = json.loads(opts.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return 0

    chosen: list[str] = []
    for item in (s.strip() for s in opts.only.split(",") if s.strip()):
        group = {"all": ORDER, "ours": OURS, "peers": PEERS}.get(item, (item,))
        for name in group:
            if name not in ORDER:
                p.error(
                    f"unknown contender {name!r}; choose among all, ours, peers, {', '.join(ORDER)}"
                )
            chosen.append(name)
    sizes = {"points": opts.points, "points_small": opts.points_small, "polygons": opts.polygons}
    skip = {OURS_SMALL} if not opts.points_small else set()
    skip |= {OURS_POLYGONS, GEOPANDAS} if not opts.polygons else set()
    contenders = [c for c in ORDER if c in chosen and c not in skip]
    if not contenders:
        p.error("nothing to run")
    if any(c in OURS for c in contenders):
        check_ours_available()
    duckdb_python = None
    if set(DUCKDBS) & set(contenders):
        duckdb_python = (
            Path(opts.duckdb_python)
            if opts.duckdb_python
            else ensure_venv(
                DUCKDB_VENV,
                DUCKDB_PACKAGES,
                "import duckdb, duckdb_extension_spatial",
                WORK / "duckdb-venv-install.log",
            )
        )

    data: dict[str, dict[str, Any]] = {}
    needs = {
        "points": {OURS_POINTS, PYARROW, DASK, *DUCKDBS},
        "points_small": {OURS_SMALL},
        "polygons": {OURS_POLYGONS, GEOPANDAS},
    }
    for key, kind in (("points", "points"), ("points_small", "points"), ("polygons", "polygons")):
        if needs[key] & set(contenders):
            data[key] = ensure_data(kind, sizes[key], opts.seed, opts.timeout)

    if opts.wait_for_load is not None:
        wait_for_quiet(opts.wait_for_load, opts.max_wait)
    if opts.prefault_gib > 0:
        took = prefault_memory(opts.prefault_gib)
        print(f"prefaulted {opts.prefault_gib:g} GiB of memory in {took:.1f} s")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"date: {stamp}")
    print(f"machine: {machine()}")
    print(f"python: {platform.python_version()} ({sys.executable})")
    for key, info in data.items():
        print(
            f"input {key}: {info['rows']:,} {info['kind']}, seed {info['seed']}, "
            f"{info['bytes'] / 2**20:,.0f} MiB, {info['row_groups']} row groups, "
            f"{data_path(info['kind'], info['rows'], info['seed']).relative_to(REPO)}"
        )
    print(f"load average at start (1/5/15 min): {load()}", flush=True)

    which_data = {
        OURS_POINTS: "points",
        PYARROW: "points",
        DASK: "points",
        DUCKDB: "points",
        DUCKDB_PARTITION: "points",
        OURS_SMALL: "points_small",
        OURS_POLYGONS: "polygons",
        GEOPANDAS: "polygons",
    }
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    failures: list[str] = []
    for rep in range(opts.repeats):
        for name in contenders:
            info = data[which_data[name]]
            n = info["rows"]
            src = str(data_path(info["kind"], n, info["seed"]))
            out = OUT / name
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            spec: dict[str, Any] = {
                "kind": name,
                "src": src,
                "out": str(out),
                "n": n,
                "files": opts.files,
                "chunks_per_file": opts.chunks_per_file,
                "workers": opts.workers,
            }
            python = Path(sys.executable)
            if name in OURS:
                chunks = opts.files * opts.chunks_per_file
                # 10% of slack over total / count, so that median splits land on the counts
                total = info["total_area"] if name == OURS_POLYGONS else n
                per_file, per_chunk = SLACK * total / opts.files, SLACK * total / chunks
                method = "area" if name == OURS_POLYGONS else "rows"
                spec.update(
                    kind="ours",
                    method=method,
                    per_file=per_file,
                    per_chunk=per_chunk,
                    timeout=opts.timeout,
                    cluster_dir=str(CLUSTER_DIR),
                )
            elif name in DUCKDBS:
                python = duckdb_python or python
                spec["method"] = "sorted" if name == DUCKDB else "partition"
            try:
                got = run_child(python, spec, opts.timeout + 300)
            except RuntimeError as exc:
                failures.append(f"{name} run {rep + 1}: {exc}")
                print(f"  {name:18s} run {rep + 1}: FAILED\n{exc}", flush=True)
                continue
            if not got.get("ok"):
                failures.append(f"{name} run {rep + 1}: WRONG OUTPUT {json.dumps(got)}")
            samples[name].append(got)
            extra = {k: got[k] for k in ("files", "chunks", "partitions", "status") if k in got}
            print(
                f"  {name:18s} run {rep + 1}: {got['seconds']:8.2f} s "
                f"(setup {got.get('setup_seconds', 0):.1f} s, child {got['wall_seconds']:.1f} s)"
                f"  rows {got['rows_out']:,}  {extra}  peak RSS {mib(got['peak_rss'])} MiB"
                f"  other processes {got['foreign_cores']:.2f} cores  load {load()}",
                flush=True,
            )
            if not opts.keep_outputs:
                shutil.rmtree(out, ignore_errors=True)

    res: dict[str, Any] = {}
    for name, got in samples.items():
        if not got:
            res[name] = {"median": None, "samples": []}
            continue
        last = got[-1]
        count = last.get("files", "?")
        layout = f"{count} file" + ("" if count == 1 else "s")
        if last.get("chunks"):
            layout += (
                f", {last['chunks']} chunks" if name in OURS else f", {last['chunks']} row groups"
            )
        res[name] = {
            "median": statistics.median(g["seconds"] for g in got),
            "peak_rss": max(g["peak_rss"] for g in got),
            "peak_process": max(got, key=lambda g: g["peak_rss"])["peak_process"],
            "layout": layout,
            "samples": got,
        }
    print()
    print(tables(res, sizes))
    print()
    for name, got in samples.items():
        secs = ", ".join(f"{g['seconds']:.2f}" for g in got)
        cores = ", ".join(f"{g['foreign_cores']:.2f}" for g in got)
        print(f"samples {name}: {secs} s; other processes used {cores} cores")
    print(f"load average at end (1/5/15 min): {load()}")
    for failure in failures:
        print(f"note: {failure}")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "ingest.json").write_text(
        json.dumps(
            {
                "date": stamp,
                "machine": machine(),
                "args": vars(opts),
                "data": data,
                "results": res,
                "failures": failures,
            },
            indent=2,
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
