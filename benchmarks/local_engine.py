"""Local engine benchmark: fused_celery vs ProcessPoolExecutor vs the reference Fused SDK.

Run from the repository root::

    .venv/bin/python benchmarks/local_engine.py

In one run on one machine it times, for each workload, three implementations of the same function
body, end to end (pool startup, submitting every entry, getting every result back, pool shutdown):

* ``fused_celery``: ``@fused.udf`` then ``udf.map(args, engine="local", cache=False).collect()``.
* ``ProcessPoolExecutor``: ``concurrent.futures.ProcessPoolExecutor(max_workers=<CPUs>)``, one
  ``submit`` per entry, then ``result()`` of each future.
* ``reference fused``: the Fused SDK from PyPI (``pip install fused``) with
  ``fused.options.no_login = True``, ``udf.map(args, engine="local", cache=False).collect()``. It
  runs in its own virtual environment, ``benchmarks/.work/ref-venv``, which this script creates on
  first run (``python -m venv`` + ``pip install fused pandas``), as a subprocess
  (``_reference_runner.py``) that answers with JSON timings. fused_celery never depends on it.

Workloads: (a) 10,000 trivial entries (``return x``); (b) 200 entries of a pure-Python loop
calibrated once per run to ~20 ms on this machine (the same iteration count for all three).
Each measurement is repeated (default 3 times, implementations interleaved) and the median is
reported. Imports are warmed up before timing; worker pools are not (their startup is measured).
The table compares entries/s with fused_celery's and checks the targets of issue 3, item 8.
Raw samples go to ``benchmarks/.work/local_engine.json``. The script makes no network calls
(the reference is checked offline; ``pip`` is used only to build its venv).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import platform
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common
from _common import TICK, cpu_count, load, machine, wait_for_quiet

import fused_celery as fused
from fused_celery.options import options as fc_options

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
REF_VENV = WORK / "ref-venv"
REF_RUNNER = HERE / "_reference_runner.py"
REF_LOG = WORK / "reference.log"

FC, PPE, REF = "fused_celery", "ProcessPoolExecutor", "reference fused"
IMPLEMENTATIONS = (FC, PPE, REF)

#: (workload, implementation) -> fused_celery's entries/s must be at least this multiple of the
#: implementation's (issue 3, item 8; the CPU-bound row against the executor: issue 19).
TARGETS = {("trivial", PPE): 0.5, ("trivial", REF): 2.0, ("cpu", REF): 1.7, ("cpu", PPE): 0.97}

fc_options.show.enable_tqdm = False


# ----------------------------------------------------------------------------- the functions
# The same bodies are in _reference_runner.py; keep all four copies identical.


def trivial_fn(x: int = 0):
    return x


def spin_fn(x: int = 0, n: int = 0):
    total = x
    for i in range(n):
        total = (total + i * i) % 1000003
    return total


@fused.udf
def trivial(x: int = 0):
    return x


@fused.udf
def spin(x: int = 0, n: int = 0):
    total = x
    for i in range(n):
        total = (total + i * i) % 1000003
    return total


# ----------------------------------------------------------------------------- measurements


def run_fused_celery(workload: str, n: int, iters: int) -> dict[str, Any]:
    args = list(range(n))
    started = time.perf_counter()
    if workload == "trivial":
        pool = trivial.map(args, engine="local", cache=False)
    else:
        pool = spin.map(args, engine="local", cache=False, n=iters)
    submitted = time.perf_counter()
    frame = pool.collect()
    finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "submit": submitted - started,
        "rows": len(frame),
        "checksum": int(frame.iloc[:, 0].sum()),
    }


def run_process_pool(workload: str, n: int, iters: int) -> dict[str, Any]:
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=cpu_count()) as ex:
        if workload == "trivial":
            futures = [ex.submit(trivial_fn, x) for x in range(n)]
        else:
            futures = [ex.submit(spin_fn, x, iters) for x in range(n)]
        submitted = time.perf_counter()
        results = [f.result() for f in futures]
    finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "submit": submitted - started,
        "rows": len(results),
        "checksum": int(sum(results)),
    }


class Reference:
    """The reference SDK's runner, a long-lived subprocess in its own venv."""

    def __init__(self, python: Path, guard: bool, timeout: float) -> None:
        self.python, self.guard, self.timeout = python, guard, timeout
        self.proc: subprocess.Popen[str] | None = None
        self.version = self.python_version = "?"
        self.crashes: list[str] = []
        self.log = REF_LOG.open("a")

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.python), "-X", "faulthandler", str(REF_RUNNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=str(WORK),
        )
        hello = self._read()
        self.version, self.python_version = hello["version"], hello["python"]

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            if not ready:
                self.proc.kill()
            code = self.proc.wait()
            raise RuntimeError(
                f"reference runner {'timed out' if not ready else 'died'} (exit code {code}); "
                f"see {REF_LOG.relative_to(HERE.parent)}"
            )
        return json.loads(line)

    def run(self, workload: str, n: int, iters: int) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        request = {"workload": workload, "n": n, "iters": iters, "guard": self.guard}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        try:
            answer = self._read()
        except RuntimeError:
            self.proc = None
            raise
        if "error" in answer:
            self._stop()  # its memory may be corrupt (see README): never reuse it
            raise RuntimeError(answer["error"])
        return answer

    def cpu_seconds(self) -> float:
        """CPU time used so far by the live runner process (all its threads)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        return _proc_cpu(self.proc.pid)

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self._stop()
        self.log.close()


# ----------------------------------------------------------------------------- setup


def ensure_reference(python: str | None, spec: str) -> Path:
    """The reference venv's interpreter; creates ``.work/ref-venv`` with ``pip install`` once."""
    if python:
        return Path(python)
    py = REF_VENV / "bin" / "python"
    check = [str(py), "-c", "import fused, pandas"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / "ref-venv-install.log"
    print(f"first run: creating {REF_VENV.relative_to(HERE.parent)} and installing {spec} pandas")
    print(f"(pip output in {log.relative_to(HERE.parent)})", flush=True)
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "venv", str(REF_VENV)], check=True, stdout=out)
        # pandas: the SDK's JobPool.collect() needs it, but fused lists it only in its extras.
        pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", spec, "pandas<3"]
        done = subprocess.run(pip, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0 or subprocess.run(check, capture_output=True).returncode != 0:
        raise RuntimeError(f"pip install {spec} failed; see {log}")
    return py


def calibrate(target_s: float) -> tuple[int, float]:
    """Iterations of ``spin_fn`` that take ``target_s`` here: the median of 9 timed calls, as
    this machine's speed drifts (shared host); then the median of 9 calls at that count."""
    probe = 200_000
    typical = statistics.median(_timed(spin_fn, 0, probe) for _ in range(9))
    iters = max(1, round(probe * target_s / typical))
    return iters, statistics.median(_timed(spin_fn, 0, iters) for _ in range(9))


def _timed(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class ForeignLoad(_common.ForeignLoad):
    """:class:`_common.ForeignLoad` that also counts the reference runner (a process this one
    does not reap) as ours."""

    def __init__(self, reference: Reference | None) -> None:
        self.reference = reference

    def _snapshot(self) -> tuple[float, float, float]:
        wall, busy, own = super()._snapshot()
        return wall, busy, own + (self.reference.cpu_seconds() if self.reference else 0.0)


def expected_checksum(workload: str, n: int, ppe: list | None) -> int | None:
    """The sum of all results: closed form for (a); the standard library's answer for (b)."""
    if workload == "trivial":
        return n * (n - 1) // 2
    sums = {s["checksum"] for s in ppe or []}
    return sums.pop() if len(sums) == 1 else None


def table(workloads: list[str], sizes: dict[str, int], labels: dict[str, str], res: dict) -> str:
    head = (
        "| workload | implementation | seconds (median) | submit s | entries/s "
        "| fused_celery speed ÷ this | target | met |"
    )
    rows = [head, "|" + "---|" * 8]
    for w in workloads:
        fc = res.get((w, FC))
        for impl in IMPLEMENTATIONS:
            r = res.get((w, impl))
            target = TARGETS.get((w, impl))
            tgt = f"≥ {target:g}×" if target else "—"
            if r is None or r.get("median") is None:
                why = (r or {}).get("why", "not run")
                rows.append(f"| {labels[w]} | {impl} | n/a ({why}) | | | | {tgt} | |")
                continue
            rate = sizes[w] / r["median"]
            ratio = met = ""
            if fc and fc.get("median"):
                value = (sizes[w] / fc["median"]) / rate
                ratio = f"{value:.2f}×"
                met = ("yes" if value >= target else "**no**") if target else ""
            rows.append(
                f"| {labels[w]} | {impl} | {r['median']:.3f} | {r['submit']:.3f} | {rate:,.0f} "
                f"| {ratio} | {tgt} | {met} |"
            )
    return "\n".join(rows)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement (median)")
    p.add_argument("--trivial-n", type=int, default=10_000, help="entries of workload (a)")
    p.add_argument("--cpu-n", type=int, default=200, help="entries of workload (b)")
    p.add_argument("--cpu-ms", type=float, default=20.0, help="target ms per entry of (b)")
    p.add_argument("--iterations", type=int, help="loop count of (b) (default: calibrate)")
    p.add_argument("--workloads", default="trivial,cpu", help="comma list: trivial,cpu")
    p.add_argument("--skip-reference", action="store_true", help="do not run the Fused SDK")
    p.add_argument("--reference-python", help="interpreter that has fused (default: own venv)")
    p.add_argument("--reference-spec", default="fused", help="pip spec for the reference venv")
    p.add_argument(
        "--reference-as-shipped",
        action="store_true",
        help="do not guard the SDK's sys.stdout swapping (it may crash; see README)",
    )
    p.add_argument("--attempts", type=int, default=3, help="tries per reference measurement")
    p.add_argument("--timeout", type=float, default=900, help="seconds per reference answer")
    p.add_argument(
        "--wait-for-load",
        type=float,
        metavar="LOAD",
        help="first wait (up to --max-wait s) until the 1-minute load average is below LOAD",
    )
    p.add_argument("--max-wait", type=float, default=1800, help="seconds --wait-for-load waits")
    opts = p.parse_args(argv)

    workloads = [w for w in opts.workloads.split(",") if w]
    if not workloads or set(workloads) - {"trivial", "cpu"}:
        p.error(f"--workloads takes trivial and/or cpu, got {opts.workloads!r}")
    if opts.wait_for_load is not None:
        wait_for_quiet(opts.wait_for_load, opts.max_wait)
    sizes = {"trivial": opts.trivial_n, "cpu": opts.cpu_n}
    WORK.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"date: {stamp}")
    print(f"machine: {machine()}")
    print(f"python: {platform.python_version()} ({sys.executable})")
    print(f"load average at start (1/5/15 min): {load()}", flush=True)

    iters, one_call = (opts.iterations, 0.0) if opts.iterations else calibrate(opts.cpu_ms / 1e3)
    if opts.iterations:
        one_call = statistics.median(_timed(spin_fn, 0, iters) for _ in range(9))
    print(f"workload (b): {iters:,} loop iterations = {one_call * 1e3:.1f} ms per call here")
    labels = {
        "trivial": f"(a) {sizes['trivial']:,} × return x",
        "cpu": f"(b) {sizes['cpu']:,} × {one_call * 1e3:.0f} ms CPU",
    }

    runners: dict[str, Any] = {FC: run_fused_celery, PPE: run_process_pool}
    reference: Reference | None = None
    ref_why = "skipped (--skip-reference)"
    if not opts.skip_reference:
        try:
            py = ensure_reference(opts.reference_python, opts.reference_spec)
            reference = Reference(py, guard=not opts.reference_as_shipped, timeout=opts.timeout)
            runners[REF] = reference.run
        except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
            ref_why = f"unavailable: {err}"
            print(f"reference SDK {ref_why}")

    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    failures: list[str] = []
    try:
        for w in workloads:
            n = sizes[w]
            for impl, run in runners.items():  # warm imports, not pools: a tiny map first
                try:
                    run(w, 4, min(iters, 1000))
                except RuntimeError as err:
                    failures.append(f"{w} / {impl} warm-up: {err}")
            for rep in range(opts.repeats):
                for impl, run in runners.items():
                    tries = opts.attempts if impl == REF else 1
                    for attempt in range(1, tries + 1):
                        try:
                            with ForeignLoad(reference if impl == REF else None) as foreign:
                                sample = run(w, n, iters)
                            sample["others"] = foreign.cores
                        except RuntimeError as err:
                            failures.append(f"{w} / {impl} run {rep + 1} try {attempt}: {err}")
                            print(f"  ! {failures[-1]}", flush=True)
                            continue
                        samples.setdefault((w, impl), []).append(sample)
                        print(
                            f"  {w:8s} {impl:20s} run {rep + 1}: {sample['seconds']:8.3f} s "
                            f"(submit {sample['submit']:.3f} s)  other processes used "
                            f"{sample['others']:.2f} cores",
                            flush=True,
                        )
                        break
    finally:
        if reference is not None:
            reference.close()

    results: dict[tuple[str, str], dict[str, Any]] = {}
    for w in workloads:
        expected = expected_checksum(w, sizes[w], samples.get((w, PPE)))
        for impl in IMPLEMENTATIONS:
            got = samples.get((w, impl), [])
            for i, s in enumerate(got, 1):
                if s["rows"] != sizes[w] or (expected is not None and s["checksum"] != expected):
                    failures.append(
                        f"{w} / {impl} sample {i}: WRONG RESULTS ({s['rows']} rows, checksum "
                        f"{s['checksum']}, expected {sizes[w]} rows, checksum {expected})"
                    )
            if not got:
                why = ref_why if impl == REF and reference is None else "every try failed"
                results[(w, impl)] = {"median": None, "why": why}
                continue
            results[(w, impl)] = {
                "median": statistics.median(s["seconds"] for s in got),
                "submit": statistics.median(s["submit"] for s in got),
                "samples": [round(s["seconds"], 4) for s in got],
                "others": [round(s["others"], 3) for s in got],
                "checksums": [s["checksum"] for s in got],
            }

    print()
    print(table(workloads, sizes, labels, results))
    print()
    for (w, impl), r in results.items():
        if r.get("samples"):
            print(
                f"samples {w} / {impl}: {', '.join(f'{s:.3f}' for s in r['samples'])} s; "
                f"other processes used {', '.join(f'{c:.2f}' for c in r['others'])} cores"
            )
    if reference is not None:
        mode = "as shipped" if opts.reference_as_shipped else "streams guarded (see README)"
        print(f"reference: fused {reference.version} on Python {reference.python_version}, {mode}")
    others = [c for r in results.values() for c in r.get("others", [])]
    if others:
        print(
            f"other processes during the measurements: mean {statistics.mean(others):.2f}, "
            f"max {max(others):.2f} of {cpu_count()} cores (0 = quiet machine)"
        )
    print(f"load average at end (1/5/15 min): {load()}")
    for failure in failures:
        print(f"note: {failure}")

    record = {
        "date": stamp,
        "machine": machine(),
        "iterations": iters,
        "ms_per_call": one_call * 1e3,
        "results": {f"{w}/{impl}": r for (w, impl), r in results.items()},
        "failures": failures,
        "reference_version": reference.version if reference else None,
    }
    (WORK / "local_engine.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
