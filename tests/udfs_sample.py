"""UDFs used by the tests, in a real module file so that ``inspect.getsource`` works.

Several of them use module-level imports, helpers and constants on purpose: they only run on a
worker if source capture ships those along with the function (the API.md §1 **Fix:**).
Coordination between a test and running entries goes through files in a directory given as an
argument, so the same UDFs work on the local engine and on a cluster sharing the file system.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import fused_celery as fused

OFFSET = 3
LABELS = {"a": 1, "b": 2}
GATE_TIMEOUT = 60.0


def _double(value):
    return value * 2 + OFFSET


def _describe(value):
    return json.dumps({"double": _double(value), "root": math.sqrt(abs(value))})


def _wait_for(*paths, timeout=GATE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not any(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {paths} never opened")
        time.sleep(0.01)


# ----------------------------------------------------------------------------- plain UDFs


@fused.udf
def square(x: int):
    return x**2


@fused.udf
def add(x: int, y: int = 10):
    return x + y


@fused.udf
def echo(x):
    return x


@fused.udf
def fail_if_odd(x: int):
    if x % 2:
        raise ValueError(f"odd value {x}")
    return x


@fused.udf
def always_fail(x: int, path: str):
    with open(os.path.join(path, f"runs_{x}"), "a") as fh:
        fh.write("run\n")
    raise RuntimeError(f"always fails for {x}")


@fused.udf
def count_runs(x: int, path: str):
    with open(os.path.join(path, f"runs_{x}"), "a") as fh:
        fh.write("run\n")
    return x * 10


@fused.udf
def flaky(x: int, path: str):
    """Fails on the first attempt for each x (leaves a marker), succeeds afterwards."""
    marker = os.path.join(path, f"tried_{x}")
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write("1")
        raise ValueError(f"first attempt of {x} fails")
    with open(os.path.join(path, f"ok_{x}"), "w") as fh:
        fh.write("ok")
    return x + 100


@fused.udf
def printer(x: int):
    import sys

    print(f"hello {x}")
    print(f"warn {x}", file=sys.stderr)
    if x == 2:
        raise KeyError("boom")
    return x


@fused.udf
def sleeper(x: int, seconds: float = 0.2):
    time.sleep(seconds)
    return x


@fused.udf
def gated(x: int, gate: str):
    """Announces that it started (``gate/started_<x>``), prints, then waits until the file
    ``gate/release`` or ``gate/release_<x>`` exists."""
    with open(os.path.join(gate, f"started_{x}"), "w") as fh:
        fh.write("1")
    print(f"gated {x}")
    _wait_for(os.path.join(gate, "release"), os.path.join(gate, f"release_{x}"))
    return x


@fused.udf
def interval(x: int, path: str, seconds: float = 0.3):
    """Records its start and end times (epoch seconds) in ``path/interval_<x>``."""
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    Path(path, f"interval_{x}").write_text(json.dumps([start, end]))
    return x


@fused.udf
def slow_once(x: int, path: str, seconds: float = 30.0):
    """Sleeps ``seconds`` for x == 1 on its first attempt only; otherwise returns at once."""
    marker = os.path.join(path, f"slow_{x}")
    if x == 1 and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write("1")
        time.sleep(seconds)
    return x


@fused.udf
def die_on(x: int, bad: int = 2):
    if x == bad:
        os._exit(3)
    return x


@fused.udf
def unencodable(x: int):
    if x == 1:
        return {1, 2, 3}
    return x


@fused.udf
def frame_of(x: int):
    import pandas as pd

    return pd.DataFrame({"value": [x, x * 10]}, index=pd.Index(["r0", "r1"], name="row"))


@fused.udf
def uses_module_level(x: int):
    return {
        "described": _describe(x),
        "label": LABELS["b"],
        "name": Path("a", "b").name,
        "offset": OFFSET,
    }


@fused.udf
def kinds(x: int, flag: bool, items: list, anything=None):
    return {
        "x": [type(x).__name__, x],
        "flag": [type(flag).__name__, flag],
        "items": [type(items).__name__, items],
        "anything": [type(anything).__name__, anything],
    }


@fused.udf(
    name="configured",
    cache_max_age="2h",
    engine="local",
    region="eu-west-1",
    disk_size_gb=50,
    default_parameters={"y": 5},
    headers=[{"key": "X-Test", "value": "1"}],
    metadata={"team": "geo"},
)
def configured_udf(x: int, y: int = 1):
    return x * y


@fused.udf
def takes_kwargs(x: int, **kwargs):
    return {"x": x, **kwargs}


@fused.udf
def two_frames(x: int):
    import pandas as pd

    return pd.DataFrame({"a": [x], "b": [str(x)]})


@fused.udf
def gated_flaky(x: int, gate: str):
    """Fails on its first attempt (after 50 ms, so that the local engine does not batch the
    retries as tiny entries); later attempts behave like ``gated``."""
    marker = os.path.join(gate, f"tried_{x}")
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write("1")
        time.sleep(0.05)
        raise ValueError(f"first attempt of {x} fails")
    with open(os.path.join(gate, f"started_{x}"), "w") as fh:
        fh.write("1")
    _wait_for(os.path.join(gate, "release"), os.path.join(gate, f"release_{x}"))
    return x


@fused.udf
def process_id(x: int):
    return os.getpid()


@fused.udf
def block_one(x, gate, blocked=6):
    """Unannotated and instant, except entry ``blocked``, which waits like ``gated``."""
    if x == blocked:
        with open(os.path.join(gate, f"started_{x}"), "w") as fh:
            fh.write("1")
        _wait_for(os.path.join(gate, "release"))
    return x


@fused.udf
def started_as(x: int):
    """How this entry's worker process was started: "spawn" (a fresh interpreter running the
    worker module) or "fork" (a copy of the caller)."""
    import sys

    return "spawn" if "local_worker" in sys.argv[0] else "fork"
