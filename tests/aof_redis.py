"""A redis-server with an append-only file on a fixed loopback port, SIGKILLable and restartable
on that port at once (for the Redis-restart tests of tests/engines and tests/faults).

``RedisServer.start`` refuses a port that still has TIME_WAIT connections; redis-server itself
binds with SO_REUSEADDR, so a restart on the same port works.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from fused_celery.cluster.redis_server import LOOPBACK, find_redis_server, free_port


class AofRedis:
    """redis-server with ``appendonly yes`` (``appendfsync everysec``, as the embedded one of
    :mod:`fused_celery.cluster.redis_server`) on a fixed loopback port, which can be SIGKILLed
    and started again on the same port (redis-server binds with SO_REUSEADDR)."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.binary = find_redis_server()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AofRedis:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfilename", "appendonly.aof", "--save", "",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
                if client.ping():
                    client.close()
                    return self
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.05)
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on {self.url}")

    def kill(self) -> None:
        """SIGKILL: whatever the AOF did not fsync (up to a second) is lost."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            redis.Redis.from_url(self.url, socket_timeout=5).shutdown(nosave=True)
        except redis.exceptions.RedisError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
