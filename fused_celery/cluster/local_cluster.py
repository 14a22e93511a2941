"""A local cluster: Redis (reused or embedded), N Celery worker processes and Flower.

``fused-celery up`` and ``fused-celery demo`` run one; so can Python code::

    with LocalCluster(workers=2) as cluster:
        pool = my_udf.map(range(100))   # options.broker_url now points at the cluster
        print(pool.collect())

Credentials: the embedded Redis requires a password generated once and kept in
``<cluster_dir>/redis-password`` (0600), and keeps an append-only file (a restart loses nothing);
Flower gets its password through the environment, not its command line, and protects
``/metrics`` too (:mod:`.flower_main`). While the cluster runs, ``<cluster_dir>/cluster.env``
(0600) holds the broker URL with its password and Flower's login; what is printed names that
file and never a password (see :mod:`.credentials`).
"""

from __future__ import annotations

import atexit
import os
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from fused_celery.cluster.credentials import (
    flower_line,
    read_or_create_password,
    remove_if_written,
    write_private,
)
from fused_celery.cluster.processes import ManagedProcess, stop_all
from fused_celery.cluster.redis_server import (
    INSTALL_HINT,
    LOOPBACK,
    RedisServer,
    check_redis_url,
    free_port,
    ping,
    port_is_free,
)
from fused_celery.errors import (
    BrokerUnavailableError,
    ClusterStartError,
    PortInUseError,
)
from fused_celery.options import (
    DEFAULT_QUEUE,
    WHITELISTED_INSTANCE_TYPES,
    cpu_count,
    mask_url,
    options,
)
from fused_celery.worker_memory import allocator_env

CELERY_APP = "fused_celery.celery_app"
FLOWER_USER = "admin"
ENV_FILE = "cluster.env"
"""File in ``cluster_dir`` holding the running cluster's URLs with their credentials (0600)."""
REDIS_PASSWORD_FILE = "redis-password"
"""File in ``cluster_dir`` holding the embedded Redis's password (0600, kept across runs)."""


def celery_command(*args: str) -> list[str]:
    """``python -m celery -A fused_celery.celery_app <args>`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, *args]


def flower_command(*args: str) -> list[str]:
    """The command line of Flower: :func:`celery_command` ``flower <args>`` through
    :mod:`fused_celery.cluster.flower_main` (``/metrics`` behind Flower's auth). Pass the
    password in the environment (``FLOWER_BASIC_AUTH=user:password``), not in ``args``."""
    return [
        sys.executable, "-m", "fused_celery.cluster.flower_main", "-A", CELERY_APP, "flower", *args
    ]  # fmt: skip


def without_credentials(url: str) -> str:
    """``url`` without its ``user:password@`` part, for display next to the file that has it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return mask_url(url)
    host, slash, path = rest.partition("/")
    return mask_url(f"{scheme}://{host.rsplit('@', 1)[-1]}{slash}{path}")


def worker_command(
    hostname: str,
    queues: Sequence[str] = (DEFAULT_QUEUE,),
    *,
    concurrency: int | None = None,
    pool: str = "prefork",
    loglevel: str = "INFO",
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``celery worker`` command line of one fused-celery worker.

    hostname: the worker's node name (``name@host``), unique on the broker.
    queues: queues to consume (default ``("fused",)``).
    concurrency: pool processes (default None: Celery's default, the CPU count).
    pool: Celery pool implementation (default ``prefork``).
    loglevel: Celery log level (default ``INFO``).
    extra: further ``celery worker`` arguments.
    """
    cmd = celery_command(
        "worker",
        "--hostname", hostname,
        "--pool", pool,
        "--queues", ",".join(dict.fromkeys(queues)),
        "--loglevel", loglevel,
        "--task-events",
        "--without-gossip",
        "--without-mingle",
    )  # fmt: skip
    if concurrency is not None:
        cmd += ["--concurrency", str(concurrency)]
    return cmd + list(extra)


def child_env(broker_url: str, result_backend: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment with ``FUSED_CELERY_BROKER_URL`` (and result backend) set,
    and this process's message-signing options (``FUSED_CELERY_SECURITY_*``, when set in code),
    so that the workers it starts sign and verify as it does. ``extra`` goes last."""
    env = dict(os.environ)
    env["FUSED_CELERY_BROKER_URL"] = broker_url
    env["FUSED_CELERY_RESULT_BACKEND"] = result_backend or broker_url
    for field in ("security_key", "security_certificate", "security_cert_store"):
        value = getattr(options, field)
        if value:
            env[f"FUSED_CELERY_{field.upper()}"] = value
    if options.security_key_password is not None:
        env["FUSED_CELERY_SECURITY_KEY_PASSWORD"] = options.security_key_password.get_secret_value()
    if options.signing:
        env["FUSED_CELERY_SECURITY_DIGEST"] = options.security_digest
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def _control_app(broker_url: str):  # -> celery.Celery
    """A Celery app on ``broker_url`` for remote control (ping), with the project's transport
    options (key prefix, visibility timeout) and serializers (signed pings when signing is on)."""
    from fused_celery.celery_app import control_app

    return control_app(broker_url)


def wait_for_workers(
    broker_url: str,
    hostnames: Iterable[str],
    *,
    timeout: float = 60.0,
    processes: Mapping[str, ManagedProcess] | None = None,
) -> None:
    """Block until every worker in ``hostnames`` answers ``control.ping`` on ``broker_url``.

    timeout: seconds before :class:`ClusterStartError` (default 60).
    processes: hostname → process; a process that exits while waited for fails fast with the
        tail of its log.
    """
    missing = set(hostnames)
    if not missing:
        return
    ctl = _control_app(broker_url)
    deadline = time.monotonic() + timeout
    try:
        while missing:
            for name, proc in (processes or {}).items():
                if name in missing and not proc.alive():
                    raise ClusterStartError(
                        f"worker {name} exited with code {proc.returncode} before it was ready"
                        f" (log {proc.log_path}):\n{proc.log_tail()}"
                    )
            if time.monotonic() > deadline:
                tails = "".join(
                    f"\n--- {n} ({p.log_path}) ---\n{p.log_tail(8)}"
                    for n, p in (processes or {}).items()
                    if n in missing
                )
                raise ClusterStartError(
                    f"workers {sorted(missing)} did not answer ping within {timeout:.0f} s{tails}"
                )
            try:
                replies = ctl.control.ping(destination=sorted(missing), timeout=0.5) or []
            except Exception:  # broker hiccup while it starts: retry until the deadline
                replies = []
                time.sleep(0.2)
            for reply in replies:
                missing.difference_update(reply)
    finally:
        ctl.close()


def wait_for_http(url: str, timeout: float = 30.0, proc: ManagedProcess | None = None) -> None:
    """Block until ``url`` answers HTTP (any status, 401 included) or raise ClusterStartError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            pass
        if proc is not None and not proc.alive():
            raise ClusterStartError(
                f"{proc.name} exited with code {proc.returncode} before answering at {url}"
                f" (log {proc.log_path}):\n{proc.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise ClusterStartError(f"nothing answered at {url} within {timeout:.0f} s")
        time.sleep(0.1)


class LocalCluster:
    """Redis + Celery workers + Flower on this machine, all on loopback.

    workers: number of worker processes (default 2).
    flower_port: Flower's port on 127.0.0.1 (default 5555; 0 picks a free port; None: no Flower).
    auth: protect Flower with HTTP basic auth, user ``admin`` and a generated password
        (default True).
    queues: extra queues every worker serves besides ``fused`` (default None); each must be
        ``fused`` or a whitelisted instance type.
    concurrency: pool processes per worker (default None: CPU count / workers, at least 1).
    pool: Celery pool implementation (default ``prefork``).
    embedded: True always starts a private Redis; False requires ``options.broker_url`` to
        answer; None (default) uses ``options.broker_url`` if it answers PING, else embeds.
    cluster_dir: folder for Redis data and logs (default ``options.cluster_dir``).
    start_timeout: seconds to wait for workers and Flower (default 90).
    stop_timeout: seconds for a warm shutdown before processes are killed (default 10).
    verbose: print what is started and the URLs (default True).

    ``start()`` sets ``options.broker_url`` / ``result_backend`` (and ``FUSED_CELERY_BROKER_URL``
    for child processes) to the cluster's Redis; ``stop()`` restores them.
    """

    def __init__(
        self,
        workers: int = 2,
        flower_port: int | None = 5555,
        auth: bool = True,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        *,
        pool: str = "prefork",
        embedded: bool | None = None,
        cluster_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 90.0,
        stop_timeout: float = 10.0,
        verbose: bool = True,
    ) -> None:
        if workers < 0:
            raise ValueError("workers must be >= 0")
        allowed = (DEFAULT_QUEUE, *WHITELISTED_INSTANCE_TYPES)
        for queue in queues or ():
            if queue not in allowed:
                raise ValueError(f"unknown queue {queue!r}; allowed: {', '.join(allowed)}")
        self.n_workers = workers
        self.flower_port = flower_port
        self.auth = auth
        self.queues = [DEFAULT_QUEUE, *(q for q in queues or () if q != DEFAULT_QUEUE)]
        self.concurrency = concurrency or max(1, cpu_count() // max(1, workers))
        self.pool = pool
        self.embedded = embedded
        self.cluster_dir = Path(cluster_dir or options.cluster_dir)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.verbose = verbose

        self.redis: RedisServer | None = None
        self.broker_url: str | None = None
        self.flower_password: str | None = None
        self.flower: ManagedProcess | None = None
        self.workers: dict[str, ManagedProcess] = {}
        self._saved: tuple[str | None, str | None, str | None, str | None] | None = None
        self._started = False
        self._env_text: str | None = None

    # -- URLs -------------------------------------------------------------------------------

    @property
    def flower_url(self) -> str | None:
        """``http://127.0.0.1:<port>`` once Flower runs, else None."""
        if self.flower is None or self.flower_port is None:
            return None
        return f"http://{LOOPBACK}:{self.flower_port}"

    @property
    def env_file(self) -> Path:
        """``<cluster_dir>/cluster.env``: the broker URL with its password and Flower's login,
        mode 0600, while the cluster runs (``set -a; . cluster.env; set +a`` loads the URL)."""
        return self.cluster_dir / ENV_FILE

    @property
    def log_dir(self) -> Path:
        """Where worker and Flower logs go: ``<cluster_dir>/logs``."""
        return self.cluster_dir / "logs"

    @property
    def pids(self) -> list[int]:
        """Process ids of everything this cluster started (Redis, workers, Flower)."""
        procs = [*self.workers.values(), *([self.flower] if self.flower else [])]
        pids = [p.pid for p in procs if p.pid is not None]
        if self.redis is not None and self.redis.pid is not None:
            pids.append(self.redis.pid)
        return pids

    # -- start / stop -----------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    def _resolve_broker(self) -> str:
        configured = options.broker_url
        if configured and self.embedded is not True:
            check_redis_url(configured)
            if ping(configured, timeout=1.0):
                self._say(f"Using the Redis at {mask_url(configured)}")
                return configured
            if self.embedded is False:
                raise BrokerUnavailableError(
                    f"no Redis answers at {mask_url(configured)} (FUSED_CELERY_BROKER_URL); "
                    "start it, or fix the URL"
                )
        try:
            password = read_or_create_password(self.cluster_dir / REDIS_PASSWORD_FILE)
            self.redis = RedisServer(
                self.cluster_dir / "redis", appendonly=True, password=password
            ).start()
        except BrokerUnavailableError as exc:
            tried = (
                f"no Redis answers at {mask_url(configured)}"
                if configured
                else "no broker is configured (FUSED_CELERY_BROKER_URL is unset)"
            )
            raise BrokerUnavailableError(
                f"{tried} and an embedded Redis cannot be started: {exc}"
            ) from None
        note = f" (none answers at {mask_url(configured)})" if configured else ""
        self._say(
            f"Started an embedded Redis at {without_credentials(self.redis.url)}{note}, "
            f"password-protected, data in {self.redis.dir}"
        )
        return self.redis.url

    def start(self) -> LocalCluster:
        """Start Redis (if needed), the workers and Flower; return when all of them answer."""
        if self._started:
            return self
        if self.flower_port and not port_is_free(self.flower_port):
            raise PortInUseError(
                f"port {self.flower_port} on {LOOPBACK} is already in use, so Flower cannot "
                "start there; pick another with --flower-port (or stop whatever holds it)"
            )
        self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from fused_celery.celery_app import serializer_config

        serializer_config()  # signing configured in part: say so before starting anything
        self.broker_url = self._resolve_broker()
        self._saved = (
            options.broker_url,
            options.result_backend,
            os.environ.get("FUSED_CELERY_BROKER_URL"),
            os.environ.get("FUSED_CELERY_RESULT_BACKEND"),
        )
        result_backend = (
            options.result_backend if self.redis is None and options.result_backend else None
        )
        options.broker_url = self.broker_url
        options.result_backend = result_backend or self.broker_url
        os.environ["FUSED_CELERY_BROKER_URL"] = self.broker_url
        os.environ["FUSED_CELERY_RESULT_BACKEND"] = options.result_backend
        env = child_env(self.broker_url, options.result_backend)

        tag = f"{os.getpid()}-{secrets.token_hex(2)}"
        host = socket.gethostname()
        for i in range(1, self.n_workers + 1):
            name = f"worker{i}-{tag}@{host}"
            proc = ManagedProcess(
                name,
                worker_command(name, self.queues, concurrency=self.concurrency, pool=self.pool),
                env=allocator_env(env),
                log_path=self.log_dir / f"worker{i}.log",
            )
            self.workers[name] = proc.start()

        if self.flower_port is not None:
            if self.flower_port == 0:
                self.flower_port = free_port()
            args = [f"--port={self.flower_port}", f"--address={LOOPBACK}"]
            flower_env = {k: v for k, v in env.items() if k != "FLOWER_BASIC_AUTH"}
            if self.auth:  # by environment: a command line is visible to every local user
                self.flower_password = secrets.token_urlsafe(18)
                flower_env["FLOWER_BASIC_AUTH"] = f"{FLOWER_USER}:{self.flower_password}"
            self.flower = ManagedProcess(
                "flower",
                flower_command(*args),
                env=flower_env,
                log_path=self.log_dir / "flower.log",
            ).start()

        self._say(
            f"Starting {self.n_workers} worker(s) (queues {','.join(self.queues)}, "
            f"concurrency {self.concurrency}); logs in {self.log_dir}"
        )
        wait_for_workers(
            self.broker_url, self.workers, timeout=self.start_timeout, processes=self.workers
        )
        if self.flower is not None:
            wait_for_http(f"{self.flower_url}/healthcheck", self.start_timeout, self.flower)
        self._write_env_file()
        self.print_urls()

    def _write_env_file(self) -> None:
        assert self.broker_url is not None
        text = (
            f"# fused-celery local cluster (pid {os.getpid()}): its URLs with their credentials."
            "\n# Keep it private (mode 0600). Load into a shell: "
            f"set -a; . {self.env_file.resolve()}; set +a\n"
            f"FUSED_CELERY_BROKER_URL={self.broker_url}\n"
            f"FUSED_CELERY_RESULT_BACKEND={options.result_backend or self.broker_url}\n"
        )
        if self.flower_url and self.flower_password:
            text += flower_line(self.flower_url, FLOWER_USER, self.flower_password)
        write_private(self.env_file, text)
        self._env_text = text

    def print_urls(self) -> None:
        """Print the Redis and Flower URLs, never a password: the file holding them
        (:attr:`env_file`, mode 0600) is named instead."""
        assert self.broker_url is not None
        secret = self.env_file.resolve()
        if mask_url(self.broker_url) != self.broker_url:
            self._say(
                f"Redis:   {without_credentials(self.broker_url)} (password-protected; the URL "
                f"with its password is in {secret}, mode 0600)"
            )
            self._say(f"         set -a; . {secret}; set +a   # sets FUSED_CELERY_BROKER_URL")
        else:
            self._say(f"Redis:   {self.broker_url}")
            self._say(f"         export FUSED_CELERY_BROKER_URL={self.broker_url}")
        if self.flower_url:
            self._say(f"Flower:  {self.flower_url}  {self.flower_login}")
        self._say(f"Workers: {', '.join(self.workers) or 'none'}")

    @property
    def flower_login(self) -> str:
        """How to log in to Flower, without the password: ``(user admin; password in
        <cluster.env>, mode 0600)`` or ``(no auth, loopback only)``."""
        if self.flower_password:
            return f"(user {FLOWER_USER}; password in {self.env_file.resolve()}, mode 0600)"
        return "(no auth, loopback only)"

    def dead_workers(self) -> list[str]:
        """Hostnames of workers whose process has exited."""
        return [name for name, proc in self.workers.items() if not proc.alive()]

    def stop(self) -> None:
        """Stop Flower, the workers (warm shutdown, then kill) and the embedded Redis; restore
        the broker options. Safe to call more than once."""
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        procs = [*([self.flower] if self.flower else []), *self.workers.values()]
        stop_all(procs, timeout=self.stop_timeout)
        if self.redis is not None:
            self.redis.stop()
        if self._env_text is not None:  # its Flower password died with Flower
            remove_if_written(self.env_file, self._env_text)
            self._env_text = None
        if self._saved is not None:
            broker, backend, env_broker, env_backend = self._saved
            options.broker_url = broker
            options.result_backend = backend
            for key, value in (
                ("FUSED_CELERY_BROKER_URL", env_broker),
                ("FUSED_CELERY_RESULT_BACKEND", env_backend),
            ):
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._saved = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        broker = mask_url(self.broker_url) if self.broker_url else None
        return f"<LocalCluster {state} broker={broker} workers={len(self.workers)}>"


__all__ = [
    "ClusterStartError",
    "LocalCluster",
    "PortInUseError",
    "INSTALL_HINT",
    "celery_command",
    "child_env",
    "flower_command",
    "wait_for_http",
    "wait_for_workers",
    "worker_command",
]
