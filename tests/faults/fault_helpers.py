"""Helpers of the fault tests: a seeded random source, a killer of worker processes, a loopback
TCP proxy that can cut a server off, a redis-server with an append-only file that can be
SIGKILLed and restarted on its port, and the checks every fault test makes (nothing lost,
nothing twice, no partial table)."""

from __future__ import annotations

import os
import random
import selectors
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import fused_celery as fused
from fused_celery.cluster.processes import descendants
from fused_celery.cluster.redis_server import LOOPBACK

# The step tests' small tables (random points with a ``uid``; ingested in this process).
sys.path.append(str(Path(__file__).resolve().parents[1] / "steps"))
from steps_tables import ingest_table, make_points  # noqa: E402

__all__ = ["counted", "ingest_table", "make_points"]


@fused.udf
def counted(x: int, folder: str):
    """Appends one character to ``<folder>/<x>`` per run (see :func:`run_counts`); ``2 * x``."""
    import os
    import time

    with open(os.path.join(folder, str(x)), "a") as fh:
        fh.write("r")
    time.sleep(0.01)
    return x * 2


def seeded(name: str) -> random.Random:
    """A random source with a fixed seed per test (``FAULT_SEED`` overrides it), printed so a
    failure can be replayed."""
    seed = int(os.environ.get("FAULT_SEED") or sum(map(ord, name)) * 7919 % 100_000)
    print(f"[{name}] seed {seed} (replay: FAULT_SEED={seed})")
    return random.Random(seed)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def pool_children(worker_pid: int) -> list[int]:
    """The prefork pool processes of a worker's main process."""
    return descendants(worker_pid)


def kill_pool_child(worker: Any, rng: random.Random) -> int:
    """SIGKILL one pool process (chosen by ``rng``) of ``worker``; returns its pid."""
    children = pool_children(worker.pid)
    assert children, f"{worker} has no pool process"
    pid = rng.choice(sorted(children))
    os.kill(pid, signal.SIGKILL)
    return pid


# --------------------------------------------------------------------------- results


def run_counts(folder: Path) -> Counter[int]:
    """How many times each entry ran: files ``<x>`` in ``folder`` hold one character per run."""
    return Counter({int(p.name): len(p.read_text()) for p in folder.iterdir() if p.name.isdigit()})


def assert_exactly_once(values: dict[Any, Any], expected: dict[Any, Any], label: str) -> None:
    """Every expected result once with its value; prints the figures."""
    lost = sorted(set(expected) - set(values))
    extra = sorted(set(values) - set(expected))
    wrong = sorted(k for k in set(values) & set(expected) if values[k] != expected[k])
    print(f"[{label}] results {len(values)}/{len(expected)}: {len(lost)} lost, {len(extra)} extra, "
          f"{len(wrong)} wrong")  # fmt: skip
    assert not lost, f"{label}: lost results {lost[:20]}"
    assert not extra, f"{label}: results nobody asked for {extra[:20]}"
    assert not wrong, f"{label}: wrong values at {wrong[:20]}"


def assert_rows_once(ids: Iterable[int], expected: Iterable[int], label: str) -> None:
    """A table's row ids: each expected one exactly once (no lost, duplicated or foreign row)."""
    got = Counter(int(i) for i in ids)
    want = set(int(i) for i in expected)
    dup = sorted(i for i, c in got.items() if c > 1)
    lost = sorted(want - set(got))
    extra = sorted(set(got) - want)
    print(f"[{label}] rows {sum(got.values())}/{len(want)}: {len(lost)} lost, {len(dup)} "
          f"duplicated, {len(extra)} foreign")  # fmt: skip
    assert not dup and not lost and not extra, (
        f"{label}: lost {lost[:10]}, duplicated {dup[:10]}, foreign {extra[:10]}"
    )


def assert_no_partial_table(folder: Path) -> None:
    """A table folder holds a committed table (``_sample``), or no data file at all."""
    if not folder.exists():
        return
    files = [p for p in folder.rglob("*") if p.is_file()]
    if (folder / "_sample").exists():
        assert not any("_staging" in p.parts for p in files), f"staging left in {folder}"
        return
    assert not files, f"partial table at {folder}: {[str(p) for p in files[:10]]}"


# --------------------------------------------------------------------------- TCP proxy


class TcpProxy:
    """A loopback TCP proxy in front of ``target_port``. :meth:`cut` closes every connection and
    refuses new ones (the server unreachable) until :meth:`restore`."""

    def __init__(self, target_port: int) -> None:
        self.target = (LOOPBACK, target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((LOOPBACK, 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.cuts = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tcp-proxy")
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not self._cut.is_set() and not self._stop.is_set():
                for key, _ in sel.select(0.1):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            _close(a)
            _close(b)

    def cut(self) -> None:
        """Drop every connection now and refuse new ones."""
        self._cut.set()
        self.cuts += 1
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _close(a)
            _close(b)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        _close(self.listener)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
