"""The instances' user data (issue 16, item 2), run here with bash.

The rendered script runs on this machine with stand-ins on PATH for what only an instance has:
``python3.11`` (makes a venv whose ``pip`` records its arguments and whose ``fused-celery`` is
this tree's), ``systemctl`` (starts the unit's ``ExecStart`` with its ``EnvironmentFile``, as
systemd would) and ``dnf`` (must not be needed). The worker it starts is real: it reads the
broker password from SSM (moto server on 127.0.0.1) and serves its queue on a password-protected
private redis-server. The container-image variant is checked statically (no Docker engine here).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

import fused_celery as fused
from fused_celery.cluster.redis_server import RedisServer
from fused_celery.deploy.config import (
    Facts,
    broker_parts,
    deployment,
    pinned_package,
    worker_env,
)
from fused_celery.deploy.plan import LaunchTemplate, RegionFacts, desired
from fused_celery.deploy.user_data import SERVICE, render
from fused_celery.options import Options, options

pytest_plugins = ["moto_server"]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "ud-Secret-42"
PARAMETER = "/fused-celery/ud-test/broker-password"

PYTHON_STUB = f"""#!/bin/bash
# python3.11 stand-in: `-m venv DIR` makes a venv whose pip records and whose fused-celery is
# this tree's
set -eu
[ "$1" = -m ] && [ "$2" = venv ] || {{ echo "unexpected python call: $*" >&2; exit 1; }}
mkdir -p "$3/bin"
cat > "$3/bin/pip" <<'PIP'
#!/bin/bash
echo "$*" >> "$FC_TEST_LOG/pip.args"
PIP
cat > "$3/bin/fused-celery" <<'FC'
#!/bin/bash
exec {sys.executable} -m fused_celery.cli "$@"
FC
chmod +x "$3/bin/pip" "$3/bin/fused-celery"
"""

SYSTEMCTL_STUB = """#!/bin/bash
# systemctl stand-in: records its calls; `enable --now <unit>` starts the unit's ExecStart with
# its EnvironmentFile, in a session of its own (pid in $FC_TEST_LOG/worker.pid)
set -eu
echo "$*" >> "$FC_TEST_LOG/systemctl.args"
if [ "$1" = enable ] && [ "$2" = --now ]; then
    unit="$FC_SYSTEMD_DIR/$3"
    envfile=$(sed -n 's/^EnvironmentFile=//p' "$unit")
    cmd=$(sed -n 's/^ExecStart=//p' "$unit")
    set -a; . "$envfile"; set +a
    setsid $cmd > "$FC_TEST_LOG/worker.log" 2>&1 < /dev/null &
    echo $! > "$FC_TEST_LOG/worker.pid"
fi
"""

DNF_STUB = """#!/bin/bash
echo "$*" >> "$FC_TEST_LOG/dnf.args"
exit 1
"""


@fused.udf
def triple(x: int) -> int:
    return 3 * x


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def protected_redis(tmp_path):
    with RedisServer(tmp_path / "redis", password=PASSWORD) as server:
        yield server


@pytest.mark.slow
def test_user_data_installs_the_pinned_version_and_starts_the_worker_with_the_ssm_password(
    protected_redis, s3_options, s3_bucket, tmp_path, clean_env, monkeypatch
):
    boto3.client("ssm").put_parameter(
        Name=PARAMETER, Value=PASSWORD, Type="SecureString", Overwrite=True
    )
    bare, password, _ = broker_parts(protected_redis.url.replace("127.0.0.1", "broker.test"))
    assert password == PASSWORD and PASSWORD not in bare
    env = worker_env(
        broker=bare.replace("broker.test", "127.0.0.1"),
        storage_root=s3_bucket,
        region="us-east-1",
        parameter=PARAMETER,
    )
    script = render(
        queue="m5.large",
        env=env,
        packages=[pinned_package(), "rasterio>=1.3"],
        image=None,
        concurrency=1,
        stop_timeout=600,
    )
    assert PASSWORD not in script
    bin_dir, log_dir = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log_dir.mkdir()
    _executable(bin_dir / "python3.11", PYTHON_STUB)
    _executable(bin_dir / "systemctl", SYSTEMCTL_STUB)
    _executable(bin_dir / "dnf", DNF_STUB)
    (tmp_path / "user-data.sh").write_text(script)
    run_env = {
        **clean_env,
        **s3_options,  # on an instance: the instance role; here the moto server
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "FC_HOME": str(tmp_path / "opt"),
        "FC_SYSTEMD_DIR": str(tmp_path / "systemd"),
        "FC_TEST_LOG": str(log_dir),
    }
    (tmp_path / "systemd").mkdir()
    result = subprocess.run(
        ["bash", str(tmp_path / "user-data.sh")],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid_file = log_dir / "worker.pid"
    try:
        assert result.returncode == 0, result.stderr
        assert not (log_dir / "dnf.args").exists()  # Python was there: nothing installed with dnf
        pip = (log_dir / "pip.args").read_text().splitlines()
        assert pip[-1] == f"install --no-cache-dir {pinned_package()} rasterio>=1.3"
        assert (log_dir / "systemctl.args").read_text().splitlines() == [
            "daemon-reload",
            f"enable --now {SERVICE}",
        ]
        unit = (tmp_path / "systemd" / SERVICE).read_text()
        assert (
            f"ExecStart={tmp_path}/opt/venv/bin/fused-celery worker --queues m5.large "
            "--concurrency 1" in unit
        )
        assert "TimeoutStopSec=600" in unit and "KillSignal=SIGTERM" in unit
        written = (tmp_path / "opt" / "worker.env").read_text()
        assert PASSWORD not in written and "FUSED_CELERY_DEPLOY_REQUIRE_SHARED_STORAGE=1" in written
        # the worker it started serves m5.large on the password-protected Redis
        monkeypatch.setattr(options, "broker_url", protected_redis.url)
        monkeypatch.setattr(options, "result_backend", protected_redis.url)
        monkeypatch.setattr(options.show, "enable_tqdm", False)
        wait_until_served("m5.large", log_dir / "worker.log")
        pool = triple.map([1, 2, 3], instance_type="m5.large", engine="remote")
        pool.wait(timeout=180)
        worker_log = (log_dir / "worker.log").read_text()
        assert pool.results() == [3, 6, 9], worker_log[-3000:]
        assert PASSWORD not in worker_log
        assert "[queues]" in worker_log and "m5.large" in worker_log
    finally:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def wait_until_served(queue: str, log: Path, timeout: float = 90.0) -> None:
    """Until a live worker heartbeats ``queue`` (the started worker is up; a submit before that
    is refused with QueueNotServedError, as for any queue nothing serves)."""
    from fused_celery.errors import QueueNotServedError
    from fused_celery.state.workers import check_queue

    deadline = time.monotonic() + timeout
    while True:
        try:
            check_queue(queue)
            return
        except QueueNotServedError:
            if time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log.exists() else "(no log)"
                message = f"no worker served {queue} after {timeout} s:\n{tail}"
                raise AssertionError(message) from None
            time.sleep(0.2)


def _facts() -> Facts:
    return Facts(
        account="123456789012",
        default_region="us-east-1",
        regions={"us-east-1": RegionFacts("vpc-1", ("subnet-1",))},
    )


def test_no_secret_in_any_user_data():
    opts = Options(
        broker_url="rediss://worker:Very-Secret-9@broker.example:6379/0",
        deploy_groups={"m5.large": {}, "r5.large:my-org/fused-worker": {}},
    )
    dep, secret = deployment(opts, _facts())
    assert secret == "Very-Secret-9"
    templates = [r for r in desired(dep) if isinstance(r, LaunchTemplate)]
    assert len(templates) == 2
    for lt in templates:
        assert "Very-Secret-9" not in lt.user_data
        assert "FUSED_CELERY_BROKER_URL=rediss://worker@broker.example:6379/0\n" in lt.user_data
        assert (
            f"FUSED_CELERY_DEPLOY_BROKER_PASSWORD_PARAMETER=/fused-celery/{opts.deploy_name}/broker-password"
            in lt.user_data
        )
        syntax = subprocess.run(["bash", "-n"], input=lt.user_data, text=True, capture_output=True)
        assert syntax.returncode == 0, syntax.stderr


def test_container_image_path_statically():
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fused-worker"
    queue = f"m5.large@eu-west-1:{image}"
    opts = Options(
        broker_url="redis://broker.example:6379/0", deploy_groups={queue: {"concurrency": 2}}
    )
    facts = Facts("123456789012", "us-east-1", {"eu-west-1": RegionFacts("vpc-2", ("subnet-9",))})
    dep, secret = deployment(opts, facts)
    assert secret is None  # no password: no parameter
    [lt] = [r for r in desired(dep) if isinstance(r, LaunchTemplate)]
    assert lt.region == "eu-west-1" and lt.instance_type == "m5.large"
    assert lt.metadata_hop_limit == 2  # the container reaches the instance role's credentials
    script = lt.user_data
    assert "dnf install -y docker" in script and "systemctl enable --now docker" in script
    assert (
        "aws ecr get-login-password --region eu-west-1 | docker login --username AWS "
        "--password-stdin 123456789012.dkr.ecr.eu-west-1.amazonaws.com\n" in script
    )
    assert f"docker pull {image}\n" in script
    assert (
        "ExecStart=/usr/bin/docker run --rm --name fused-celery-worker --network host --env-file "
        f"$FC_HOME/worker.env --entrypoint fused-celery {image} worker --queues {queue} "
        "--concurrency 2\n" in script
    )
    assert "pip install" not in script and "PASSWORD_PARAMETER" not in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
