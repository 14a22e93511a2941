"""``fused-celery demo``: Flower's URL and the 0600 file holding its password are printed while
the cluster runs (never the password), and ``--keep`` keeps the cluster and Flower up until
Ctrl-C, which then stops everything."""

from __future__ import annotations

import json
import re
import signal
import stat
import time
from pathlib import Path

import pytest
from cli_process import http_status, start_until, stop


def _password(env_file: Path) -> str:
    """Flower's password from the ``# Flower: <url>  user: admin  password: <p>`` line."""
    for line in env_file.read_text().splitlines():
        if line.startswith("# Flower:"):
            return line.rsplit("password: ", 1)[1].strip()
    raise AssertionError(f"no Flower line in {env_file}")


def _flower_tasks(base: str, auth: tuple[str, str], search: str) -> dict:
    import base64
    import urllib.request

    request = urllib.request.Request(f"{base}/api/tasks?limit=500&search={search}")
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_demo_keep_prints_flower_while_up_and_stops_on_ctrl_c(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    args = ["demo", "--entries", "12", "--workers", "1", "--keep"]
    proc, lines = start_until(args, cwd=tmp_path, env=clean_env, marker="Press Ctrl-C", timeout=300)
    try:
        text = "".join(lines)
        watch = next(i for i, line in enumerate(lines) if line.startswith("Watch the map in"))
        mapping = next(i for i, line in enumerate(lines) if line.startswith("Mapping"))
        assert watch < mapping  # printed before the map runs, while the cluster is up
        found = re.search(
            r"Flower: (http://127\.0\.0\.1:\d+)/tasks  \(user admin; password in (\S+), mode "
            r"0600\)",
            lines[watch],
        )
        assert found, lines[watch]
        base, env_file = found.group(1), Path(found.group(2))
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        password = _password(env_file)
        assert password and password not in text
        assert text.count(f"{base}/tasks") == 2  # again at the end, with --keep
        assert http_status(f"{base}/workers") == 401
        auth = ("admin", password)
        assert http_status(f"{base}/workers", auth) == 200
        deadline = time.monotonic() + 60  # Flower learns of tasks from events
        while not (tasks := _flower_tasks(base, auth, "udf:buffered_point")):
            assert time.monotonic() < deadline, "Flower lists no udf:buffered_point task"
            time.sleep(0.5)
        assert {t["name"] for t in tasks.values()} == {"udf:buffered_point"}
        # Still up after the demo finished (the marker comes after the map): --keep.
        assert proc.poll() is None and http_status(f"{base}/workers", auth) == 200
    finally:
        stop(proc, signal.SIGINT, timeout=60)
    assert proc.returncode == 0
    assert not _answers(base)  # Flower stopped with the cluster
    assert not env_file.exists()


def _answers(base: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{base}/healthcheck", timeout=3)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True
