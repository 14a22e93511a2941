"""Scaling curves: what each workload costs per unit as it grows, printed as a table and drawn
as ``benchmarks/scaling.png`` (matplotlib).

Run from the repository root::

    .venv/bin/python benchmarks/scaling.py            # all curves
    .venv/bin/python benchmarks/scaling.py --parts dispatch --dispatch-sizes 1000,10000

Curves (each point one fresh child process, as in the scripts they reuse):

* dispatch (``dispatch.py``'s cluster and memory child): an unbatched pool of 1,000 / 10,000 /
  100,000 trivial entries (submit + wait + ``results()``) on two workers: microseconds per entry,
  client peak RSS over its baseline, and the Redis memory of the pool's record per entry (the
  sum of ``MEMORY USAGE ... SAMPLES 0`` over its keys, which stay until their TTL; Redis's
  ``used_memory`` before and after also moves with the allocator's free room and with Celery's
  own keys, by more than a 1,000-entry record weighs, so it is kept in the JSON only);
* ingest (``ingest.py``'s ``ours``): 1M / 2M / 5M / 10M seeded points on a 2-worker
  ``LocalCluster``, at fixed ``partitioning_maximum_per_file`` / ``_per_chunk`` (those of 5M
  points into 64 files × 8 chunks: the number of files grows with the input, as a user's would):
  microseconds per row and the peak RSS of the largest process of the tree; the first ingest
  on a fresh cluster ("ingest") and, with ``--ingest-runs`` (3), the median of the next ones on
  the same cluster ("ingest, running cluster");
* map (``map_step.py``'s ``ours``): the 10 m UTM buffer map step over 1M / 5M point tables
  (16 files per million rows): microseconds per row and the largest process's peak RSS;
* join (``join.py``'s ``ours``, ``intersects``): 1M / 5M clustered points joined with the same
  10,000 polygons: microseconds per point and the largest process's peak RSS, each output
  checked pair for pair against ``join.py``'s geopandas contender.

"flat" means the largest per-unit figure within 1.3x of the smallest (issue 19). Raw results go
to ``benchmarks/.work/scaling.json``. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import WORK, add_load_arguments, load, machine, prefault_memory, wait_for_quiet  # noqa: E402

FLAT = 1.3
ALL_PARTS = ("dispatch", "ingest", "map", "join")
PNG = HERE / "scaling.png"


def record_bytes(client: Any, pool_id: str) -> int:
    """Bytes of pool ``pool_id``'s record: ``MEMORY USAGE`` (every element counted) of its keys."""
    from fused_celery.state.keys import pool_key

    keys = list(client.scan_iter(match=pool_key(pool_id, "*"), count=1000))
    return sum(client.memory_usage(k, samples=0) or 0 for k in keys)


def dispatch_curve(sizes: list[int]) -> list[dict[str, Any]]:
    """One unbatched pool per size on ``dispatch.py``'s 2-worker cluster."""
    import dispatch
    import redis

    out = []
    with dispatch.Cluster(2, 2) as cluster:
        client = redis.Redis.from_url(cluster.url)
        dispatch.pool_map(200, None)  # warm-up: pool processes up
        for n in sizes:
            before = client.info("memory")["used_memory"]
            got = dispatch.run_memory(n, False)
            after = client.info("memory")["used_memory"]
            record = record_bytes(client, got["pool_id"])
            row = {
                "n": n,
                "seconds": got["seconds"],
                "us_per_unit": got["seconds"] / n * 1e6,
                "client_rss_mib": got["rss_delta_mb"],
                "redis_bytes_per_entry": record / n,
                "redis_used_memory_per_entry": (after - before) / n,
                "ok": bool(got["ok"]) and got["rows"] == n and record > 0,
            }
            print(f"  dispatch {n:>9,}: {json.dumps(row)}", flush=True)
            out.append(row)
    return out


def ingest_curve(
    sizes: list[int], seed: int, timeout: float, runs: int = 1
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``ingest.py``'s ``ours`` per size, fixed rows per file and per chunk: the first ingest on
    a fresh cluster, and (``runs`` > 1) the median of the ``runs - 1`` that follow on the same
    cluster (its pool processes have seen this work: the cost of a job on a running cluster)."""
    import statistics

    import ingest

    per_file = ingest.SLACK * 5_000_000 / 64
    per_chunk = per_file / 8
    out: list[dict[str, Any]] = []
    steady: list[dict[str, Any]] = []
    for n in sizes:
        info = ingest.ensure_data("points", n, seed, timeout)
        dest = WORK / "scaling-out" / "ingest"
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        spec = {
            "kind": "ours",
            "src": str(ingest.data_path(info["kind"], n, info["seed"])),
            "out": str(dest),
            "n": n,
            "workers": 2,
            "method": "rows",
            "per_file": per_file,
            "per_chunk": per_chunk,
            "timeout": timeout,
            "cluster_dir": str(WORK / "scaling-cluster"),
            "runs": runs,
        }
        got = ingest.run_child(Path(sys.executable), spec, timeout * runs + 300)
        row = {
            "n": n,
            "seconds": got["seconds"],
            "us_per_unit": got["seconds"] / n * 1e6,
            "peak_rss_mib": got["peak_rss"] / 2**20,
            "files": got.get("files"),
            "ok": bool(got.get("ok")),
        }
        print(f"  ingest {n:>11,}: {json.dumps(row)}", flush=True)
        out.append(row)
        later = got.get("runs_seconds", [])[1:]
        if later:
            seconds = statistics.median(later)
            row = {**row, "seconds": seconds, "us_per_unit": seconds / n * 1e6, "runs": later}
            print(f"  ingest {n:>11,}, running cluster: {json.dumps(row)}", flush=True)
            steady.append(row)
    return out, steady


def map_curve(sizes: list[int], seed: int, timeout: float) -> list[dict[str, Any]]:
    """``map_step.py``'s ``ours`` per size (16 files per million rows, 8 chunks per file)."""
    import map_step

    out = []
    for n in sizes:
        files = max(1, round(16 * n / 1_000_000))
        opts = argparse.Namespace(points=n, files=files, chunks_per_file=8, seed=seed,
                                  timeout=timeout)  # fmt: skip
        map_step.ensure_data(opts)
        dest = WORK / "scaling-out" / "map"
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        spec = {
            "kind": map_step.OURS,
            "src": str(map_step.data_path(n, seed)),
            "table": str(map_step.table_path(n, files, 8, seed)),
            "out": str(dest),
            "workers": 2,
            "timeout": timeout,
            "cluster_dir": str(WORK / "scaling-cluster"),
        }
        got = map_step.run_child(Path(map_step.__file__), Path(sys.executable), spec, timeout + 300)
        row = {
            "n": n,
            "seconds": got["seconds"],
            "us_per_unit": got["seconds"] / n * 1e6,
            "peak_rss_mib": got["peak_rss"] / 2**20,
            "ok": got.get("status") == "Done" and got.get("rows_out") == n,
        }
        print(f"  map {n:>11,}: {json.dumps(row)}", flush=True)
        out.append(row)
    return out


def join_curve(sizes: list[int], seed: int, timeout: float) -> list[dict[str, Any]]:
    """``join.py``'s ``ours`` (points-in-polygon, ``intersects``) per number of clustered points,
    against its 10,000 polygons; each output checked pair for pair against ``join.py``'s
    geopandas contender on the same inputs (count and fingerprint)."""
    import join

    out = []
    for n in sizes:
        sizes_spec = {"points": n, "polygons": 10_000, "seed": seed}
        files = join.paths(sizes_spec)
        if not files["meta"].exists():
            join.run_child(Path(join.__file__), Path(sys.executable),
                           {"kind": "generate", **sizes_spec}, 3600)  # fmt: skip
        got: dict[str, dict[str, Any]] = {}
        for name in (join.OURS, join.GEOPANDAS):
            dest = WORK / "scaling-out" / f"join-{name}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            spec = join.contender_spec(
                name, "intersects", None, files, dest,
                workers=2, timeout=timeout, cluster_dir=WORK / "scaling-cluster",
            )  # fmt: skip
            res = join.run_child(Path(join.__file__), Path(sys.executable), spec, timeout + 300)
            got[name] = {**res, **join.fingerprint(res["files"])}
        ours, peer = got[join.OURS], got[join.GEOPANDAS]
        row = {
            "n": n,
            "seconds": ours["seconds"],
            "us_per_unit": ours["seconds"] / n * 1e6,
            "peak_rss_mib": ours["peak_rss"] / 2**20,
            "pairs": ours["pairs"],
            "ok": (ours["pairs"], ours["fingerprint"]) == (peer["pairs"], peer["fingerprint"]),
        }
        print(f"  join {n:>11,}: {json.dumps(row)}", flush=True)
        out.append(row)
    return out


def spread(rows: list[dict[str, Any]], key: str) -> float:
    """Largest over smallest of ``key`` across ``rows`` (1.0 when fewer than two)."""
    values = [r[key] for r in rows if r.get(key) is not None and r[key] > 0]
    return max(values) / min(values) if len(values) > 1 else 1.0


def report(curves: dict[str, list[dict[str, Any]]]) -> str:
    """The curves as a Markdown table, with each curve's spread and whether it is flat."""
    lines = [
        "| curve | size | seconds | µs per unit | memory | ok |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in curves.items():
        for r in rows:
            if name == "dispatch":
                memory = (
                    f"client +{r['client_rss_mib']:.0f} MiB; "
                    f"Redis record {r['redis_bytes_per_entry']:,.0f} B/entry"
                )
            else:
                memory = f"peak RSS {r['peak_rss_mib']:.0f} MiB (largest process)"
            lines.append(
                f"| {name} | {r['n']:,} | {r['seconds']:.2f} | {r['us_per_unit']:.1f} | "
                f"{memory} | {'yes' if r['ok'] else '**no**'} |"
            )
    lines.append("")
    for name, rows in curves.items():
        t = spread(rows, "us_per_unit")
        mem_key = "redis_bytes_per_entry" if name == "dispatch" else "peak_rss_mib"
        m = spread(rows, mem_key)
        lines.append(
            f"- {name}: time per unit spread {t:.2f}× ({'flat' if t <= FLAT else '**not flat**'}"
            f" within {FLAT}×); {mem_key} spread {m:.2f}× "
            f"({'flat' if m <= FLAT else '**not flat**'})"
        )
    return "\n".join(lines)


def plot(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Per-unit time (top) and memory (bottom) against size, one column per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, rows in curves.items() if rows]
    fig, axes = plt.subplots(
        2, len(names), figsize=(5.5 * len(names), 7.5), squeeze=False, layout="constrained"
    )
    for col, name in enumerate(names):
        rows = curves[name]
        xs = [r["n"] for r in rows]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(xs, [r["us_per_unit"] for r in rows], marker="o")
        lowest = min(r["us_per_unit"] for r in rows)
        top.axhline(lowest * FLAT, color="grey", linestyle="--", linewidth=1, label="1.3× best")
        top.set_title(name)
        top.set_ylabel("µs per entry" if name == "dispatch" else "µs per row")
        top.set_ylim(bottom=0)
        top.legend(loc="lower right", fontsize=8)
        if name == "dispatch":
            bottom.plot(xs, [r["redis_bytes_per_entry"] for r in rows], marker="o",
                        label="Redis bytes/entry")  # fmt: skip
            bottom.set_ylabel("Redis: bytes of the record per entry")
            twin = bottom.twinx()
            twin.plot(xs, [r["client_rss_mib"] for r in rows], marker="s", color="tab:orange")
            twin.set_ylabel("client peak RSS over baseline, MiB", color="tab:orange")
        else:
            bottom.plot(xs, [r["peak_rss_mib"] for r in rows], marker="o")
            bottom.set_ylabel("peak RSS of the largest process, MiB")
        bottom.set_ylim(bottom=0)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xlabel("entries" if name == "dispatch" else "rows")
            ax.grid(True, alpha=0.3)
    fig.suptitle("fused-celery: cost per unit as work grows (2 CPUs)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sizes_arg(text: str) -> list[int]:
    """``1000,10000`` → ``[1000, 10000]``."""
    return [int(float(s)) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--parts", default=",".join(ALL_PARTS), help="curves to run")
    p.add_argument("--dispatch-sizes", type=sizes_arg, default=[1_000, 10_000, 100_000])
    p.add_argument(
        "--ingest-sizes", type=sizes_arg, default=[1_000_000, 2_000_000, 5_000_000, 10_000_000]
    )
    p.add_argument(
        "--ingest-runs", type=int, default=3,
        help="ingests per size on one cluster: the first (a fresh cluster) is the 'ingest' curve, "
        "the median of the others the 'ingest, running cluster' curve (default 3; 1: first only)",
    )  # fmt: skip
    p.add_argument("--map-sizes", type=sizes_arg, default=[1_000_000, 5_000_000])
    p.add_argument("--join-sizes", type=sizes_arg, default=[1_000_000, 5_000_000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per point")
    p.add_argument(
        "--png", type=Path, default=None,
        help="where the plot goes (default: benchmarks/scaling.png for all curves, "
        "benchmarks/scaling-<parts>.png for some)",
    )  # fmt: skip
    add_load_arguments(p)
    opts = p.parse_args(argv)
    parts = {s.strip() for s in opts.parts.split(",") if s.strip()}
    if opts.wait_for_load is not None:
        wait_for_quiet(opts.wait_for_load, opts.max_wait)
    if opts.prefault_gib > 0:
        print(f"prefaulted {opts.prefault_gib:g} GiB in {prefault_memory(opts.prefault_gib):.1f} s")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"date: {stamp}\nmachine: {machine()}\nload average at start: {load()}", flush=True)
    curves: dict[str, list[dict[str, Any]]] = {}
    if "dispatch" in parts:
        curves["dispatch"] = dispatch_curve(opts.dispatch_sizes)
    if "ingest" in parts:
        first, steady = ingest_curve(opts.ingest_sizes, opts.seed, opts.timeout, opts.ingest_runs)
        curves["ingest"] = first
        if steady:
            curves["ingest, running cluster"] = steady
    if "map" in parts:
        curves["map"] = map_curve(opts.map_sizes, opts.seed, opts.timeout)
    if "join" in parts:
        curves["join"] = join_curve(opts.join_sizes, opts.seed, opts.timeout)
    print()
    print(report(curves))
    named = "-".join(part for part in ALL_PARTS if part in parts)
    png = opts.png or (PNG if set(ALL_PARTS) <= parts else HERE / f"scaling-{named}.png")
    plot(curves, png)
    shown = png.resolve()
    if shown.is_relative_to(HERE.parent):  # a path in the repository: shown relative to it
        shown = shown.relative_to(HERE.parent)
    print(f"\nplot: {shown}; load average at end: {load()}")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "scaling.json").write_text(json.dumps({"date": stamp, "curves": curves}, indent=2))
    bad = [f"{name} {r['n']}" for name, rows in curves.items() for r in rows if not r["ok"]]
    for item in bad:
        print(f"note: WRONG OUTPUT at {item}")
    return (
        1 if bad or any(math.isnan(r["seconds"]) for rows in curves.values() for r in rows) else 0
    )


if __name__ == "__main__":
    sys.exit(main())
