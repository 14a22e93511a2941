"""The ``fused-celery`` command as a child process, and probing the servers it starts, for the
CLI tests of several folders."""

from __future__ import annotations

import base64
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

CLI = [sys.executable, "-m", "fused_celery.cli"]


def _read_lines(stream, sink: queue.Queue[str]) -> None:
    for line in stream:
        sink.put(line)
    sink.put("")


def start_until(
    args: list[str], *, cwd: Path, env: dict[str, str], marker: str, timeout: float = 120
) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``fused-celery <args>`` and read its output until a line contains ``marker``;
    returns the process and the lines so far (the list keeps growing only while the caller reads
    ``proc.stdout`` itself). Fails with the output when the process exits first or ``timeout``
    (default 120 s) passes, and kills it then."""
    proc = subprocess.Popen(
        [*CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            assert line, f"{args[0]} exited early ({proc.poll()}):\n{''.join(output)}"
            output.append(line)
    except BaseException:
        stop(proc, signal.SIGKILL)
        raise
    return proc, output


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Send ``sig`` (default SIGTERM) unless the process ended; kill it after ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    """The HTTP status of GET ``url`` (with basic ``auth`` = (user, password), default None)."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
