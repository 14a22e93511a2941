"""How the local engine starts a worker process: forked when that is safe, else a fresh
interpreter (``python -m fused_celery.engines.local_worker``).

A fresh interpreter costs ~0.25-0.35 s before it runs an entry (interpreter start and imports);
a fork costs ~10 ms and shares the parent's imported modules. Forking is safe only from a
process with one thread: a lock another thread holds at the fork stays held forever in the
child. So with ``options.local_start_method = "auto"`` (the default) a worker is forked when the
calling process has one thread and the platform has ``os.fork``, and started fresh otherwise
(e.g. in a Jupyter kernel, or when the engine replaces a dead worker from its dispatcher
thread). The child keeps only its two pipe ends (every other inherited file descriptor is
closed, so pipes of other workers still see EOF when the parent closes them), runs the same
:func:`fused_celery.engines.local_worker.main` and leaves with ``os._exit`` (never running the
parent's ``atexit`` hooks or flushing its buffers twice). Hand-written: ``multiprocessing``'s fork
context would also do it, but pickles the target and adds its own resource tracking and
``__main__`` handling, which a pipe-driven worker does not need.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Protocol

__all__ = ["WorkerProcess", "can_fork", "start_worker"]


class WorkerProcess(Protocol):
    """What the engine uses of a worker process (a ``subprocess.Popen`` has it)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class ForkedProcess:
    """A forked child, with :class:`subprocess.Popen`'s ``poll``/``wait``/``kill``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while it runs."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit (timeout: seconds, None for ever); raises
        :class:`subprocess.TimeoutExpired` like ``Popen.wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL, unless it already exited."""
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def can_fork(method: str) -> bool:
    """Whether a worker is forked under start method ``method`` (``"auto"``, ``"fork"`` or
    ``"spawn"``) from the calling thread now."""
    if method == "spawn" or not hasattr(os, "fork"):
        return False
    return method == "fork" or threading.active_count() == 1


def start_worker(rfd: int, wfd: int, *, fork: bool) -> WorkerProcess:
    """A worker process reading messages from ``rfd`` and answering on ``wfd`` (the child's pipe
    ends; the caller closes its copies after this returns). fork: fork this process (see
    :func:`can_fork`) instead of starting a fresh interpreter."""
    if not fork:
        return subprocess.Popen(
            [sys.executable, "-m", "fused_celery.engines.local_worker", str(rfd), str(wfd)],
            pass_fds=(rfd, wfd),
            close_fds=True,
        )
    for stream in (sys.stdout, sys.stderr):  # else the child would write them out again
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    pid = os.fork()
    if pid:
        return ForkedProcess(pid)
    code = 0
    try:  # the child: never returns into the parent's code
        low, high = sorted((rfd, wfd))
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, _max_fd())
        from fused_celery.engines.local_worker import main

        main(rfd, wfd)
    except (BrokenPipeError, EOFError):
        pass
    except BaseException:  # noqa: BLE001 - reported by the parent as a lost worker
        code = 1
    finally:
        os._exit(code)


def _max_fd() -> int:
    try:
        limit = os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        limit = 65536
    return limit if limit > 0 else 65536
