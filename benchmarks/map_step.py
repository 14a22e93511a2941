"""Map-step benchmark: ``fused.map(table, udf=...)`` on a 2-worker local cluster against geopandas
in one process and dask-geopandas on a 2-worker ``distributed.LocalCluster``.

Run from the repository root::

    .venv/bin/python benchmarks/map_step.py

One run: ``--points`` (1,000,000) seeded points, uniform over 6.1-11.9°E × 44-50°N, ingested
(setup, untimed, cached) into a table of ``--files`` (16) files × ``--chunks-per-file`` (8)
chunks; the UDF :func:`buffer_area` (to EPSG:32632, buffer 10 m, add the buffer's area as a
column; the output stays in EPSG:32632 for every contender) runs over all of it:

* ``ours``: ``fused.map(table, udf=buffer_area, output_table=...).run_remote()`` +
  ``wait_for_job()`` on fused_celery's ``LocalCluster(workers=2)`` (started and warmed up by a
  small ingest and map before the clock): table read, UDF, output table written and committed;
* ``ours-local``: ``fused.JobConfig(steps=[step]).run_local()`` (the local engine's worker
  processes, started by the call, so inside the clock), no target;
* ``geopandas``: ``gpd.read_parquet(<the original input file>)``, the UDF, ``to_parquet`` of
  one file, in one process;
* ``dask``: ``dask_geopandas.read_parquet(<the table's files>, columns=["id", "value",
  "geometry"])`` (default partitioning: one partition per file), ``map_partitions(buffer_area)``,
  ``to_parquet``, on ``distributed.LocalCluster(n_workers=2, threads_per_worker=1)``
  (started before the clock).

Every contender runs in a fresh child process; the peak RSS of every process of its tree is
sampled (``VmHWM``). After the clock each child reads its output's row count and total area; the
parent checks they agree across contenders (rows equal, total area within 1e-6 relative).
Inputs are cached in ``benchmarks/.work/map-data/`` by size, layout and seed; raw results go to
``benchmarks/.work/map_step.json``. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import platform
import re
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
    fmt_ratio,
    load,
    machine,
    mark,
    mib,
    prefault_memory,
    run_child,
    start_ours,
    wait_for_quiet,
    warm_up_ingest,
)

DATA = WORK / "map-data"
OUT = WORK / "map-out"
CLUSTER_DIR = WORK / "map-cluster"
#: Bump when the generated data change, so cached files are not reused.
DATA_VERSION = 1
BOUNDS = (6.1, 44.0, 11.9, 50.0)  # lon/lat, inside UTM zone 32N
UTM = 32632

OURS, OURS_LOCAL, GEOPANDAS, DASK = "ours", "ours-local", "geopandas", "dask"
ORDER = (OURS, OURS_LOCAL, GEOPANDAS, DASK)
LABELS = {
    OURS: "fused_celery `fused.map(...).run_remote()` + `wait_for_job()`",
    OURS_LOCAL: "fused_celery `JobConfig(steps=[step]).run_local()`",
    GEOPANDAS: "geopandas, one process: read_parquet + UDF + to_parquet",
    DASK: "dask-geopandas read_parquet + map_partitions + to_parquet",
}
INPUTS = {
    OURS: "the table",
    OURS_LOCAL: "the table",
    GEOPANDAS: "the original file",
    DASK: "the table's files",
}
#: contender -> ours' speed-up over it must be at least this.
TARGETS = {GEOPANDAS: 1.7, DASK: 1.1}
RSS_LIMIT = 1e9  # bytes: peak RSS of any one process of ours
AREA_TOLERANCE = 1e-6
#: The columns dask reads from the table: those of the original file. The table's files also
#: hold GeoParquet 1.1's ``bbox`` covering column (a struct), which dask reads as object dtype
#: and then cannot infer a parquet schema for (``ArrowInvalid: Could not convert <object
#: object>``, from the meta's placeholder values) in ``to_parquet``.
COLUMNS = ["id", "value", "geometry"]


def buffer_area(gdf):
    """The benchmark's UDF, the same for every contender."""
    out = gdf.to_crs(32632)
    out["geometry"] = out.buffer(10)
    out["area"] = out.area
    return out


# ----------------------------------------------------------------------------- data


def data_path(n: int, seed: int) -> Path:
    return DATA / f"points-{n}-seed{seed}-v{DATA_VERSION}.parquet"


def table_path(n: int, files: int, chunks_per_file: int, seed: int) -> Path:
    return DATA / f"table-{n}-{files}x{chunks_per_file}-seed{seed}-v{DATA_VERSION}"


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """The input file (GeoParquet, geopandas defaults: ``id`` int64, ``value`` float64,
    ``geometry`` points in EPSG:4326), then the table ingested from it on this machine
    (``run_local``), both atomically; returns their description (saved as JSON)."""
    import geopandas as gpd
    import numpy as np

    import fused_celery as fused

    fused.options.show.enable_tqdm = False
    n, seed, files, per_file = spec["n"], spec["seed"], spec["files"], spec["chunks_per_file"]
    src, table = Path(spec["src"]), Path(spec["table"])
    started = time.perf_counter()
    if not src.exists():
        rng = np.random.default_rng([seed, 3])
        x = rng.uniform(BOUNDS[0], BOUNDS[2], n)
        y = rng.uniform(BOUNDS[1], BOUNDS[3], n)
        gdf = gpd.GeoDataFrame(
            {"id": np.arange(n, dtype=np.int64), "value": rng.normal(100.0, 25.0, n)},
            geometry=gpd.points_from_xy(x, y),
            crs="EPSG:4326",
        )
        tmp = src.with_name(src.name + ".tmp")
        gdf.to_parquet(tmp)
        tmp.replace(src)
    made = time.perf_counter() - started
    tmp_table = table.with_name(table.name + ".tmp")
    shutil.rmtree(tmp_table, ignore_errors=True)
    job = fused.ingest(
        str(src),
        partitioning_maximum_per_file=math.ceil(1.1 * n / files),
        partitioning_maximum_per_chunk=math.ceil(1.1 * n / (files * per_file)),
        partitioning_split_method="median",  # balanced splits: the asked file/chunk counts
    )
    job.run_local(str(tmp_table), overwrite=True)
    tmp_table.replace(table)
    opened = fused.open_table(str(table))
    info = {
        "rows": n,
        "seed": seed,
        "bounds": list(BOUNDS),
        "bytes": src.stat().st_size,
        "files": int(opened.num_files),
        "chunks": int(opened.num_chunks),
        "table_rows": int(opened.num_rows),
        "generate_seconds": made,
        "ingest_seconds": time.perf_counter() - started - made,
    }
    table.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return info


# ----------------------------------------------------------------------------- contenders
# Each runs in a fresh child process (``--child SPEC``); checks run after the clock stops.


def table_files(url: str) -> list[str]:
    """The data files of table ``url`` as local paths."""
    import fused_celery as fused

    return [u.removeprefix("file://") for u in fused.open_table(url).file_urls]


def summarize(files: list[str]) -> dict[str, Any]:
    """Rows, total area (``math.fsum`` of the ``area`` column) and the geometry's CRS code of
    the GeoParquet ``files``."""
    import pyarrow.parquet as pq

    rows, parts = 0, []
    for f in files:
        col = pq.read_table(f, columns=["area"]).column("area")
        rows += len(col)
        parts.append(math.fsum(col.to_numpy()))
    crs = None
    try:
        geo = json.loads(pq.read_schema(files[0]).metadata[b"geo"])
        column = geo["columns"][geo["primary_column"]]
        crs = column.get("crs", {}).get("id", {}).get("code")
    except (KeyError, IndexError, TypeError, ValueError):
        crs = None
    return {"rows_out": rows, "total_area": math.fsum(parts), "files": len(files), "crs": crs}


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """``fused.map(...).run_remote()`` + ``wait_for_job`` on our LocalCluster, started and
    warmed up (a 1,000-point ingest, then a map of the same UDF over it) before the clock."""
    import fused_celery as fused

    t0 = time.perf_counter()
    folder = Path(spec["cluster_dir"])
    cluster = start_ours(spec["workers"], folder)
    udf = fused.udf(buffer_area)
    try:
        warm = warm_up_ingest(folder)
        warm_map = fused.map(warm, udf=udf, output_table=str(folder / "warm-up-map"))
        resp = warm_map.run_remote(overwrite=True).wait_for_job(0.1, timeout=300)
        if resp.status != "Done":
            raise SystemExit(f"warm-up map ended {resp.status}: {resp.get_logs()[-3:]}")
        setup = time.perf_counter() - t0
        started = time.perf_counter()
        step = fused.map(spec["table"], udf=udf, output_table=spec["out"], overwrite=True)
        resp = step.run_remote()
        resp.wait_for_job(poll_interval_seconds=0.1, timeout=spec["timeout"])
        seconds = time.perf_counter() - started
        status = str(resp.status)
        stages = stage_seconds(resp.get_logs())
    finally:
        cluster.stop()
    got = summarize(table_files(spec["out"])) if status == "Done" else {}
    return {"seconds": seconds, "setup_seconds": setup, "status": status, "stages": stages, **got}


def stage_seconds(logs: list[str]) -> dict[str, float]:
    """Seconds from each ``stage NAME: N tasks`` line of the job's log to the next stage line
    (the last one to ``job Done``)."""
    marks: list[tuple[str, datetime.datetime]] = []
    for line in logs:
        stamp, _, text = line.partition(" INFO ")
        found = re.match(r"stage (\w+):", text)
        name = found.group(1) if found else ("end" if text.startswith("job ") else None)
        if name:
            with contextlib.suppress(ValueError):
                marks.append((name, datetime.datetime.fromisoformat(stamp)))
    return {
        a[0]: round((b[1] - a[1]).total_seconds(), 2)
        for a, b in zip(marks, marks[1:], strict=False)
    }


def run_ours_local(spec: dict[str, Any]) -> dict[str, Any]:
    """``fused.JobConfig(steps=[step]).run_local()`` (engine "local": worker processes that the
    call starts and stops)."""
    import geopandas  # noqa: F401  (imports warm, as the cluster's are)

    import fused_celery as fused

    fused.options.show.enable_tqdm = False
    udf = fused.udf(buffer_area)
    started = time.perf_counter()
    step = fused.map(spec["table"], udf=udf, output_table=spec["out"], overwrite=True)
    fused.JobConfig(steps=[step]).run_local()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "status": "Done", **summarize(table_files(spec["out"]))}


def run_geopandas(spec: dict[str, Any]) -> dict[str, Any]:
    """``gpd.read_parquet(<original file>)``, the UDF, ``to_parquet`` of one file (defaults)."""
    import geopandas as gpd

    Path(spec["out"]).mkdir(parents=True)
    dst = Path(spec["out"]) / "out.parquet"
    started = time.perf_counter()
    buffer_area(gpd.read_parquet(spec["src"])).to_parquet(dst)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, **summarize([str(dst)])}


def run_dask(spec: dict[str, Any]) -> dict[str, Any]:
    """``dask_geopandas.read_parquet(<the table's files>, columns=COLUMNS)`` (default
    partitioning: a partition per file),
    ``map_partitions(buffer_area)`` (meta inferred), ``to_parquet(dir)``, on a loopback
    ``distributed.LocalCluster(n_workers=workers, threads_per_worker=1)`` started before the
    clock (no dashboard)."""
    import dask_geopandas
    from distributed import Client, LocalCluster

    files = table_files(spec["table"])
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
        ddf = dask_geopandas.read_parquet(files, columns=COLUMNS)
        ddf.map_partitions(buffer_area).to_parquet(spec["out"])
        seconds = time.perf_counter() - started
        partitions = ddf.npartitions
    finally:
        client.close()
        cluster.close()
    written = sorted(str(p) for p in Path(spec["out"]).glob("*.parquet"))
    return {"seconds": seconds, "setup_seconds": setup, "partitions": partitions,
            **summarize(written)}  # fmt: skip


CHILDREN = {
    OURS: run_ours,
    OURS_LOCAL: run_ours_local,
    GEOPANDAS: run_geopandas,
    DASK: run_dask,
    "generate": generate,
}


# ----------------------------------------------------------------------------- parent


def ensure_data(opts: argparse.Namespace) -> dict[str, Any]:
    """The description of the cached input file and table, making them (in a child) if
    missing."""
    src = data_path(opts.points, opts.seed)
    table = table_path(opts.points, opts.files, opts.chunks_per_file, opts.seed)
    meta = table.with_suffix(".json")
    if table.exists() and meta.exists():
        return json.loads(meta.read_text())
    DATA.mkdir(parents=True, exist_ok=True)
    print(f"making {opts.points:,} points and their table → {table.relative_to(REPO)}", flush=True)
    spec = {
        "kind": "generate",
        "n": opts.points,
        "seed": opts.seed,
        "files": opts.files,
        "chunks_per_file": opts.chunks_per_file,
        "src": str(src),
        "table": str(table),
    }
    info = run_child(Path(__file__), Path(sys.executable), spec, opts.timeout)
    print(
        f"  generated in {info['generate_seconds']:.1f} s, ingested in "
        f"{info['ingest_seconds']:.1f} s: {info['files']} files, {info['chunks']} chunks",
        flush=True,
    )
    return json.loads(meta.read_text())


def table_text(res: dict[str, Any]) -> str:
    """The results as one Markdown table."""
    ours = res.get(OURS, {}).get("median")
    rows = [
        "| contender | input | seconds (median) | ours is × faster | target | met "
        "| peak RSS of one process, MiB | that process | RSS ≤ 1 GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        if name not in res:
            continue
        r = res[name]
        secs = r.get("median")
        speedup = secs / ours if (secs and ours) else None
        limit = TARGETS.get(name)
        target = f"≥ {limit}×" if limit else "—"
        met = None if (limit is None or speedup is None) else speedup >= limit
        peak = r.get("peak_rss")
        rss_met = peak <= RSS_LIMIT if (peak and name in (OURS, OURS_LOCAL)) else None
        shown = "failed" if secs is None else f"{secs:.2f}"
        who = describe(r.get("peak_process", "? ?")) if peak else "—"
        rows.append(
            f"| {LABELS[name]} | {INPUTS[name]} | {shown} | {fmt_ratio(speedup)} | {target} "
            f"| {mark(met)} | {mib(peak) if peak else '—'} | `{who}` | {mark(rss_met)} |"
        )
    return "\n".join(rows)


def agreement(res: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether every sample of every contender has the same row count and total area (within
    :data:`AREA_TOLERANCE` relative) as the first one; lines describing them."""
    samples = [(n, s) for n in ORDER if n in res for s in res[n]["samples"]]
    if not samples:
        return False, ["no output to check"]
    ref_name, ref = samples[0]
    ok, lines = True, []
    for name, s in samples:
        rows, area = s.get("rows_out"), s.get("total_area")
        rel = abs(area - ref["total_area"]) / ref["total_area"] if area is not None else math.inf
        good = rows == ref["rows_out"] and rel <= AREA_TOLERANCE
        ok &= good
        lines.append(
            f"{name}: {rows:,} rows, total area {area:,.3f} m², relative difference to "
            f"{ref_name} {rel:.1e}, CRS EPSG:{s.get('crs')}, {s.get('files')} files"
            f"{'' if good else '  ← DISAGREES'}"
        )
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0].replace("\n", " ").replace("``", ""),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--points", type=int, default=1_000_000, help="points of the input table")
    p.add_argument("--files", type=int, default=16, help="files of the input table")
    p.add_argument("--chunks-per-file", type=int, default=8, help="chunks per file of the table")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated points")
    p.add_argument("--workers", type=int, default=2, help="workers of ours' and dask's clusters")
    p.add_argument("--repeats", type=int, default=3, help="runs of each contender (median)")
    p.add_argument(
        "--only", default="all", help=f"comma-separated contenders: all or among {', '.join(ORDER)}"
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    add_load_arguments(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)

    if opts.child is not None:
        spec = json.loads(opts.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return 0

    chosen = set()
    for item in (s.strip() for s in opts.only.split(",") if s.strip()):
        names = ORDER if item == "all" else (item,)
        for name in names:
            if name not in ORDER:
                p.error(f"unknown contender {name!r}; choose among all, {', '.join(ORDER)}")
            chosen.add(name)
    contenders = [c for c in ORDER if c in chosen]

    info = ensure_data(opts)
    src = data_path(opts.points, opts.seed)
    table = table_path(opts.points, opts.files, opts.chunks_per_file, opts.seed)
    if opts.wait_for_load is not None:
        wait_for_quiet(opts.wait_for_load, opts.max_wait)
    if opts.prefault_gib > 0:
        took = prefault_memory(opts.prefault_gib)
        print(f"prefaulted {opts.prefault_gib:g} GiB of memory in {took:.1f} s")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"date: {stamp}")
    print(f"machine: {machine()}")
    print(f"python: {platform.python_version()} ({sys.executable})")
    print(
        f"input: {info['rows']:,} points, seed {info['seed']}, {info['bytes'] / 2**20:,.0f} MiB, "
        f"{src.relative_to(REPO)}; table: {info['files']} files, {info['chunks']} chunks, "
        f"{table.relative_to(REPO)}"
    )
    print(f"load average at start (1/5/15 min): {load()}", flush=True)

    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    failures: list[str] = []
    for rep in range(opts.repeats):
        for name in contenders:
            out = OUT / name
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            spec = {
                "kind": name,
                "src": str(src),
                "table": str(table),
                "out": str(out),
                "workers": opts.workers,
                "timeout": opts.timeout,
                "cluster_dir": str(CLUSTER_DIR),
            }
            try:
                got = run_child(Path(__file__), Path(sys.executable), spec, opts.timeout + 300)
            except RuntimeError as exc:
                failures.append(f"{name} run {rep + 1}: {exc}")
                print(f"  {name:10s} run {rep + 1}: FAILED\n{exc}", flush=True)
                continue
            finally:
                shutil.rmtree(out, ignore_errors=True)
            if got.get("status", "Done") != "Done" or got.get("rows_out") != info["rows"]:
                failures.append(f"{name} run {rep + 1}: WRONG OUTPUT {json.dumps(got)}")
            samples[name].append(got)
            print(
                f"  {name:10s} run {rep + 1}: {got['seconds']:7.2f} s "
                f"(setup {got.get('setup_seconds', 0):.1f} s, child {got['wall_seconds']:.1f} s)"
                f"  rows {got.get('rows_out', 0):,}  peak RSS {mib(got['peak_rss'])} MiB"
                f"  other processes {got['foreign_cores']:.2f} cores  load {load()}"
                + (f"  stages {got['stages']}" if got.get("stages") else ""),
                flush=True,
            )

    res: dict[str, Any] = {}
    for name, got in samples.items():
        if not got:
            res[name] = {"median": None, "samples": []}
            continue
        top = max(got, key=lambda g: g["peak_rss"])
        res[name] = {
            "median": statistics.median(g["seconds"] for g in got),
            "peak_rss": top["peak_rss"],
            "peak_process": top["peak_process"],
            "samples": got,
        }
    print()
    print(table_text(res))
    print()
    agree, lines = agreement(res)
    print(f"outputs agree (rows equal, total area within {AREA_TOLERANCE:g} relative): "
          f"{'yes' if agree else 'NO'}")  # fmt: skip
    seen = set()
    for line in lines:  # one line per contender (the first sample), plus any disagreement
        name = line.split(":", 1)[0]
        if name not in seen or "DISAGREES" in line:
            print(f"  {line}")
            seen.add(name)
    for name, got in samples.items():
        secs = ", ".join(f"{g['seconds']:.2f}" for g in got)
        cores = ", ".join(f"{g['foreign_cores']:.2f}" for g in got)
        print(f"samples {name}: {secs} s; other processes used {cores} cores")
    print(f"load average at end (1/5/15 min): {load()}")
    if not agree:
        failures.append("outputs disagree")
    for failure in failures:
        print(f"note: {failure}")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "map_step.json").write_text(
        json.dumps(
            {
                "date": stamp,
                "machine": machine(),
                "args": vars(opts),
                "data": info,
                "results": res,
                "agree": agree,
                "failures": failures,
            },
            indent=2,
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
