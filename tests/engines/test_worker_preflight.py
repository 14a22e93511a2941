"""A worker's start checks (issue 16, item 3): a Redis that may evict keys is refused (or, where
CONFIG is unavailable, warned about loudly with the fix), and a worker started by ``deploy``
refuses a local-disk storage root. Private redis-servers with the policies under test; real
``celery worker`` and ``fused-celery worker`` processes.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fused_celery.cluster.local_cluster import child_env, worker_command
from fused_celery.cluster.redis_server import RedisServer
from fused_celery.engines.celery.preflight import check_worker
from fused_celery.errors import EvictionPolicyError, SharedStorageRequiredError
from fused_celery.options import Options, options


@pytest.fixture(scope="module")
def evicting_redis(tmp_path_factory):
    server = RedisServer(
        tmp_path_factory.mktemp("lru"), extra_args=["--maxmemory-policy", "allkeys-lru"]
    )
    with server:
        yield server.url


@pytest.fixture(scope="module")
def redis_without_config(tmp_path_factory):
    """A Redis whose CONFIG command is disabled, as on some managed services."""
    server = RedisServer(
        tmp_path_factory.mktemp("noconfig"), extra_args=["--rename-command", "CONFIG", ""]
    )
    with server:
        yield server.url


def _cli_worker(env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fused_celery.cli", "worker", "--wait-for-broker", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_celery_worker_refuses_an_evicting_redis(evicting_redis, tmp_path):
    name = f"lru-{uuid.uuid4().hex[:6]}@127.0.0.1"
    result = subprocess.run(
        worker_command(name, concurrency=1),
        env=child_env(evicting_redis),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "maxmemory-policy 'allkeys-lru'" in out and "noeviction" in out, out[-2000:]
    assert "ready." not in out  # never started consuming


def test_cli_worker_refuses_an_evicting_redis(evicting_redis, clean_env):
    result = _cli_worker({**clean_env, "FUSED_CELERY_BROKER_URL": evicting_redis})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: the broker at redis://127.0.0.1:")
    assert (
        "allkeys-lru" in result.stderr and "CONFIG SET maxmemory-policy noeviction" in result.stderr
    )


def test_deploy_checks_the_broker_too(evicting_redis, redis_url):
    from fused_celery.deploy.run import broker_warnings

    with pytest.raises(EvictionPolicyError, match="allkeys-lru"):
        broker_warnings(Options(broker_url=evicting_redis))
    assert broker_warnings(Options(broker_url=redis_url)) == []  # noeviction: nothing to say
    [unreachable] = broker_warnings(Options(broker_url="redis://127.0.0.1:1/0"), timeout=1)
    assert "does not answer from this machine" in unreachable and "workers check it" in unreachable


def test_config_unavailable_is_a_loud_warning_not_a_refusal(
    redis_without_config, monkeypatch, capsys
):
    monkeypatch.setattr(options, "broker_url", redis_without_config)
    monkeypatch.setattr(options, "result_backend", None)
    [warning] = check_worker()
    assert "cannot read maxmemory-policy" in warning and "parameter group" in warning
    assert "WARNING: cannot read maxmemory-policy" in capsys.readouterr().err


def test_deployed_worker_refuses_local_storage(redis_url, clean_env, tmp_path, monkeypatch):
    env = {
        **clean_env,
        "FUSED_CELERY_BROKER_URL": redis_url,
        "FUSED_CELERY_DEPLOY_REQUIRE_SHARED_STORAGE": "1",
        "FUSED_CELERY_STORAGE_ROOT": str(tmp_path / "storage"),
    }
    result = _cli_worker(env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"storage_root {str(tmp_path / 'storage')!r} is on this host's disk" in result.stderr
    assert "FUSED_CELERY_STORAGE_ROOT" in result.stderr
    # the same check in-process, and an s3:// root passes it
    monkeypatch.setattr(options, "broker_url", redis_url)
    monkeypatch.setattr(options, "deploy_require_shared_storage", True)
    monkeypatch.setattr(options, "storage_root", str(Path(tmp_path)))
    with pytest.raises(SharedStorageRequiredError, match="deploy_require_shared_storage"):
        check_worker()
    monkeypatch.setattr(options, "storage_root", "s3://bucket/prefix")
    assert check_worker() == []
