"""pytest plugin: an S3 server (moto's server mode) on 127.0.0.1, started and stopped by fixtures.

Load it from a test module with ``pytest_plugins = ["moto_server"]``.

Fixtures:

- ``moto_server`` (session): a :class:`MotoServer` on a free loopback port (``.endpoint``,
  ``.pid``, ``.log()``); stopped by pid at the end of the session.
- ``s3_options`` (function): ``fused_celery.options`` pointed at the server (endpoint, region,
  test credentials) and the same settings in the environment (``FUSED_CELERY_S3_*`` and the
  standard ``AWS_*``) for subprocesses; both restored afterwards. Yields the env dict.
- ``s3_bucket`` (function): a new, empty bucket; yields ``"s3://<bucket>"``.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fused_celery.options import options

START_TIMEOUT = 30.0
REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """``python -m moto.server`` as a subprocess on 127.0.0.1.

    log_dir: where its output goes (``moto.log``). Methods: ``start()`` (waits until it
    answers HTTP), ``stop()``, ``log()``.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_path = Path(log_dir) / "moto.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id (None before start)."""
        return self.process.pid if self.process else None

    def start(self) -> None:
        """Start the server and wait until it answers (raises with its log after 30 s)."""
        self.port = _free_port()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=1) as resp:
                    if resp.status < 500:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer within {START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s), by its pid."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log(self) -> str:
        """The server's output so far."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """An S3 server on a free loopback port for the whole session."""
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment that points fused-celery and plain AWS/pyarrow clients at ``endpoint``."""
    return {
        "FUSED_CELERY_S3_ENDPOINT_URL": endpoint,
        "FUSED_CELERY_S3_REGION": REGION,
        "FUSED_CELERY_AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "FUSED_CELERY_AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def s3_options(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """``options`` and the environment pointed at the moto server for one test."""
    fields = ("s3_endpoint_url", "s3_region", "aws_access_key_id", "aws_secret_access_key")
    saved = {f: getattr(options, f) for f in fields}
    env = s3_env(moto_server.endpoint)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    options.s3_endpoint_url = moto_server.endpoint
    options.s3_region = REGION
    options.aws_access_key_id = ACCESS_KEY
    options.aws_secret_access_key = SECRET_KEY
    try:
        yield env
    finally:
        for f, value in saved.items():
            setattr(options, f, value)


@pytest.fixture
def s3_bucket(moto_server: MotoServer, s3_options: dict) -> str:
    """A new empty bucket on the moto server; its URL ``s3://<name>``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    client.create_bucket(Bucket=name)
    return f"s3://{name}"


__all__ = ["MotoServer", "moto_server", "s3_bucket", "s3_env", "s3_options"]
