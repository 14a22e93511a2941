"""Helpers shared by the benchmark scripts: machine description, load, waiting for a quiet
machine, CPU used by other processes, per-process peak memory of a process tree, private venvs.

Standard library only at import time (``psutil`` is imported by :class:`TreeMemory` when it
starts), so a script can import this module from an interpreter of another environment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
REPO = HERE.parent

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Clock ticks per second of /proc CPU times."""


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def machine() -> str:
    """``2 CPUs (model), 24 GiB RAM, Linux 6.x``."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    return f"{cpu_count()} CPUs ({model}), {mem} RAM, {platform.system()} {platform.release()}"


def load() -> str:
    """The 1, 5 and 15-minute load averages."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def wait_for_quiet(threshold: float, max_wait: float) -> None:
    """Sleep until the 1-minute load average drops below ``threshold`` or ``max_wait`` passes."""
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        print(f"waiting for load < {threshold:g} (now {load()})", flush=True)
        time.sleep(15)


def add_load_arguments(parser: argparse.ArgumentParser, max_wait: float = 1800) -> None:
    """``--wait-for-load LOAD`` and ``--max-wait S`` (use with :func:`wait_for_quiet`), and
    ``--prefault-gib GIB`` (use with :func:`prefault_memory`)."""
    parser.add_argument(
        "--wait-for-load",
        type=float,
        metavar="LOAD",
        help="first wait (up to --max-wait s) until the 1-minute load average is below LOAD",
    )
    parser.add_argument(
        "--max-wait", type=float, default=max_wait, help="seconds --wait-for-load waits"
    )
    parser.add_argument(
        "--prefault-gib",
        type=float,
        default=0.0,
        metavar="GIB",
        help="first touch GIB GiB of memory once (a VM that backs memory lazily then charges "
        "no contender for first touches; see README)",
    )


def prefault_memory(gib: float) -> float:
    """Touch ``gib`` GiB of fresh memory in a child process, then free it; returns the seconds it
    took. On a VM that backs guest memory lazily (first touch of a page costs the host a fault:
    ~2.5 s/GiB measured on the 2-CPU VMs) this makes later runs pay the same low price for the
    memory they allocate, whichever contender runs first."""
    if gib <= 0:
        return 0.0
    code = (
        "import sys\n"
        "n = int(float(sys.argv[1]) * 2**30)\n"
        "b = bytearray(n)\n"
        "for i in range(0, n, 4096):\n"
        "    b[i] = 1\n"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(gib)], check=True)
    return time.perf_counter() - started


def busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (user+nice+system+irq+softirq+steal)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICK


def own_cpu() -> float:
    """CPU seconds of this process and of its reaped descendants."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignLoad:
    """CPU cores used by *other* processes during a ``with`` block: the whole machine's busy time
    minus this process and the descendants it reaped in the block. 0 means a quiet machine."""

    def _snapshot(self) -> tuple[float, float, float]:
        return time.perf_counter(), busy_seconds(), own_cpu()

    def __enter__(self) -> ForeignLoad:
        self.start = self._snapshot()
        self.cores = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snapshot()
        wall = max(1e-9, end[0] - self.start[0])
        foreign = (end[1] - self.start[1]) - (end[2] - self.start[2])
        self.cores = max(0.0, foreign / wall)


def _vm_hwm(pid: int) -> int | None:
    """The kernel's peak RSS of ``pid`` in bytes (``VmHWM``), None where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class TreeMemory:
    """Peak resident memory of every process of a tree (a root and all its descendants).

    A thread enumerates the tree every ``interval`` seconds (``psutil``) and reads each
    process's peak RSS: the kernel's high-water mark ``VmHWM`` on Linux (exact, even between
    samples), else the current RSS. ``peak`` is the largest of any single process, with its
    label in ``peak_label``; ``peak_sum`` the largest sum of current RSS over the tree at one
    sample. Processes that live shorter than one interval can be missed.
    """

    def __init__(self, root: int | None = None, interval: float = 0.05) -> None:
        self.root = os.getpid() if root is None else root
        self.interval = interval
        self.per_process: dict[int, tuple[int, str]] = {}
        self.peak_sum = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _label(proc: Any) -> str:
        """``pid exe args`` (up to 300 characters); `` [fork]`` when the parent process has the
        same command line (a prefork pool process, for example)."""
        with contextlib.suppress(Exception):
            cmd = proc.cmdline()
            if cmd:
                label = f"{proc.pid} {Path(cmd[0]).name} {' '.join(cmd[1:])}"[:300]
                with contextlib.suppress(Exception):
                    parent = proc.parent()
                    if parent is not None and parent.cmdline() == cmd:
                        label += " [fork]"
                return label
        with contextlib.suppress(Exception):
            return f"{proc.pid} {proc.name()}"
        return str(proc.pid)

    def sample(self) -> None:
        """Read the memory of every process of the tree once."""
        import psutil

        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for proc in procs:
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            peak = max(rss, _vm_hwm(proc.pid) or 0)
            old = self.per_process.get(proc.pid)
            if old is None:
                self.per_process[proc.pid] = (peak, self._label(proc))
            elif peak > old[0]:
                self.per_process[proc.pid] = (peak, old[1])
        self.peak_sum = max(self.peak_sum, total)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak(self) -> int:
        """The largest peak RSS of any single process, in bytes."""
        return max((v[0] for v in self.per_process.values()), default=0)

    @property
    def peak_label(self) -> str:
        """Which process had :attr:`peak` (pid and command line)."""
        best = max(self.per_process.values(), default=(0, ""), key=lambda v: v[0])
        return best[1]

    def top(self, n: int = 5) -> list[tuple[int, str]]:
        """The ``n`` processes with the largest peaks, ``(bytes, label)``."""
        return sorted(self.per_process.values(), key=lambda v: -v[0])[:n]


def ensure_venv(venv: Path, packages: Sequence[str], check: str, log: Path) -> Path:
    """The interpreter of ``venv``; creates it once (``python -m venv`` from this interpreter,
    then ``pip install packages``) unless ``python -c check`` already succeeds there."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", check]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"first run: creating {venv.relative_to(REPO)} and installing {' '.join(packages)}")
    print(f"(pip output in {log.relative_to(REPO)})", flush=True)
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out)
        pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", *packages]
        done = subprocess.run(pip, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
        raise RuntimeError(f"pip install {' '.join(packages)} into {venv} failed; see {log}")
    return py


# ----------------------------------------------------------------------------- child processes


def kill_tree(child: subprocess.Popen) -> None:
    """Kill ``child`` and every process it started (by pid), then reap ``child``."""
    import psutil

    try:
        procs = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
    except psutil.Error:
        procs = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    child.kill()
    child.communicate()


def run_child(script: Path, python: Path, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``python script --child <spec as JSON>`` in a fresh child process; returns the JSON
    object of its last stdout line plus the peak RSS of every process of the tree
    (:class:`TreeMemory`: this process, the child and their descendants) and the CPU used by
    other processes meanwhile (:class:`ForeignLoad`)."""
    import json

    cmd = [str(python), str(script), "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with ForeignLoad() as foreign, TreeMemory() as memory:
        started = time.perf_counter()
        child = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(child)
            raise RuntimeError(f"{spec['kind']} child timed out after {timeout:.0f} s") from None
        wall = time.perf_counter() - started
    if child.returncode != 0:
        tail = (stderr or stdout).strip()[-3000:]
        raise RuntimeError(f"{spec['kind']} child failed ({child.returncode}):\n{tail}")
    answer = json.loads(stdout.strip().splitlines()[-1])
    answer.update(
        wall_seconds=wall,
        peak_rss=memory.peak,
        peak_process=memory.peak_label,
        peak_rss_tree_sum=memory.peak_sum,
        top_processes=[[b, label] for b, label in memory.top(6)],
        rss_samples=memory.samples,
        foreign_cores=foreign.cores,
    )
    return answer


def describe(label: str) -> str:
    """A short name for a process label of :class:`TreeMemory` (``pid exe args``)."""
    import re

    fork = " (pool process)" if label.endswith(" [fork]") else ""
    args = label.split(" ")[1:]
    text = " ".join(args)
    if "--child" in args:
        kind = re.search(r'"kind": "([^"]+)"', text)
        return f"benchmark child ({kind.group(1) if kind else '?'})"
    if "celery" in args and "worker" in args:
        host = args[args.index("--hostname") + 1] if "--hostname" in args else "?"
        return f"celery worker {host}{fork}"
    if "local_worker" in text:
        return "fused_celery local-engine worker"
    if "multiprocessing.spawn" in text or "multiprocessing.forkserver" in text:
        return "dask worker (spawned process)"
    return text[:60] + fork


def mib(b: float) -> str:
    """Bytes as MiB, ``1,234``."""
    return f"{b / 2**20:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def mark(met: bool | None) -> str:
    return "—" if met is None else ("yes" if met else "**no**")


# ----------------------------------------------------------------------------- our cluster


def start_ours(workers: int, cluster_dir: str | Path) -> Any:
    """fused_celery's ``LocalCluster`` as the benchmarks run it, started: embedded Redis on
    loopback, ``workers`` Celery workers (pool processes: CPUs ÷ workers each), no Flower;
    ``.stop()`` it when done. tqdm bars off."""
    import fused_celery as fused
    from fused_celery.cluster.local_cluster import LocalCluster

    fused.options.show.enable_tqdm = False
    return LocalCluster(
        workers=workers,
        flower_port=None,
        verbose=False,
        embedded=True,
        cluster_dir=str(cluster_dir),
    ).start()


def warm_up_ingest(folder: Path) -> str:
    """One small ingest (1,000 points) on the running cluster, untimed: client imports done,
    pool processes up. Returns the URL of the table it wrote (``folder / "warm-up"``)."""
    import geopandas as gpd
    import numpy as np

    import fused_celery as fused

    rng = np.random.default_rng(0)
    src = folder / "warm-up.parquet"
    xy = rng.uniform(-50, 50, (1000, 2))
    gpd.GeoDataFrame(geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=4326).to_parquet(src)
    out = str(folder / "warm-up")
    job = fused.ingest(str(src), output=out, overwrite=True)
    resp = job.run_remote()
    resp.wait_for_job(poll_interval_seconds=0.1, timeout=300)
    if resp.status != "Done":
        raise SystemExit(f"warm-up ingest ended {resp.status}: {resp.get_logs()[-3:]}")
    return out
