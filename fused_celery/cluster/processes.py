"""Child processes that the local cluster and the tests start and must stop without leftovers.

Each child runs in its own session (so its own process group): a terminal's Ctrl-C reaches only
the parent, which then stops the children in order, and a whole group (a Celery worker and its pool
processes) can be killed at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path


def set_pdeathsig() -> None:
    """In a child, before exec: receive SIGTERM when the parent dies (Linux only, else no-op)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:
            pass


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:  # pragma: no cover - no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _proc_stats() -> list[tuple[int, str, int, int]]:
    """(pid, state, ppid, pgid) of every process visible in ``/proc``."""
    rows = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        rows.append((int(entry), fields[0], int(fields[1]), int(fields[2])))
    return rows


def group_members(pgid: int) -> list[int]:
    """Living (non-zombie) processes of process group ``pgid``."""
    return [pid for pid, state, _, group in _proc_stats() if group == pgid and state not in "ZX"]


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def descendants(pid: int) -> list[int]:
    """Process ids of all living descendants of ``pid`` (read from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for child, state, parent, _ in _proc_stats():
        if state not in "ZX":
            children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class ManagedProcess:
    """A child process in its own process group, with output to a log file.

    name: label used in messages.
    args: the command line.
    env: full environment for the child (default: this process's environment).
    log_path: file receiving stdout and stderr (default None: inherit this process's).
    cwd: working directory (default: current).
    die_with_parent: SIGTERM the child when this process dies (default True, Linux).
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env) if env is not None else None
        self.log_path = Path(log_path) if log_path else None
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id (also its process group id), or None before start."""
        return self.proc.pid if self.proc else None

    def start(self) -> ManagedProcess:
        """Start the child (no-op while it runs)."""
        if self.alive():
            return self
        out: int | object = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,  # type: ignore[arg-type]
                stderr=subprocess.STDOUT if out is not None else None,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=set_pdeathsig if self.die_with_parent else None,
            )
        finally:
            if out is not None:
                out.close()  # type: ignore[union-attr]
        return self

    def alive(self) -> bool:
        """True while the child's main process runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit code once the main process has ended, else None."""
        return self.proc.poll() if self.proc else None

    def signal(self, sig: int = signal.SIGTERM, *, group: bool = False) -> None:
        """Send ``sig`` to the main process, or to its whole process group when ``group``."""
        if self.proc is None:
            return
        try:
            if group:
                os.killpg(self.proc.pid, sig)
            elif self.proc.poll() is None:
                self.proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s (default forever) for the main process; True if it ended."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the main process, SIGKILL the group after ``timeout`` s (default 10)."""
        stop_all([self], timeout=timeout)

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the log file (empty when there is none)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.returncode}"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"


def stop_all(processes: Iterable[ManagedProcess], timeout: float = 10.0) -> None:
    """Stop several children together: SIGTERM to each main process (a Celery worker does a warm
    shutdown), then after ``timeout`` s (default 10) SIGKILL to every group still alive, and reap.
    """
    procs = [p for p in processes if p.proc is not None]
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait(max(0.0, deadline - time.monotonic()))
    # Whatever is left (a stuck main process, or pool children that outlived it) is killed.
    for p in procs:
        assert p.proc is not None
        if p.proc.poll() is None or _group_alive(p.proc.pid):
            p.signal(signal.SIGKILL, group=True)
    for p in procs:
        p.wait(5)
        assert p.proc is not None
        end = time.monotonic() + 5
        while _group_alive(p.proc.pid) and time.monotonic() < end:
            time.sleep(0.02)
