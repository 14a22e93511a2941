"""The workers' allocator settings (fused_celery.worker_memory): what the launchers pass to the
worker processes, and that a user's own settings and ``worker_retain_memory=False`` win."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cli_process import CLI, stop

from fused_celery.cluster.local_cluster import LocalCluster, wait_for_workers
from fused_celery.cluster.processes import descendants
from fused_celery.options import options
from fused_celery.worker_memory import (
    ARENA_MAX,
    ARROW_POOL,
    MIMALLOC_PURGE_DELAY_MS,
    MMAP_THRESHOLD,
    TOP_PAD,
    TRIM_THRESHOLD,
    allocator_env,
)

TUNABLES = (
    f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
    f":glibc.malloc.top_pad={TOP_PAD}:glibc.malloc.arena_max={ARENA_MAX}"
)


def _environ(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _assert_settings(pid: int) -> None:
    """Process ``pid`` was started with the allocator settings. glibc cuts ``GLIBC_TUNABLES``
    after its first item in the process's own copy once it has read it, so the rest is checked
    by :func:`test_glibc_applies_every_tunable`."""
    env = _environ(pid)
    assert env.get("ARROW_DEFAULT_MEMORY_POOL") == ARROW_POOL
    assert env.get("MIMALLOC_PURGE_DELAY") == str(MIMALLOC_PURGE_DELAY_MS)
    assert TUNABLES.startswith(env.get("GLIBC_TUNABLES") or "-")


def _dynamic_loader() -> str:
    """The path of this process's dynamic loader (``ld-linux*.so``), from its memory map."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "/ld-linux" in path or "/ld-musl" in path:
            return path
    raise AssertionError("no dynamic loader in /proc/self/maps")


def test_allocator_env_adds_both_allocators_settings() -> None:
    env = allocator_env({"PATH": "/usr/bin"})
    assert env == {
        "PATH": "/usr/bin",
        "GLIBC_TUNABLES": TUNABLES,
        "ARROW_DEFAULT_MEMORY_POOL": ARROW_POOL,
        "MIMALLOC_PURGE_DELAY": str(MIMALLOC_PURGE_DELAY_MS),
    }


def test_allocator_env_keeps_the_users_own_settings() -> None:
    mine = {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=4",
        "ARROW_DEFAULT_MEMORY_POOL": "mimalloc",
        "MIMALLOC_PURGE_DELAY": "0",
    }
    assert allocator_env(mine) == mine


def test_allocator_env_is_off_with_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "worker_retain_memory", False)
    assert allocator_env({"PATH": "/usr/bin"}) == {"PATH": "/usr/bin"}


def test_glibc_applies_every_tunable() -> None:
    shown = subprocess.run(
        [_dynamic_loader(), "--list-tunables"], env=allocator_env({}), capture_output=True,
        text=True, check=True,
    ).stdout  # fmt: skip
    values = dict(re.findall(r"^(glibc\.malloc\.\w+): (\w+)", shown, re.MULTILINE))
    assert int(values["glibc.malloc.mmap_threshold"], 16) == MMAP_THRESHOLD
    assert int(values["glibc.malloc.trim_threshold"], 16) == TRIM_THRESHOLD
    assert int(values["glibc.malloc.top_pad"], 16) == TOP_PAD
    assert int(values["glibc.malloc.arena_max"], 16) == ARENA_MAX


def test_arrow_allocates_from_glibc_in_a_process_with_the_settings() -> None:
    code = "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    env = {**allocator_env({}), "PATH": "/usr/bin"}
    shown = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert shown.strip() == ARROW_POOL


def test_local_cluster_workers_and_their_pool_processes_get_the_settings(
    fused_options, tmp_path: Path
) -> None:
    with LocalCluster(workers=1, flower_port=None, cluster_dir=tmp_path, verbose=False) as cluster:
        (worker,) = cluster.workers.values()
        pool = descendants(worker.pid)
        assert pool  # the prefork pool processes inherit the environment
        for pid in [worker.pid, *pool]:
            _assert_settings(pid)


def test_cli_worker_execs_celery_with_the_settings(
    redis_url: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    name = f"mem-{uuid.uuid4().hex[:6]}@127.0.0.1"
    env = {**clean_env, "FUSED_CELERY_BROKER_URL": redis_url}
    env["FUSED_CELERY_STORAGE_ROOT"] = str(tmp_path / "storage")
    proc = subprocess.Popen(
        [*CLI, "worker", "--hostname", name, "--concurrency", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_workers(redis_url, [name], timeout=60)
        _assert_settings(proc.pid)  # the CLI exec'd Celery in place: the same pid
    finally:
        stop(proc, signal.SIGTERM)
