"""Times the reference Fused SDK's local engine; run by ``local_engine.py`` in the reference venv.

Never imported by fused_celery and never run with its interpreter: it runs with
``benchmarks/.work/ref-venv/bin/python`` (where ``pip install fused`` lives) and talks to its parent
over pipes. Requests come on stdin, one JSON object a line::

    {"workload": "trivial" | "cpu", "n": 10000, "iters": 0, "guard": true}

and each answer goes out as one JSON line on the *original* stdout (fd 1 is moved to stderr at
start, so whatever the SDK prints, such as ``collect()``'s tail lines, lands in the parent's log):

    {"seconds": 12.3, "submit": 10.1, "rows": 10000, "checksum": 49995000}
    {"error": "AttributeError: ..."}

``guard``: run ``map``/``collect`` inside the SDK's own ``isolate_streams_per_thread()`` so its
worker threads find the stream routers installed and never swap ``sys.stdout`` / ``sys.stderr``
while another thread prints. As shipped, every call swaps them, which on CPython 3.11 crashes the
process now and then (python/cpython#130163: ``print()`` holds a borrowed reference to
``sys.stdout``); see benchmarks/README.md.

The UDF bodies below must stay identical to those in ``local_engine.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import fused

fused.options.no_login = True  # never log in or ask for credentials
fused.options.show.enable_tqdm = False


@fused.udf
def trivial(x: int = 0):
    return x


@fused.udf
def spin(x: int = 0, n: int = 0):
    total = x
    for i in range(n):
        total = (total + i * i) % 1000003
    return total


def measure(request: dict) -> dict:
    """One ``udf.map(..., engine="local", cache=False)`` + ``collect()``, timed end to end."""
    n, iters = request["n"], request["iters"]
    if request["guard"]:
        from fused.core.threading_utils import isolate_streams_per_thread

        guard = isolate_streams_per_thread()
    else:
        guard = contextlib.nullcontext()
    args = list(range(n))
    started = time.perf_counter()
    with guard:
        if request["workload"] == "trivial":
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


def main() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the SDK's own prints go to the parent's log, not into the answers

    def answer(payload: dict) -> None:
        out.write(json.dumps(payload) + "\n")
        out.flush()

    answer({"ready": True, "version": fused.__version__, "python": sys.version.split()[0]})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            answer(measure(request))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which retries
            answer({"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
