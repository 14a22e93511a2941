"""Join benchmark: ``fused.join(points, polygons).run_remote()`` on a 2-worker local cluster
against geopandas in one process, dask-geopandas on a 2-worker ``distributed.LocalCluster`` and
DuckDB spatial on 2 threads.

Run from the repository root::

    .venv/bin/python benchmarks/join.py

Data (setup, untimed, cached in ``benchmarks/.work/join-data/``): ``--points`` (1,000,000)
points clustered around 2,000 centres (normal, σ 400 m) inside 6.1-11.9°E × 44-50°N (UTM zone
32N), columns ``id`` + ``geometry``; ``--polygons`` (10,000) small buffer polygons (radius 430 m
around points drawn from the same clusters), columns ``pid`` + ``geometry``; both written as
GeoParquet files and ingested into tables (``fused.ingest(...).run_local``, the ingest not
timed for anyone). Output for everyone: each point with its polygon's id (``id, geometry,
pid``), written as Parquet (ours: as a table). Two variants:

* ``intersects``: points in polygons;
* ``dwithin``: points within ``--distance`` (100) metres of a polygon, every pair, measured in
  EPSG:32632 (ours: ``buffer_distance=100``, the UTM zone of each left chunk, 32N here).

Contenders, each in a fresh child process (peak RSS of every process of its tree sampled):

* ``ours``: ``fused.join(points_table, polygons_table, output_table=...).run_remote()`` +
  ``wait_for_job()`` on fused_celery's ``LocalCluster(workers=2)``, started and warmed up before
  the clock; the built-in join (no UDF);
* ``geopandas``: ``read_parquet`` ×2 (the original files), ``sjoin`` (``predicate=
  "intersects"``, or ``"dwithin"`` with ``distance`` on both frames in EPSG:32632),
  ``to_parquet``;
* ``dask``: ``dask_geopandas.read_parquet`` of both tables' files (spatially partitioned: a
  partition per file, ``spatial_partitions`` from the files' GeoParquet bbox), ``sjoin``,
  ``to_parquet``, on ``LocalCluster(n_workers=2, threads_per_worker=1)`` started before the
  clock; intersects only (dask-geopandas 0.5's ``sjoin`` has no ``distance``);
* ``duckdb``: DuckDB with its spatial extension (``duckdb-extension-spatial``, in
  ``benchmarks/.work/duckdb-venv`` as :mod:`ingest` makes it), 2 threads, ``COPY (SELECT p.id,
  p.geometry, q.pid FROM read_parquet(polygons) q JOIN read_parquet(points) p ON
  ST_Intersects(q.geometry, p.geometry)) TO ...`` (its spatial join operator with an R-tree;
  polygons first, DuckDB's faster order here: 3.3 s against 10.9 s for points first);
  ``dwithin``: both sides ``ST_Transform``-ed to EPSG:32632 in the query, ``ST_DWithin(.., 100)``.

The ``fused`` PyPI package is not a contender: the version in the project's venv (2.9.5) has no
join step at all (no ``fused.join``, no ``JoinJobStepConfig``); seed 000's join steps ran on
Fused's hosted servers (``run_remote`` submits to the Fused API), with no offline engine.

After the clock the parent reads each output's ``(id, pid)`` pairs: their count and an
order-independent fingerprint must agree across contenders (same pairs). Raw results go to
``benchmarks/.work/join.json``. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

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
    run_child,
    start_ours,
    wait_for_quiet,
    warm_up_ingest,
)
from ingest import DUCKDB_PACKAGES, DUCKDB_VENV  # noqa: E402  (the DuckDB venv ingest.py makes)

DATA = WORK / "join-data"
OUT = WORK / "join-out"
CLUSTER_DIR = WORK / "join-cluster"
DATA_VERSION = 2
BOUNDS = (6.1, 44.0, 11.9, 50.0)  # lon/lat, inside UTM zone 32N
UTM = 32632
CLUSTERS, SIGMA_M, RADIUS_M = 2000, 400.0, 430.0

OURS, GEOPANDAS, DASK, DUCKDB = "ours", "geopandas", "dask", "duckdb"
ORDER = (OURS, GEOPANDAS, DASK, DUCKDB)
VARIANTS = ("intersects", "dwithin")
LABELS = {
    OURS: "fused_celery `fused.join(...).run_remote()` + `wait_for_job()`, 2 workers",
    GEOPANDAS: "geopandas, one process: read_parquet ×2 + sjoin + to_parquet",
    DASK: "dask-geopandas sjoin on spatially partitioned inputs, 2 workers",
    DUCKDB: "DuckDB spatial, 2 threads: ST_Intersects / ST_DWithin join + COPY to Parquet",
}
#: contender -> ours' speed-up over it must be at least this.
TARGETS = {GEOPANDAS: 1.5, DASK: 4.0, DUCKDB: 1.0}
RSS_LIMIT = 1e9


# ----------------------------------------------------------------------------- data


def paths(opts_or_spec: Any) -> dict[str, Path]:
    get = opts_or_spec.get if isinstance(opts_or_spec, dict) else opts_or_spec.__getattribute__
    n, m, seed = get("points"), get("polygons"), get("seed")
    stem = f"{n}x{m}-seed{seed}-v{DATA_VERSION}"
    return {
        "points": DATA / f"points-{stem}.parquet",
        "polygons": DATA / f"polygons-{stem}.parquet",
        "points_table": DATA / f"points-table-{stem}",
        "polygons_table": DATA / f"polygons-table-{stem}",
        "meta": DATA / f"{stem}.json",
    }


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """The two GeoParquet files and their tables (ingested on this machine)."""
    import geopandas as gpd
    import numpy as np
    from pyproj import Transformer

    import fused_celery as fused

    fused.options.show.enable_tqdm = False
    p = paths(spec)
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([spec["seed"], 7])
    to_utm = Transformer.from_crs(4326, UTM, always_xy=True)
    to_wgs = Transformer.from_crs(UTM, 4326, always_xy=True)
    cx, cy = to_utm.transform(
        rng.uniform(BOUNDS[0] + 0.2, BOUNDS[2] - 0.2, CLUSTERS),
        rng.uniform(BOUNDS[1] + 0.2, BOUNDS[3] - 0.2, CLUSTERS),
    )

    def clustered(k: int) -> tuple[Any, Any]:
        which = rng.integers(0, CLUSTERS, k)
        x = np.asarray(cx)[which] + rng.normal(0, SIGMA_M, k)
        y = np.asarray(cy)[which] + rng.normal(0, SIGMA_M, k)
        return x, y

    n, m = spec["points"], spec["polygons"]
    x, y = clustered(n)
    lon, lat = to_wgs.transform(x, y)
    points = gpd.GeoDataFrame(
        {"id": np.arange(n, dtype=np.int64)}, geometry=gpd.points_from_xy(lon, lat), crs=4326
    )
    x, y = clustered(m)
    discs = gpd.GeoSeries(gpd.points_from_xy(x, y), crs=UTM).buffer(RADIUS_M, 8).to_crs(4326)
    polygons = gpd.GeoDataFrame({"pid": np.arange(m, dtype=np.int64)}, geometry=discs)
    points.to_parquet(p["points"])
    polygons.to_parquet(p["polygons"])
    started = time.perf_counter()
    for src, table, per_chunk in (
        (p["points"], p["points_table"], 20_000),
        (p["polygons"], p["polygons_table"], 500),
    ):
        shutil.rmtree(table, ignore_errors=True)
        job = fused.ingest(str(src), partitioning_maximum_per_chunk=per_chunk)
        job.run_local(str(table), overwrite=True)
    info = {
        "points": n,
        "polygons": m,
        "seed": spec["seed"],
        "ingest_seconds": time.perf_counter() - started,
        "points_table": describe_table(p["points_table"]),
        "polygons_table": describe_table(p["polygons_table"]),
    }
    p["meta"].write_text(json.dumps(info, indent=2))
    return info


def contender_spec(
    name: str,
    variant: str,
    distance: float | None,
    files: dict[str, Path],
    out: Path,
    *,
    workers: int,
    timeout: float,
    cluster_dir: Path,
) -> dict[str, Any]:
    """What a contender's child process gets: its name, the variant, the inputs (``files``, from
    :func:`paths`), where its output goes and the cluster's size, timeout and folder."""
    return {
        "kind": name, "variant": variant, "distance": distance,
        "points": str(files["points"]), "polygons": str(files["polygons"]),
        "points_table": str(files["points_table"]),
        "polygons_table": str(files["polygons_table"]),
        "out": str(out), "workers": workers, "timeout": timeout, "cluster_dir": str(cluster_dir),
    }  # fmt: skip


def describe_table(url: Path) -> str:
    import fused_celery as fused

    t = fused.open_table(str(url))
    return f"{t.num_files} files, {t.num_chunks} chunks"


def table_files(url: str) -> list[str]:
    import fused_celery as fused

    return [u.removeprefix("file://") for u in fused.open_table(url).file_urls]


def fingerprint(files: list[str]) -> dict[str, Any]:
    """Pairs ``(id, pid)`` of the Parquet ``files`` (rows with a null pid left out): count
    and an order-independent fingerprint (wrapping sum of a 64-bit mix of each pair)."""
    import numpy as np
    import pyarrow.parquet as pq

    count, total = 0, np.uint64(0)
    for f in files:
        t = pq.read_table(f, columns=["id", "pid"]).drop_null()
        a = t.column("id").to_numpy().astype(np.uint64)
        b = t.column("pid").to_numpy().astype(np.uint64)
        with np.errstate(over="ignore"):
            h = (a * np.uint64(0x9E3779B97F4A7C15)) ^ (b * np.uint64(0xBF58476D1CE4E5B9))
            h ^= h >> np.uint64(31)
            total = total + h.sum(dtype=np.uint64)
        count += t.num_rows
    return {"pairs": int(count), "fingerprint": f"{int(total):016x}", "out_files": len(files)}


# ----------------------------------------------------------------------------- contenders


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """``fused.join(...).run_remote()`` + ``wait_for_job`` on our LocalCluster (started, and
    warmed up by a small ingest and a small join, before the clock)."""
    from map_step import stage_seconds

    import fused_celery as fused

    folder = Path(spec["cluster_dir"])
    cluster = start_ours(spec["workers"], folder)
    distance = spec["distance"] if spec["variant"] == "dwithin" else None
    try:
        warm = warm_up_ingest(folder)
        warm_join = fused.join(warm, warm, output_table=str(folder / "warm-join"))
        resp = warm_join.run_remote(overwrite=True).wait_for_job(0.1, timeout=300)
        if resp.status != "Done":
            raise SystemExit(f"warm-up join ended {resp.status}: {resp.get_logs()[-3:]}")
        cpu_before = tree_cpu_seconds()
        started = time.perf_counter()
        step = fused.join(
            spec["points_table"], spec["polygons_table"], buffer_distance=distance,
            output_table=spec["out"], overwrite=True,
        )  # fmt: skip
        resp = step.run_remote()
        resp.wait_for_job(poll_interval_seconds=0.05, timeout=spec["timeout"])
        seconds = time.perf_counter() - started
        cpu = tree_cpu_seconds() - cpu_before
        status = str(resp.status)
        if status != "Done":
            raise SystemExit(f"join ended {status}: {resp.get_logs()[-5:]}")
        stages = stage_seconds(resp.get_logs())
    finally:
        cluster.stop()
    return {"seconds": seconds, "cpu": cpu, "stages": stages, "files": table_files(spec["out"])}


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its descendants alive now
    (the cluster's Redis and workers): under load, a figure that depends less on the other
    processes than the wall clock does."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def run_geopandas(spec: dict[str, Any]) -> dict[str, Any]:
    """read_parquet ×2, sjoin, to_parquet, in this process."""
    import geopandas as gpd

    Path(spec["out"]).mkdir(parents=True)
    dst = Path(spec["out"]) / "out.parquet"
    started = time.perf_counter()
    points = gpd.read_parquet(spec["points"])
    polygons = gpd.read_parquet(spec["polygons"])
    if spec["variant"] == "dwithin":
        joined = gpd.sjoin(
            points.to_crs(UTM), polygons.to_crs(UTM), predicate="dwithin",
            distance=spec["distance"],
        )  # fmt: skip
        out = points.loc[joined.index].assign(pid=joined["pid"].to_numpy())
    else:
        out = gpd.sjoin(points, polygons, predicate="intersects").drop(columns="index_right")
    out.to_parquet(dst)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "files": [str(dst)]}


def run_dask(spec: dict[str, Any]) -> dict[str, Any]:
    """dask_geopandas.read_parquet of both tables' files (spatial partitions from the files'
    bbox), sjoin, to_parquet, on a loopback 2-worker LocalCluster started before the clock."""
    import dask_geopandas
    import geopandas
    from distributed import Client, LocalCluster

    # dask-geopandas 0.5 keeps ``spatial_partitions`` (a GeoSeries) in ``DataFrame.attrs``, and
    # this pandas compares the attrs of concatenated frames with ``==`` (a Series: "truth value
    # ambiguous"); its sjoin calls ``geopandas.sjoin`` by module attribute, so give it inputs
    # without attrs (the join itself is unchanged)
    plain_sjoin = geopandas.sjoin

    def sjoin_without_attrs(left: Any, right: Any, *args: Any, **kwargs: Any) -> Any:
        left, right = left.copy(deep=False), right.copy(deep=False)
        left.attrs, right.attrs = {}, {}
        return plain_sjoin(left, right, *args, **kwargs)

    geopandas.sjoin = sjoin_without_attrs

    cluster = LocalCluster(
        n_workers=spec["workers"], threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    )  # fmt: skip
    client = Client(cluster)
    try:
        started = time.perf_counter()
        left = dask_geopandas.read_parquet(
            table_files(spec["points_table"]), columns=["id", "geometry"],
            gather_spatial_partitions=True,
        )  # fmt: skip
        right = dask_geopandas.read_parquet(
            table_files(spec["polygons_table"]), columns=["pid", "geometry"],
            gather_spatial_partitions=True,
        )  # fmt: skip
        joined = dask_geopandas.sjoin(left, right, predicate="intersects")
        joined.drop(columns="index_right").to_parquet(spec["out"])
        seconds = time.perf_counter() - started
    finally:
        client.close()
        cluster.close()
    written = sorted(str(p) for p in Path(spec["out"]).glob("*.parquet"))
    return {"seconds": seconds, "files": written}


def run_duckdb(spec: dict[str, Any]) -> dict[str, Any]:
    """DuckDB spatial (extension loaded from the package's file before the clock), 2
    threads."""
    sys.path.insert(0, str(HERE))
    import duckdb
    from ingest import spatial_extension_path

    con = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "threads": spec["workers"],
        }  # fmt: skip
    )
    con.execute(f"LOAD '{spatial_extension_path()}'")
    Path(spec["out"]).mkdir(parents=True)
    dst = Path(spec["out"]) / "out.parquet"
    args = {"points": spec["points"], "polygons": spec["polygons"]}
    started = time.perf_counter()
    if spec["variant"] == "dwithin":
        utm = f"'EPSG:{UTM}'"
        con.execute(
            "COPY (WITH p AS (SELECT id, geometry, ST_Transform(geometry, 'EPSG:4326', "
            f"{utm}, always_xy := true) AS m FROM read_parquet($points)), q AS (SELECT pid, "
            f"ST_Transform(geometry, 'EPSG:4326', {utm}, always_xy := true) AS m FROM "
            "read_parquet($polygons)) SELECT p.id, p.geometry, q.pid FROM p JOIN q ON "
            f"ST_DWithin(p.m, q.m, {float(spec['distance'])})) TO '{dst}' (FORMAT parquet)",
            args,
        )
    else:
        con.execute(
            # polygons first: DuckDB's spatial join then takes 3.3 s instead of 10.9 s here
            "COPY (SELECT p.id, p.geometry, q.pid FROM read_parquet($polygons) q JOIN "
            "read_parquet($points) p ON ST_Intersects(q.geometry, p.geometry)) "
            f"TO '{dst}' (FORMAT parquet)",
            args,
        )
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "duckdb": duckdb.__version__, "files": [str(dst)]}


CHILDREN = {
    OURS: run_ours,
    GEOPANDAS: run_geopandas,
    DASK: run_dask,
    DUCKDB: run_duckdb,
    "generate": generate,
}


# ----------------------------------------------------------------------------- parent


def table_text(res: dict[str, dict[str, Any]], variant: str) -> str:
    ours = res.get(OURS, {}).get("median")
    rows = [
        f"| {variant}: contender | seconds (median) | pairs | ours is × faster | target | met "
        "| peak RSS of one process, MiB | that process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        r = res.get(name)
        if r is None:
            continue
        secs = r.get("median")
        speedup = secs / ours if (secs and ours and name != OURS) else None
        limit = TARGETS.get(name) if name != OURS else None
        met = None if (limit is None or speedup is None) else speedup >= limit
        peak = r.get("peak_rss")
        who = describe(r.get("peak_process", "? ?")) if peak else "—"
        shown = r.get("note") or ("failed" if secs is None else f"{secs:.2f}")
        pairs = f"{r['pairs']:,}" if "pairs" in r else "—"
        rows.append(
            f"| {LABELS[name]} | {shown} | {pairs} | {fmt_ratio(speedup)} "
            f"| {f'≥ {limit}×' if limit else '—'} | {mark(met)} "
            f"| {mib(peak) if peak else '—'} | `{who}` |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Join benchmark (see the module docstring).")
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--polygons", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distance", type=float, default=100.0, help="metres of the dwithin variant")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="all", help=f"comma-separated among {', '.join(ORDER)}")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--duckdb-python", help="an interpreter with duckdb + the spatial extension")
    add_load_arguments(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.child is not None:
        spec = json.loads(opts.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return 0
    contenders = [c for c in ORDER if opts.only == "all" or c in opts.only.split(",")]
    variants = [v for v in opts.variants.split(",") if v in VARIANTS]

    files = paths(opts)
    if not files["meta"].exists():
        print("generating and ingesting the inputs (untimed) ...", flush=True)
        spec = {"kind": "generate", "points": opts.points, "polygons": opts.polygons,
                "seed": opts.seed}  # fmt: skip
        run_child(Path(__file__), Path(sys.executable), spec, 3600)
    info = json.loads(files["meta"].read_text())
    duck_py = Path(opts.duckdb_python) if opts.duckdb_python else None
    if DUCKDB in contenders and duck_py is None:
        duck_py = ensure_venv(
            DUCKDB_VENV, DUCKDB_PACKAGES, "import duckdb, duckdb_extension_spatial",
            WORK / "duckdb-venv.log",
        )  # fmt: skip
    if opts.wait_for_load is not None:
        wait_for_quiet(opts.wait_for_load, opts.max_wait)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"date: {stamp}\nmachine: {machine()}\npython: {platform.python_version()}")
    print(
        f"input: {info['points']:,} clustered points ({info['points_table']}) x "
        f"{info['polygons']:,} polygons ({info['polygons_table']}), seed {info['seed']}"
    )
    print(f"load average at start (1/5/15 min): {load()}", flush=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    ok = True
    for variant in variants:
        samples: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
        for _ in range(opts.repeats):
            for name in contenders:
                if variant == "dwithin" and name == DASK:
                    continue
                out = OUT / f"{variant}-{name}"
                shutil.rmtree(out, ignore_errors=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                spec = contender_spec(name, variant, opts.distance, files, out,
                                      workers=opts.workers, timeout=opts.timeout,
                                      cluster_dir=CLUSTER_DIR)  # fmt: skip
                python = duck_py if name == DUCKDB else Path(sys.executable)
                try:
                    got = run_child(Path(__file__), python, spec, opts.timeout + 300)
                except RuntimeError as exc:
                    print(f"  {variant} {name}: FAILED {str(exc)[-800:]}", flush=True)
                    continue
                got.update(fingerprint(got["files"]))  # here: the DuckDB venv has no numpy
                print(
                    f"  {variant} {name}: {got['seconds']:.2f} s, {got['pairs']:,} pairs, "
                    f"peak RSS {mib(got['peak_rss'])} MiB (load {load()})"
                    + (f", stages {got['stages']}" if "stages" in got else "")
                    + (f", CPU {got['cpu']:.2f} s" if "cpu" in got else ""),
                    flush=True,
                )
                samples[name].append(got)
        res: dict[str, dict[str, Any]] = {}
        for name, runs in samples.items():
            if variant == "dwithin" and name == DASK:
                res[name] = {"note": "n/a (no distance in dask-geopandas sjoin)"}
                continue
            if not runs:
                res[name] = {}
                continue
            res[name] = {
                "median": statistics.median(r["seconds"] for r in runs),
                "pairs": runs[0]["pairs"],
                "peak_rss": max(r["peak_rss"] for r in runs),
                "peak_process": max(runs, key=lambda r: r["peak_rss"])["peak_process"],
                "samples": runs,
            }
        prints = {(r["pairs"], r["fingerprint"]) for rs in samples.values() for r in rs}
        same = len(prints) == 1
        ok &= same
        results[variant] = res
        print()
        print(table_text(res, variant))
        print(f"\n{variant}: all outputs the same pairs: {same} {sorted(prints)}\n")
    (WORK / "join.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"raw results: {(WORK / 'join.json').relative_to(REPO)}; load at end: {load()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
