"""Dispatch benchmark: the Celery engine's ``JobPool`` against raw Celery, on one machine.

Run from the repository root::

    .venv/bin/python benchmarks/dispatch.py

In one run it starts two private ``redis-server`` processes on loopback and two clusters:

* ours: two ``celery worker`` processes as the project ships them
  (``fused_celery.cluster.local_cluster.worker_command``: task events on for Flower, acks late,
  prefetch 1; Redis with AOF on, as ``fused-celery up`` starts it), ``--concurrency 2`` each by
  default, which also import ``benchmarks/_dispatch_tasks.py`` (``--include``; the raw task
  ``bench.noop`` is registered on the project's app, so "raw Celery, project settings" runs under
  the same settings as the pool);
* the out-of-the-box peer: two ``celery -A _plain_celery worker`` processes of a plain ``Celery``
  app with Celery's defaults (prefetch 4, acks on receipt, no events) on a Redis without AOF,
  the same ``--concurrency``;
* the floor peer, on that same Redis (database 1): two ``celery -A _plain_celery:reliable_app
  worker`` processes of a plain app with only the project's reliability settings (acks late,
  reject on worker lost, prefetch 1) and no task events: what Celery itself costs per message
  with the delivery guarantees the pool needs, apart from events and AOF.

Then it measures, with the implementations interleaved and every throughput figure the median of
``--repeats`` runs (default 3):

* (a) 10,000 trivial entries, one message each: raw ``group(noop.s(i) ...).apply_async().get()``
  on the three clusters against ``udf.map(range(n), engine="remote", cache=False).results()``;
* (b) the same, batched: Celery's ``noop.chunks(zip(range(n)), 100)`` (defaults) against the pool
  with ``n_processes_per_worker=100`` (100 entries per message, 100 threads);
* (c) single-entry round trips, ``--latency-n`` (500) sequential calls per run: raw
  ``noop.apply_async((x,)).get()`` (the three clusters) against ``udf(x, engine="remote",
  cache=False)``, alternating in blocks of ``--latency-block`` (50) calls; median and p95 over all
  calls of all runs;
* (d) client memory of a 100,000-entry pool (submit + wait + ``results()``, unbatched), in a
  fresh subprocess: peak RSS over the RSS after imports and one warm-up call (``ru_maxrss``);
  with ``--tracemalloc`` also the ``tracemalloc`` peak, in a second subprocess; and Redis
  memory per finished entry (``used_memory`` after the pool finished, minus before it was
  submitted, divided by the entries: what a finished pool's record costs until it expires);
* (e) the broker's own floor: a bare kombu loop (no Celery, no worker, no result) that publishes
  ``--n`` messages to a queue and consumes them in one process, and a bare Redis round trip
  (``LPUSH`` + ``BRPOP``), on the plain Redis: what no Celery-based dispatch can go below.
* (f) Celery's own floor under the project's settings (part of (a)): ``--n`` messages of the
  result-less ``bench.floor`` sent as a ``group`` to the project's workers, timed until the
  queue and kombu's ``unacked`` hash are empty (:func:`celery_floor`); each (a) target is
  printed as the throughput it needs over that floor. The same for a second floor,
  :func:`checked_floor`: ``bench.floor_checked`` adds to each task the least the
  architecture's reliability rules cost, a durable cancel check before the entry and a result
  write after it (one waited Redis round trip each); (c) times its latency twin
  ``bench.noop_checked`` (the raw call plus the cancel check) beside the others.

Each figure is printed with its ratio to every peer and the targets of issue 19. Raw samples go
to ``benchmarks/.work/dispatch.json``. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
sys.path.insert(0, str(HERE))

from _common import load, wait_for_quiet  # noqa: E402

import fused_celery as fused  # noqa: E402
from fused_celery.options import options as fc_options  # noqa: E402

fc_options.show.enable_tqdm = False

RAW, POOL, BATCHED = "raw Celery group", "JobPool", "JobPool, n_processes_per_worker=100"
RAW_DEF = "raw Celery group, Celery defaults"
RAW_REL = "raw Celery group, acks late + prefetch 1, no events"
FLOOR = "Celery floor: group, project settings, no results"
CHUNKS = "Celery chunks(100), Celery defaults"
CHECKED = "Celery floor + cancel check + result write"
PEERS = {
    RAW: "raw Celery, project settings",
    RAW_REL: "raw Celery, acks late + prefetch 1 only",
    RAW_DEF: "raw Celery, Celery's defaults",
    FLOOR: "Celery floor, project settings (no results, no record)",
}


@fused.udf
def trivial(x: int = 0):
    return x


# ----------------------------------------------------------------------------- helpers


def rss_mb() -> float:
    """This process's current resident set size in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def set_broker(url: str) -> None:
    """Point the options (and the environment of children) at the benchmark's Redis."""
    os.environ["FUSED_CELERY_BROKER_URL"] = url
    os.environ["FUSED_CELERY_RESULT_BACKEND"] = url
    fc_options.broker_url = url
    fc_options.result_backend = url


# ----------------------------------------------------------------------------- cluster


class Cluster:
    """A private Redis on loopback plus ``workers`` celery workers (``concurrency`` each)."""

    def __init__(self, workers: int, concurrency: int) -> None:
        self.workers, self.concurrency = workers, concurrency
        self.dir = Path(tempfile.mkdtemp(prefix="fc-dispatch-"))
        self.procs: list[Any] = []
        self.server: Any = None

    def __enter__(self) -> Cluster:
        from fused_celery.cluster.local_cluster import child_env, wait_for_workers, worker_command
        from fused_celery.cluster.processes import ManagedProcess
        from fused_celery.cluster.redis_server import RedisServer

        self.server = RedisServer(self.dir / "redis", appendonly=True).start()
        self.url = self.server.url
        set_broker(self.url)
        path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        env = child_env(self.url, PYTHONPATH=path)
        names = [f"bench{i}@dispatch" for i in range(self.workers)]
        for name in names:
            cmd = worker_command(
                name, concurrency=self.concurrency, loglevel="WARNING",
                extra=["--include", "_dispatch_tasks"],
            )  # fmt: skip
            self.procs.append(
                ManagedProcess(name, cmd, env=env, log_path=self.dir / f"{name}.log").start()
            )
        wait_for_workers(self.url, names, timeout=90, processes=dict(zip(names, self.procs)))
        return self

    def __exit__(self, *exc: object) -> None:
        from fused_celery.cluster.processes import stop_all

        stop_all(self.procs)
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PlainCluster:
    """A second private Redis (no AOF) plus ``workers`` workers of each plain Celery app
    (``_plain_celery``: Celery's defaults on database 0; ``_plain_celery:reliable_app``: acks
    late + prefetch 1, no events, on database 1)."""

    def __init__(self, workers: int, concurrency: int) -> None:
        self.workers, self.concurrency = workers, concurrency
        self.dir = Path(tempfile.mkdtemp(prefix="fc-dispatch-plain-"))
        self.procs: list[Any] = []
        self.server: Any = None

    def __enter__(self) -> PlainCluster:
        from fused_celery.cluster.processes import ManagedProcess
        from fused_celery.cluster.redis_server import RedisServer

        self.server = RedisServer(self.dir / "redis").start()
        os.environ["BENCH_PLAIN_URL"] = self.server.url
        path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "BENCH_PLAIN_URL": self.server.url}
        apps = (("_plain_celery", "plain"), ("_plain_celery:reliable_app", "reliable"))
        for spec, prefix in apps:
            for i in range(self.workers):
                name = f"{prefix}{i}@dispatch"
                cmd = [
                    sys.executable, "-m", "celery", "-A", spec, "worker",
                    "--hostname", name, "--concurrency", str(self.concurrency),
                    "--loglevel", "WARNING",
                ]  # fmt: skip
                self.procs.append(
                    ManagedProcess(name, cmd, env=env, log_path=self.dir / f"{name}.log").start()
                )
        from _plain_celery import app, reliable_app

        for each in (app, reliable_app):
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                replies = each.control.ping(timeout=1.0) or []
                if len(replies) >= self.workers:
                    break
            else:
                raise RuntimeError(f"plain Celery workers did not answer; logs in {self.dir}")
        return self

    def __exit__(self, *exc: object) -> None:
        from fused_celery.cluster.processes import stop_all

        stop_all(self.procs)
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- measurements


def raw_group(n: int) -> dict[str, Any]:
    from _dispatch_tasks import NOOP
    from celery import group, signature

    from fused_celery.celery_app import get_app

    app = get_app()
    started = time.perf_counter()
    result = group(signature(NOOP, args=(i,), app=app) for i in range(n)).apply_async()
    values = result.get(timeout=600)
    seconds = time.perf_counter() - started
    result.forget()
    return {"seconds": seconds, "rows": len(values), "checksum": sum(values)}


def celery_floor(n: int) -> dict[str, Any]:
    """Celery's own floor under the project's settings: ``n`` messages of the result-less
    ``bench.floor`` (``ignore_result=True``, like ``run_entries``) published as a ``group`` by
    the pool's publishing app (no ``task-sent`` events, like the pool) to the project's workers
    (events on, acks late, prefetch 1, AOF); the clock stops when the queue and kombu's unacked
    hash are both empty (two reads 5 ms apart), i.e. every message was acked after its task
    ran. No record, no result: what a pool that sends one message per entry cannot go below.
    ``rows``: the tasks the workers ran, from their ``inspect().stats()`` totals before and
    after (no checksum: there are no results)."""
    import redis
    from _dispatch_tasks import FLOOR
    from celery import group, signature

    from fused_celery.celery_app import get_app

    app = get_app(results=False)
    client = redis.Redis.from_url(fc_options.broker_url)
    before = _floor_total(app)
    started = time.perf_counter()
    group(signature(FLOOR, args=(i,), app=app) for i in range(n)).apply_async()
    published = time.perf_counter() - started
    seconds = _until_drained(client, started, "Celery floor")
    client.close()
    return {"seconds": seconds, "rows": _floor_total(app) - before, "publish": published}


def checked_floor(n: int) -> dict[str, Any]:
    """Celery's floor plus the least the architecture's reliability rules add per entry: ``n``
    messages of ``bench.floor_checked`` (a durable cancel check before the entry and a result
    write after it, one waited Redis round trip each, see ``_dispatch_tasks``) sent as a
    ``group`` by the pool's publishing app to the project's workers, timed like
    :func:`celery_floor` (queue and ``unacked`` empty). ``rows`` and ``checksum``: the
    outcomes the tasks wrote, read back after the clock."""
    import uuid

    import redis
    from _dispatch_tasks import FLOOR_CHECKED
    from celery import group, signature

    from fused_celery.celery_app import get_app

    app = get_app(results=False)
    client = redis.Redis.from_url(fc_options.broker_url)
    prefix = f"bench:checked:{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    group(signature(FLOOR_CHECKED, args=(prefix, i), app=app) for i in range(n)).apply_async()
    seconds = _until_drained(client, started, "checked floor")
    outcomes = client.hvals(f"{prefix}:outcome")
    client.delete(f"{prefix}:outcome")
    client.close()
    return {"seconds": seconds, "rows": len(outcomes), "checksum": sum(map(int, outcomes))}


def _until_drained(client: Any, started: float, what: str) -> float:
    """Seconds from ``started`` until the default queue and kombu's ``unacked`` hash were both
    empty in two reads 5 ms apart (every message acked after its task ran)."""
    from fused_celery.options import DEFAULT_QUEUE

    empty_since = None
    while True:
        with client.pipeline(transaction=False) as pipe:
            queued, unacked = pipe.llen(DEFAULT_QUEUE).hlen("unacked").execute()
        now = time.perf_counter()
        if queued or unacked:
            empty_since = None
        elif empty_since is None:
            empty_since = now
        else:
            return empty_since - started
        if now - started > 600:
            raise RuntimeError(f"{what}: {queued} queued, {unacked} unacked after 600 s")
        time.sleep(0.005)


def _floor_total(app: Any) -> int:
    """How many ``bench.floor`` tasks the project's workers have run (their stats)."""
    from _dispatch_tasks import FLOOR

    stats = app.control.inspect(timeout=2.0).stats() or {}
    return sum(int((s.get("total") or {}).get(FLOOR, 0)) for s in stats.values())


def plain_group(n: int, reliable: bool = False) -> dict[str, Any]:
    """Raw ``group`` on the plain app (Celery's defaults; ``reliable``: acks late + prefetch 1)."""
    from _plain_celery import noop, reliable_noop
    from celery import group

    if reliable:
        noop = reliable_noop

    started = time.perf_counter()
    result = group(noop.s(i) for i in range(n)).apply_async()
    values = result.get(timeout=600)
    seconds = time.perf_counter() - started
    result.forget()
    return {"seconds": seconds, "rows": len(values), "checksum": sum(values)}


def plain_chunks(n: int, size: int = 100) -> dict[str, Any]:
    """Celery's ``task.chunks(..., size)`` on the plain app: ``size`` calls per message."""
    from _plain_celery import noop

    started = time.perf_counter()
    result = noop.chunks(((i,) for i in range(n)), size).apply_async()
    values = [v for part in result.get(timeout=600) for v in part]
    seconds = time.perf_counter() - started
    result.forget()
    return {"seconds": seconds, "rows": len(values), "checksum": sum(values)}


def plain_latency(n: int, offset: int, reliable: bool = False) -> list[float]:
    """Sequential ``apply_async().get()`` round trips on the plain app (``reliable``: acks
    late + prefetch 1)."""
    from _plain_celery import noop, reliable_noop

    if reliable:
        noop = reliable_noop

    out = []
    for i in range(n):
        t0 = time.perf_counter()
        value = noop.apply_async((offset + i,)).get(timeout=60)
        out.append(time.perf_counter() - t0)
        assert value == offset + i, (value, offset + i)
    return out


def kombu_floor(n: int, rtt_n: int = 2000) -> dict[str, float]:
    """(e) The broker's floor on the plain Redis: a bare kombu publish-then-consume loop of
    ``n`` JSON messages in one process (messages/s, and publish and consume apart), and the
    median of ``rtt_n`` bare Redis round trips (``LPUSH`` then ``BRPOP`` of one list, ms)."""
    import redis
    from kombu import Connection, Exchange, Queue

    url = os.environ["BENCH_PLAIN_URL"]
    queue = Queue("floor", Exchange("floor", type="direct"), routing_key="floor")
    got = 0
    with Connection(url) as conn:
        producer = conn.Producer(serializer="json")
        started = time.perf_counter()
        for i in range(n):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key="floor",
                             declare=[queue] if i == 0 else None)  # fmt: skip
        published = time.perf_counter() - started
        sq = conn.SimpleQueue(queue)
        for _ in range(n):
            message = sq.get(block=True, timeout=30)
            message.ack()
            got += 1
        seconds = time.perf_counter() - started
        sq.close()
    client = redis.Redis.from_url(url)
    rtts = []
    for i in range(rtt_n):
        t0 = time.perf_counter()
        client.lpush("floor:rtt", i)
        client.brpop(["floor:rtt"], timeout=5)
        rtts.append(time.perf_counter() - t0)
    client.delete("floor:rtt")
    assert got == n, (got, n)
    return {
        "kombu_per_s": n / seconds,
        "kombu_publish_per_s": n / published,
        "kombu_consume_per_s": n / (seconds - published),
        "rtt_ms": statistics.median(rtts) * 1e3,
    }


def pool_map(n: int, batch: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    pool = trivial.map(
        range(n), engine="remote", cache=False, n_processes_per_worker=batch, _quiet=True
    )
    values = pool.results()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": len(values), "checksum": sum(values)}


def raw_latency(n: int, offset: int) -> list[float]:
    from _dispatch_tasks import NOOP
    from celery import signature

    from fused_celery.celery_app import get_app

    sig = signature(NOOP, app=get_app())
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        value = sig.apply_async((offset + i,)).get(timeout=60)
        out.append(time.perf_counter() - t0)
        assert value == offset + i, (value, offset + i)
    return out


def checked_latency(n: int, offset: int) -> list[float]:
    """:func:`raw_latency` of ``bench.noop_checked``: the raw call plus the durable cancel check
    (one waited Redis round trip in the task) that the architecture asks before an entry runs."""
    from _dispatch_tasks import NOOP_CHECKED
    from celery import signature

    from fused_celery.celery_app import get_app

    sig = signature(NOOP_CHECKED, app=get_app())
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        value = sig.apply_async(("bench:checked:latency", offset + i)).get(timeout=60)
        out.append(time.perf_counter() - t0)
        assert value == offset + i, (value, offset + i)
    return out


def pool_latency(n: int, offset: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        value = trivial(offset + i, engine="remote", cache=False)
        out.append(time.perf_counter() - t0)
        assert value == offset + i, (value, offset + i)
    return out


def memory_child(n: int, trace: bool) -> dict[str, Any]:
    """In a fresh process: memory for an ``n``-entry pool (submit + wait + results)."""
    import redis

    trivial(0, engine="remote", cache=False)  # warm imports and connections
    server = redis.Redis.from_url(fc_options.broker_url)
    redis_before = server.info("memory")["used_memory"]
    base = rss_mb()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    pool = trivial.map(range(n), engine="remote", cache=False, _quiet=True)
    pool.wait()
    values = pool.results()
    seconds = time.perf_counter() - started
    out = {"seconds": seconds, "rows": len(values), "ok": sum(values) == n * (n - 1) // 2}
    out["pool_id"] = pool.id
    out["redis_bytes_per_entry"] = (server.info("memory")["used_memory"] - redis_before) / n
    if trace:
        out["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    else:
        out["rss_delta_mb"] = peak_rss_mb() - base
        out["rss_base_mb"] = base
    return out


def run_memory(n: int, trace: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__)), "--memory-child", str(n)]
    if trace:
        cmd.append("--trace")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def table(res: dict[str, Any], n: int, lat_n: int, mem_n: int) -> str:
    """The results as a Markdown table: each of ours against each peer, with issue 19's targets
    (rows of the parts that ran)."""
    lat = res.get("latency") or {}
    mem = res.get("memory") or {}
    floor = res.get("floor") or {}
    eps = {
        k: n / res[k]["median"]
        for k in (RAW, RAW_REL, RAW_DEF, FLOOR, CHECKED, CHUNKS, POOL, BATCHED)
        if k in res
    }
    rows = [
        "| measurement | peer | peer | ours | ours ÷ peer | target | met |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(
        what: str, peer: str, p: str, o: str, ratio: str, target: str, met: bool | None
    ) -> None:
        mark = "—" if met is None else ("yes" if met else "**no**")
        rows.append(f"| {what} | {peer} | {p} | {o} | {ratio} | {target} | {mark} |")

    def speed(what: str, ours: str, peer: str, target: float | None) -> None:
        if ours in eps and peer in eps:
            ratio = eps[ours] / eps[peer]
            row(
                what, peer, f"{eps[peer]:,.0f}", f"{eps[ours]:,.0f}", f"{ratio:.2f}×",
                f"≥ {target}×" if target else "—", None if target is None else ratio >= target,
            )  # fmt: skip

    speed(f"(a) {n:,} trivial, unbatched: entries/s", POOL, RAW, 2.0)
    speed(f"(a) {n:,} trivial, unbatched: entries/s", POOL, RAW_DEF, 1.5)
    speed(f"(a) {n:,} trivial, unbatched: entries/s", POOL, RAW_REL, None)
    speed(f"(a) {n:,} trivial, unbatched: entries/s", POOL, FLOOR, None)
    speed(f"(a) {n:,} trivial, unbatched: entries/s", POOL, CHECKED, None)
    for floor_name in (FLOOR, CHECKED):
        for peer, target in ((RAW, 2.0), (RAW_DEF, 1.5)):
            if floor_name in eps and peer in eps:  # what the target asks, against a floor
                row(
                    f"(f) the target ({target}× {peer}) ÷ {floor_name}", floor_name,
                    f"{eps[floor_name]:,.0f}", f"{target * eps[peer]:,.0f} needed",
                    f"{target * eps[peer] / eps[floor_name]:.2f}×", "—", None,
                )  # fmt: skip
    speed(f"(b) {n:,} trivial, 100 per message: entries/s", BATCHED, CHUNKS, 1.2)
    speed(f"(b) {n:,} trivial, 100 per message: entries/s", BATCHED, RAW, None)
    if POOL in lat:
        for peer, target in ((RAW, 1.0), (CHECKED, None), (RAW_DEF, None), (RAW_REL, None)):
            if peer not in lat:
                continue
            for stat in ("median", "p95"):
                ratio = lat[POOL][stat] / lat[peer][stat]
                goal = target if stat == "median" else None
                row(
                    f"(c) single entry, {lat_n} sequential: {stat} ms", peer,
                    f"{lat[peer][stat] * 1e3:.2f}", f"{lat[POOL][stat] * 1e3:.2f}",
                    f"{ratio:.2f}×", f"≤ {goal}×" if goal else "—",
                    None if goal is None else ratio <= goal,
                )  # fmt: skip
    if floor:
        if POOL in eps:
            row(
                f"(e) broker floor: bare kombu publish+consume, {n:,} msgs/s", "kombu",
                f"{floor['kombu_per_s']:,.0f}", f"{eps[POOL]:,.0f}",
                f"{eps[POOL] / floor['kombu_per_s']:.2f}×", "—", None,
            )  # fmt: skip
        if POOL in lat:
            row(
                "(e) broker floor: bare Redis LPUSH+BRPOP round trip, median ms", "redis",
                f"{floor['rtt_ms']:.3f}", f"{lat[POOL]['median'] * 1e3:.2f}",
                f"{lat[POOL]['median'] * 1e3 / floor['rtt_ms']:.1f}×", "—", None,
            )  # fmt: skip
    if not mem_n:
        return "\n".join(rows)
    rss = mem.get("rss_delta_mb")
    traced = mem.get("traced_peak_mb")
    row(
        f"(d) client memory, {mem_n:,}-entry pool: peak RSS over baseline, MiB", "—", "—",
        f"{rss:,.0f}" if rss is not None else "n/a", "—", "≤ 500 MB",
        None if rss is None else rss * 1.048576 <= 500,
    )  # fmt: skip
    per_entry = mem.get("redis_bytes_per_entry")
    row(
        "(d) Redis memory per finished entry, bytes", "—", "—",
        f"{per_entry:,.0f}" if per_entry is not None else "n/a", "—", "—", None,
    )  # fmt: skip
    row(
        "(d) client memory: tracemalloc peak, MiB", "—", "—",
        f"{traced:,.0f}" if traced is not None else "n/a", "—", "—", None,
    )  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--n", type=int, default=10_000, help="entries of (a) and (b)")
    p.add_argument("--latency-n", type=int, default=500, help="sequential calls per run of (c)")
    p.add_argument(
        "--latency-block",
        type=int,
        default=50,
        help="(c) alternates raw and JobPool calls in blocks of this many (default 50), so that "
        "both sides see the same machine load; --latency-block 500 runs each side's 500 in one go",
    )
    p.add_argument("--memory-n", type=int, default=100_000, help="entries of (d); 0 skips it")
    p.add_argument(
        "--parts",
        default="abcde",
        help="measurements to run, e.g. 'c' for latency only (default abcde; 'a' or 'b' also "
        "runs the project-settings raw group, for the ratios)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    p.add_argument(
        "--tracemalloc", action="store_true", help="(d): also a tracemalloc run (slower)"
    )
    p.add_argument(
        "--wait-for-load",
        type=float,
        metavar="LOAD",
        help="first wait (up to --max-wait s) until the 1-minute load average is below LOAD",
    )
    p.add_argument("--max-wait", type=float, default=1800, help="seconds --wait-for-load waits")
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)

    if opts.memory_child is not None:
        print(json.dumps(memory_child(opts.memory_child, opts.trace)))
        return 0
    if opts.wait_for_load is not None:
        wait_for_quiet(opts.wait_for_load, opts.max_wait)
    WORK.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"date: {stamp}")
    print(f"machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}")
    print(
        f"python: {platform.python_version()}; cluster: {opts.workers} workers × "
        f"--concurrency {opts.concurrency}, private redis-server on 127.0.0.1"
    )
    print(f"load average at start (1/5/15 min): {load()}", flush=True)

    n = opts.n
    expected = n * (n - 1) // 2
    samples: dict[str, list[float]] = {
        RAW: [], RAW_REL: [], RAW_DEF: [], FLOOR: [], CHECKED: [], POOL: [], CHUNKS: [],
        BATCHED: [],
    }  # fmt: skip
    lat: dict[str, list[float]] = {RAW: [], CHECKED: [], RAW_REL: [], RAW_DEF: [], POOL: []}
    failures: list[str] = []
    parts = set(opts.parts.lower())
    runs = {
        RAW: lambda: raw_group(n),
        RAW_REL: lambda: plain_group(n, reliable=True),
        RAW_DEF: lambda: plain_group(n),
        FLOOR: lambda: celery_floor(n),
        CHECKED: lambda: checked_floor(n),
        POOL: lambda: pool_map(n, None),
        CHUNKS: lambda: plain_chunks(n, 100),
        BATCHED: lambda: pool_map(n, 100),
    }
    if "a" not in parts:
        del runs[POOL], runs[RAW_DEF], runs[RAW_REL], runs[FLOOR], runs[CHECKED]
    if "b" not in parts:
        del runs[BATCHED], runs[CHUNKS]
    if not parts & {"a", "b"}:
        del runs[RAW]
    mem_n = opts.memory_n if "d" in parts else 0
    res: dict[str, Any] = {}
    with Cluster(opts.workers, opts.concurrency), PlainCluster(opts.workers, opts.concurrency):
        raw_group(50), celery_floor(50), checked_floor(50)  # warm-up
        pool_map(50, None), pool_map(200, 100)
        plain_group(50), plain_group(50, reliable=True), plain_chunks(200, 100)
        raw_latency(20, 0), checked_latency(20, 0), pool_latency(20, 0), plain_latency(20, 0)
        plain_latency(20, 0, reliable=True)
        for rep in range(opts.repeats if runs or "c" in parts else 0):
            for name, run in runs.items():
                s = run()
                if s["rows"] != n or s.get("checksum", expected) != expected:
                    failures.append(f"{name} run {rep + 1}: WRONG RESULTS {s}")
                samples[name].append(s["seconds"])
                print(
                    f"  {name:40s} run {rep + 1}: {s['seconds']:7.3f} s "
                    f"({n / s['seconds']:,.0f} entries/s)  load {load()}",
                    flush=True,
                )
            offset = rep * opts.latency_n
            got_run: dict[str, list[float]] = {
                RAW: [], CHECKED: [], RAW_REL: [], RAW_DEF: [], POOL: []
            }  # fmt: skip
            block = max(1, opts.latency_block)
            for start in range(0, opts.latency_n, block) if "c" in parts else ():
                size = min(block, opts.latency_n - start)
                for name, fn in (
                    (RAW, raw_latency),
                    (CHECKED, checked_latency),
                    (RAW_REL, lambda k, o: plain_latency(k, o, reliable=True)),
                    (RAW_DEF, plain_latency),
                    (POOL, pool_latency),
                ):
                    got_run[name] += fn(size, offset + start)
            for name, got in got_run.items() if "c" in parts else ():
                lat[name] += got
                print(
                    f"  {name + ' latency':40s} run {rep + 1}: median "
                    f"{statistics.median(got) * 1e3:.2f} ms, p95 "
                    f"{percentile(got, 0.95) * 1e3:.2f} ms",
                    flush=True,
                )
        for name, values in samples.items():
            if values:
                res[name] = {"median": statistics.median(values), "samples": values}
        if "c" in parts:
            res["latency"] = {
                name: {"median": statistics.median(v), "p95": percentile(v, 0.95)}
                for name, v in lat.items()
            }
        if "e" in parts:
            res["floor"] = kombu_floor(n)
            print(f"  (e) broker floor: {json.dumps(res['floor'])}", flush=True)
        mem: dict[str, Any] = {}
        if mem_n:
            for trace in (False, True) if opts.tracemalloc else (False,):
                got = run_memory(mem_n, trace)
                if got["rows"] != mem_n or not got["ok"]:
                    failures.append(f"memory run: WRONG RESULTS {got}")
                mem.update(got)
                print(
                    f"  (d) {mem_n:,}-entry pool{' (tracemalloc)' if trace else ''}: "
                    f"{got['seconds']:.1f} s, {json.dumps(got)}",
                    flush=True,
                )
        res["memory"] = mem

    print()
    print(table(res, n, opts.latency_n, mem_n))
    print()
    for name, values in samples.items():
        if not values:
            continue
        print(f"samples {name}: {', '.join(f'{v:.3f}' for v in values)} s")
    print(f"load average at end (1/5/15 min): {load()}")
    for failure in failures:
        print(f"note: {failure}")
    (WORK / "dispatch.json").write_text(
        json.dumps(
            {"date": stamp, "args": vars(opts), "results": res, "failures": failures}, indent=2
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
