"""The user data of a queue's instances: a bash script that installs and starts its worker.

The script holds no secret. It writes the worker's settings (broker URL *without* its password,
the SSM parameter holding the password, the storage root, the region) to
``$FC_HOME/worker.env``, installs the worker, and starts it as the systemd service
``fused-celery-worker`` (restarted if it dies; SIGTERM and :data:`stop timeout <render>` for a
graceful drain). At each start ``fused-celery worker`` reads the password from SSM Parameter
Store through the instance role (``deploy_broker_password_parameter``).

Two ways to install, chosen by the queue's ``image_name``:

- none: a virtualenv with ``pip install fused-celery==<the client's version>`` (pinned) and the
  deployment's extra packages, run by Python 3.11 (installed with ``dnf`` when missing);
- a container image: Docker (``dnf``), a registry login for an ECR image, then
  ``docker run --network host`` of ``fused-celery worker`` in the image.

``FC_HOME`` (default ``/opt/fused-celery``), ``FC_SYSTEMD_DIR`` (``/etc/systemd/system``) and
``FC_PYTHON`` (``python3.11``) may be preset in the environment; the tests run the script on this
machine that way.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

__all__ = ["SERVICE", "render", "worker_argv"]

#: The systemd service running the worker.
SERVICE = "fused-celery-worker.service"

_ECR = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/")


def worker_argv(queue: str, concurrency: int | None) -> list[str]:
    """``fused-celery worker`` arguments for ``queue`` (``--concurrency`` when given)."""
    argv = ["worker", "--queues", queue]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def _env_file(env: Mapping[str, str]) -> str:
    lines = []
    for key, value in env.items():
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) or "\n" in value or "\r" in value:
            raise ValueError(f"worker setting {key!r} cannot go into an environment file")
        lines.append(f"{key}={value}")
    return "\n".join(lines)


def render(
    *,
    queue: str,
    env: Mapping[str, str],
    packages: Sequence[str],
    image: str | None,
    concurrency: int | None,
    stop_timeout: int,
) -> str:
    """The user data script of ``queue``'s instances.

    env: the worker's settings (``FUSED_CELERY_*``, ``AWS_REGION``); no secret may be among them.
    packages: pip requirements, the pinned fused-celery first (ignored with ``image``).
    image: a container image to run instead (default None: pip install).
    concurrency: worker processes (None: one per vCPU). stop_timeout: seconds systemd waits for
    the worker to drain after SIGTERM.
    """
    argv = worker_argv(queue, concurrency)
    head = f"""#!/bin/bash
# fused-celery worker for queue {queue} (rendered by `fused-celery deploy`). No secret here: the
# broker's password is read from SSM Parameter Store at each start, through the instance role.
set -euo pipefail
FC_HOME="${{FC_HOME:-/opt/fused-celery}}"
FC_SYSTEMD_DIR="${{FC_SYSTEMD_DIR:-/etc/systemd/system}}"
mkdir -p "$FC_HOME"
umask 022
cat > "$FC_HOME/worker.env" <<'FC_WORKER_ENV'
{_env_file(env)}
FC_WORKER_ENV
"""
    if image is None:
        install = f"""FC_PYTHON="${{FC_PYTHON:-python3.11}}"
if ! command -v "$FC_PYTHON" >/dev/null 2>&1; then
    dnf install -y python3.11 python3.11-pip
fi
"$FC_PYTHON" -m venv "$FC_HOME/venv"
"$FC_HOME/venv/bin/pip" install --no-cache-dir --upgrade pip
"$FC_HOME/venv/bin/pip" install --no-cache-dir {" ".join(shlex.quote(p) for p in packages)}
"""
        exec_start = f"$FC_HOME/venv/bin/fused-celery {shlex.join(argv)}"
        unit_extra = ""
    else:
        login = ""
        match = _ECR.match(image)
        if match:
            registry = image.split("/", 1)[0]
            login = (
                f"aws ecr get-login-password --region {match.group(2)} | "
                f"docker login --username AWS --password-stdin {registry}\n"
            )
        install = f"""if ! command -v docker >/dev/null 2>&1; then
    dnf install -y docker
fi
systemctl enable --now docker
{login}docker pull {shlex.quote(image)}
"""
        exec_start = (
            "/usr/bin/docker run --rm --name fused-celery-worker --network host "
            f"--env-file $FC_HOME/worker.env --entrypoint fused-celery {shlex.quote(image)} "
            f"{shlex.join(argv)}"
        )
        unit_extra = "After=docker.service\nRequires=docker.service\n"
    unit = f"""cat > "$FC_SYSTEMD_DIR/{SERVICE}" <<FC_UNIT
[Unit]
Description=fused-celery worker (queue {queue})
Wants=network-online.target
After=network-online.target
{unit_extra}
[Service]
EnvironmentFile=$FC_HOME/worker.env
ExecStart={exec_start}
Restart=always
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec={int(stop_timeout)}

[Install]
WantedBy=multi-user.target
FC_UNIT
systemctl daemon-reload
systemctl enable --now {SERVICE}
"""
    return head + install + unit
