"""Headless Chromium for the tests that look at pages (the table maps, Flower's Tasks page):
Debian's ``chromium``, a profile of its own per run, no GPU, no network services."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

WINDOW = (1000, 800)
CHROMIUM_MISSING = (
    "chromium is not on PATH: install Debian's chromium (`apt-get install -y chromium`, as "
    "root or with sudo); `./run test` installs it when it runs as root or with passwordless sudo"
)


def chromium() -> str:
    """The ``chromium`` executable (the test fails, with how to install it, when absent)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(CHROMIUM_MISSING)
    return path


def run_chromium(
    target: str | Path, tmp: Path, *args: str, budget_ms: int = 5000
) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``target`` (a local file or an http URL on loopback) with its own
    profile under ``tmp``, a :data:`WINDOW` window, ``budget_ms`` of virtual time for scripts
    (default 5000) and ``args`` (``--dump-dom``, ``--screenshot=...``)."""
    url = target.resolve().as_uri() if isinstance(target, Path) else target
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-extensions", "--hide-scrollbars",
        f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={budget_ms}", "--enable-logging=stderr", "--v=0",
        *args, url,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done
