"""Credentials (issue "Nothing lost, nothing leaked", 5): no password in printed output, error
messages, ``repr(options)`` or any process's command line (what ``ps`` shows every user); the
embedded Redis of ``up`` / ``LocalCluster`` requires a generated password (kept in a 0600 file)
and keeps an append-only file; Flower's ``/metrics`` is behind its basic auth.

Real processes throughout: ``LocalCluster`` (embedded redis-server, a worker, Flower) and the
``fused-celery`` CLI as subprocesses.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from cli_process import CLI, http_status, start_until, stop

from fused_celery.cluster.local_cluster import LocalCluster
from fused_celery.cluster.processes import descendants, pid_alive
from fused_celery.cluster.redis_server import free_port
from fused_celery.options import Options, mask_url, options

SECRET = "s3cr3t-Pa55"


def cmdline(pid: int) -> str:
    """The command line of ``pid`` as ``ps`` shows it to every user."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def env_file_values(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of the cluster's env file, and the Flower comment line's fields."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
        found = re.match(r"# Flower: (\S+)\s+user: (\S+)\s+password: (\S+)", line)
        if found:
            values["flower_url"], values["flower_user"], values["flower_password"] = found.groups()
    return values


# --- options and messages ---------------------------------------------------------------------


def test_repr_of_options_masks_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "broker_url", f"redis://:{SECRET}@127.0.0.1:6379/0")
    monkeypatch.setattr(options, "result_backend", f"rediss://user:{SECRET}@example.org:6380/1")
    for text in (repr(options), str(options)):
        assert SECRET not in text
        assert "redis://:***@127.0.0.1:6379/0" in text
        assert "rediss://user:***@example.org:6380/1" in text
    fresh = Options(broker_url=f"redis://:{SECRET}@h:1/0", aws_secret_access_key=SECRET)
    assert SECRET not in repr(fresh)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"redis://:{SECRET}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (f"redis://default:{SECRET}@h/0", "redis://default:***@h/0"),
        (
            f"rediss://u:{SECRET}@h:6380/0?ssl_cert_reqs=none",
            "rediss://u:***@h:6380/0?ssl_cert_reqs=none",
        ),
        (f"redis://h:6379/0?password={SECRET}&db=1", "redis://h:6379/0?password=***&db=1"),
        (f"redsi://:{SECRET}@127.0.0.1:63x9/0", "redsi://:***@127.0.0.1:63x9/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def _run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("command", "url"),
    [
        (["worker", "--wait-for-broker", "0"], f"redis://:{SECRET}@127.0.0.1:{{port}}/0"),
        (["worker"], f"redsi://:{SECRET}@127.0.0.1:6379/0"),
        (["worker"], f"redis://:{SECRET}@127.0.0.1:63x9/0"),
        (
            ["flower", "--port", "{free}", "--wait-for-broker", "0"],
            f"redis://:{SECRET}@127.0.0.1:{{port}}/0",
        ),
        (["up", "--flower-port", "0", "--workers", "1"], f"redsi://:{SECRET}@127.0.0.1:6379/0"),
    ],
)
def test_cli_errors_never_print_a_password(
    command: list[str], url: str, tmp_path: Path, clean_env: dict[str, str]
) -> None:
    url = url.format(port=free_port())
    command = [c.format(free=free_port()) for c in command]
    result = _run_cli(command, {**clean_env, "FUSED_CELERY_BROKER_URL": url}, tmp_path)
    assert result.returncode == 2, result
    assert SECRET not in result.stdout + result.stderr
    assert ":***@127.0.0.1" in result.stderr  # the URL is still named, masked
    assert "Traceback" not in result.stderr


def test_up_without_binary_masks_the_configured_url(tmp_path: Path, clean_env) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    env = {
        **clean_env,
        "FUSED_CELERY_BROKER_URL": url,
        "FUSED_CELERY_REDIS_SERVER_BINARY": "/nonexistent",
    }
    result = _run_cli(["up", "--workers", "1", "--flower-port", "0"], env, tmp_path)
    assert result.returncode == 2, result
    assert SECRET not in result.stdout + result.stderr
    assert mask_url(url) in result.stderr


# --- the local cluster ------------------------------------------------------------------------


def test_embedded_redis_has_a_password_an_aof_and_nothing_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(options, "broker_url", None)
    monkeypatch.setattr(options, "result_backend", None)
    cluster_dir = tmp_path / "cluster"
    with LocalCluster(workers=1, flower_port=0, cluster_dir=cluster_dir, concurrency=1) as cluster:
        assert cluster.redis is not None
        url = cluster.broker_url
        password = (cluster_dir / "redis-password").read_text().strip()
        assert len(password) >= 24 and f":{password}@" in url
        assert mode(cluster_dir / "redis-password") == 0o600
        # Redis refuses a client without the password, answers one with it
        bare = redis.Redis(host="127.0.0.1", port=cluster.redis.port, socket_timeout=5)
        with pytest.raises(redis.exceptions.AuthenticationError):
            bare.ping()
        bare.close()
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.set("fc:test:durable", "kept")
        # the env file: 0600, the full URL and Flower's password
        env_file = cluster_dir / "cluster.env"
        assert mode(env_file) == 0o600
        values = env_file_values(env_file)
        assert values["FUSED_CELERY_BROKER_URL"] == url
        assert values["flower_password"] == cluster.flower_password
        flower_password = cluster.flower_password
        assert flower_password
        # what ps shows every user: no password in any command line of the cluster
        pids = cluster.pids
        pids += [c for p in list(pids) for c in descendants(p)]
        assert len(pids) >= 3
        for pid in pids:
            line = cmdline(pid)
            assert line and password not in line and flower_password not in line, line
        # Flower's /metrics is behind its basic auth
        assert http_status(f"{cluster.flower_url}/metrics") == 401
        assert http_status(f"{cluster.flower_url}/metrics", ("admin", "wrong")) == 401
        assert http_status(f"{cluster.flower_url}/metrics", ("admin", flower_password)) == 200
        assert http_status(f"{cluster.flower_url}/healthcheck") == 200  # liveness stays open
        client.close()
    printed = capsys.readouterr()
    assert password not in printed.out + printed.err
    assert flower_password not in printed.out + printed.err
    assert str(env_file) in printed.out
    for log in cluster_dir.rglob("*.log"):
        text = log.read_text(errors="replace")
        assert password not in text and flower_password not in text, log
    assert not env_file.exists()  # its Flower password is dead with the cluster
    # a restart keeps the password and, through the append-only file, the data
    with LocalCluster(workers=0, flower_port=None, cluster_dir=cluster_dir, verbose=False) as again:
        assert again.redis is not None and f":{password}@" in again.broker_url
        client = redis.Redis.from_url(again.broker_url)
        assert client.get("fc:test:durable") == b"kept"
        client.close()


def test_up_prints_no_password_and_names_the_secret_file(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    port = free_port()
    proc, output = start_until(
        ["up", "--workers", "1", "--concurrency", "1", "--flower-port", str(port)],
        cwd=tmp_path,
        env=clean_env,
        marker="Cluster up",
    )
    try:
        env_file = tmp_path / ".fused-celery" / "cluster.env"
        values = env_file_values(env_file)
        assert (
            mode(env_file) == 0o600 and mode(tmp_path / ".fused-celery" / "redis-password") == 0o600
        )
        redis_password = (tmp_path / ".fused-celery" / "redis-password").read_text().strip()
        text = "".join(output)
        assert str(env_file) in text
        assert redis_password not in text and values["flower_password"] not in text
        assert f"http://127.0.0.1:{port}" in text
        children = descendants(proc.pid)
        for pid in [proc.pid, *children]:
            line = cmdline(pid)
            assert redis_password not in line and values["flower_password"] not in line, line
        metrics = f"http://127.0.0.1:{port}/metrics"
        assert http_status(metrics) == 401
        assert http_status(metrics, ("admin", values["flower_password"])) == 200
        assert redis.Redis.from_url(values["FUSED_CELERY_BROKER_URL"]).ping()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 15
    while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in children)


def test_flower_command_takes_its_password_from_the_environment(
    tmp_path: Path, clean_env: dict[str, str], redis_url: str
) -> None:
    port = free_port()
    env = {
        **clean_env,
        "FUSED_CELERY_BROKER_URL": redis_url,
        "FLOWER_BASIC_AUTH": f"ops:{SECRET}",
        "FUSED_CELERY_CLUSTER_DIR": str(tmp_path / "cluster"),
    }
    proc = subprocess.Popen(
        [*CLI, "flower", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while http_status_or_none(f"http://127.0.0.1:{port}/healthcheck") is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
        assert SECRET not in cmdline(proc.pid)
        assert http_status(f"http://127.0.0.1:{port}/metrics") == 401
        assert http_status(f"http://127.0.0.1:{port}/metrics", ("ops", SECRET)) == 200
        assert http_status(f"http://127.0.0.1:{port}/workers", ("ops", SECRET)) == 200
    finally:
        stop(proc)
    assert SECRET not in (proc.stdout.read() if proc.stdout else "")


def test_flower_command_generated_password_goes_to_a_private_file(
    tmp_path: Path, clean_env: dict[str, str], redis_url: str
) -> None:
    port = free_port()
    cluster_dir = tmp_path / "cluster"
    env = {
        **clean_env,
        "FUSED_CELERY_BROKER_URL": redis_url,
        "FUSED_CELERY_CLUSTER_DIR": str(cluster_dir),
    }
    env.pop("FLOWER_BASIC_AUTH", None)
    proc = subprocess.Popen(
        [*CLI, "flower", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while http_status_or_none(f"http://127.0.0.1:{port}/healthcheck") is None:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        secret_file = cluster_dir / "flower.env"
        assert mode(secret_file) == 0o600
        values = env_file_values(secret_file)
        password = values["flower_password"]
        assert password not in cmdline(proc.pid)
        assert http_status(f"http://127.0.0.1:{port}/metrics") == 401
        assert http_status(f"http://127.0.0.1:{port}/metrics", ("admin", password)) == 200
    finally:
        stop(proc)
    out = proc.stdout.read() if proc.stdout else ""
    assert password not in out and str(secret_file) in out


def http_status_or_none(url: str) -> int | None:
    try:
        return http_status(url)
    except (urllib.error.URLError, OSError):
        return None


def test_secret_files_are_created_private_even_with_a_lax_umask(tmp_path: Path) -> None:
    from fused_celery.cluster.credentials import read_or_create_password, write_private

    old = os.umask(0)
    try:
        first = read_or_create_password(tmp_path / "pw")
        write_private(tmp_path / "env", "A=1\n")
    finally:
        os.umask(old)
    assert mode(tmp_path / "pw") == 0o600 and mode(tmp_path / "env") == 0o600
    (tmp_path / "pw").chmod(0o644)  # loosened by someone: tightened again, same password
    assert read_or_create_password(tmp_path / "pw") == first
    assert mode(tmp_path / "pw") == 0o600
