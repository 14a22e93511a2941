"""Redis connections of the state package: shared clients, reachability checks, URL masking.

:func:`redis_client` is the one constructor of the clients that read and write records (shared
per URL, retrying through short outages). :func:`check_reachable` PINGs a URL with a separate
probe client (no retries, short timeouts) so that a dead server is reported at once, naming the
URL. :func:`mask_url` (from :mod:`fused_celery.options`) is how every message names a URL: a
password never appears in an error, a log line or a thread name.

:func:`command` sends one command on a client's connection pool with the client's retries,
packed by hand (each argument encoded by the client's own encoder). redis-py's generic path
(its packer, observability hooks, response callbacks) is slow for the record's Lua scripts,
which take about 30 arguments and run twice per entry. Measured on a 2-CPU VM: one ``EVALSHA``
of 26 arguments took 250-340 µs through ``Redis.evalsha`` and 240-275 µs packed by hand (3,000
calls each); the worker's message function took 1.81 ms through redis-py and 1.2-1.5 ms here
(under ``cProfile``).

Both keep the connections they use between calls (:func:`_take`, :func:`_give`). A redis-py
pool hands out a connection only after checking that it has nothing unread (``can_read``: two
``settimeout`` calls and a non-blocking ``recv``) and records metrics on every hand-out and
return: a ``GET`` took 75 µs of CPU through the pool and 50 µs on a kept connection (2-CPU VM,
medians of 7 × 4,000 calls, the two alternating). A connection is kept only after its reply was
read in full; any other ending disconnects it and returns it to the pool. :func:`command`
retries on a connection error (a kept connection the server has closed); :func:`transaction`,
which must not retry, checks a kept connection before it sends, as the pool would. Kept
connections are at most as many as the calls that ran at once, as in the pool, and a forked
child never uses its parent's.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from fused_celery.errors import BrokerUnavailableError, EvictionPolicyError
from fused_celery.options import mask_url

__all__ = [
    "check_eviction_policy",
    "check_reachable",
    "command",
    "eviction_policy",
    "mark_reachable",
    "mask_url",
    "redis_client",
    "transaction",
]

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str) -> redis.Redis:
    """A shared client for ``url`` that rides out short outages.

    Commands are retried with exponential backoff (about 30 s in all) on connection errors, so a
    Redis restart does not fail a running pool.
    """
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=5,
                socket_timeout=60,
                health_check_interval=30,
                retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=30),
                retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
            )
            _clients[url] = client
        return client


def _pack(client: redis.Redis, args: Sequence[Any]) -> bytes:
    """One command in RESP, each argument encoded as ``client`` encodes it."""
    encoder = client.get_encoder()
    encode, encoding, errors = encoder.encode, encoder.encoding, encoder.encoding_errors
    # a str (most arguments) as the encoder would encode it, without its type checks; anything
    # else through the encoder (its checks: numbers, bytes, and errors for other types). A
    # message's finish (920 arguments) packed in 0.23 ms instead of 0.48 ms.
    parts = [a.encode(encoding, errors) if type(a) is str else encode(a) for a in args]
    return b"".join([b"*%d\r\n" % len(parts)] + [b"$%d\r\n%s\r\n" % (len(p), p) for p in parts])


def transaction(client: redis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Run ``commands`` (each: name, then its arguments) as one ``MULTI`` / ``EXEC`` on one of
    ``client``'s connections, packed as :func:`command` packs; return ``EXEC``'s replies.

    An error reply (a command refused when queued, or failing inside ``EXEC``) raises it, as
    redis-py raises it. A connection error is not retried: ``EXEC`` may have run, and running
    it again would write twice; the caller undoes what it wrote. Measured on a 2-CPU VM, the
    record of a 10,000-entry pool (args, states, task ids: ~50,000 arguments) took 67-89 ms
    through a redis-py pipeline and 37-39 ms this way.
    """
    batch = [("MULTI",), *commands, ("EXEC",)]
    packed = b"".join([_pack(client, c) for c in batch])
    conn = _take(client, check=True)
    ok = False
    try:
        conn.send_packed_command([packed])
        replies = []
        error: Exception | None = None
        for _ in batch:
            try:
                replies.append(conn.read_response())
            except redis.exceptions.ResponseError as exc:  # queued command refused
                error = error or exc
        ok = True  # every reply read: the connection is clean
        if error is not None:
            raise error
        out = replies[-1]
        for reply in out or ():
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
        return list(out or ())
    finally:
        _give(client, conn, ok)


def command(client: redis.Redis, *args: Any) -> Any:
    """Run one command (``args``: name, then its arguments) on ``client``'s connection pool and
    return its reply, decoded as the client decodes; connection errors are retried as the
    client retries them (the connection closed between tries). Error replies raise, as
    redis-py raises them (:class:`redis.exceptions.ResponseError` and its subclasses)."""
    packed = _pack(client, args)
    conn = _take(client)
    ok = False

    def once() -> Any:
        conn.send_packed_command([packed])
        return conn.read_response()

    try:
        out = conn.retry.call_with_retry(once, lambda _error: conn.disconnect())
        ok = True
        return out
    except redis.exceptions.ResponseError:  # an error reply, read in full
        ok = True
        raise
    finally:
        _give(client, conn, ok)


#: connection pool -> the connections :func:`command` and :func:`transaction` keep for it (idle
#: ones; the pool counts them as in use). A forked child starts without any: the parent's stay
#: the parent's (see the ``register_at_fork`` below).
_kept: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
os.register_at_fork(after_in_child=_kept.clear)


def _take(client: redis.Redis, *, check: bool = False) -> Any:
    """A connection for one call: a single-connection client's own, else one kept from an
    earlier call in this process, else one from the pool.

    check: make sure a kept connection is still open (default False: the caller retries on a
    connection error). :func:`transaction` cannot retry, so it asks: a connection the server
    closed since (a restart) is opened again before the transaction is sent, as the pool
    would on hand-out.
    """
    own = client.connection
    if own is not None:
        return own
    pool = client.connection_pool
    try:
        conn = _kept[pool].pop()  # (atomic: two threads never take the same one)
    except (KeyError, IndexError):
        return pool.get_connection()
    if check:
        try:
            if conn.can_read():  # data nobody asked for, or the server's close
                conn.disconnect()
        except (redis.exceptions.ConnectionError, OSError):
            conn.disconnect()  # (the next send connects again)
    return conn


def _give(client: redis.Redis, conn: Any, clean: bool) -> None:
    """After a call on ``conn`` (from :func:`_take`): keep it when its replies were read in
    full (``clean``); else disconnect it and return it to the pool."""
    if client.connection is not None:
        if not clean:
            conn.disconnect()
        return
    pool = client.connection_pool
    if not clean:
        conn.disconnect()
        pool.release(conn)
        return
    _kept.setdefault(pool, []).append(conn)  # (setdefault is atomic)


_probes: dict[str, redis.Redis] = {}

#: ``url`` -> ``time.monotonic()`` when Redis there last answered (see :func:`mark_reachable`).
_answered: dict[str, float] = {}


def mark_reachable(url: str | None) -> None:
    """Remember that Redis at ``url`` just answered a command (see ``check_reachable(recent=)``)."""
    if url:
        _answered[url] = time.monotonic()


def check_reachable(
    url: str | None, timeout: float = 2.0, *, what: str = "broker", recent: float = 0.0
) -> None:
    """Raise :class:`BrokerUnavailableError` naming ``url`` unless Redis answers PING there.

    timeout: seconds to wait (default 2). what: how to call the server in the message.
    recent: skip the PING when Redis at ``url`` answered (a PING, or a command reported with
    :func:`mark_reachable`) within that many seconds (default 0: always PING).
    The probe client (no retries, short timeouts) is kept, so a check costs one round trip.
    """
    if not url:
        raise BrokerUnavailableError(
            f"no {what} URL configured: set fused_celery.options.broker_url or "
            "FUSED_CELERY_BROKER_URL (e.g. redis://127.0.0.1:6379/0)"
        )
    if recent > 0 and time.monotonic() - _answered.get(url, -math.inf) < recent:
        return
    with _clients_lock:
        probe = _probes.get(url)
        if probe is None:
            try:
                probe = redis.Redis.from_url(
                    url,
                    socket_connect_timeout=timeout,
                    socket_timeout=timeout,
                    retry=None,
                    retry_on_timeout=False,
                )
            except ValueError as exc:
                raise BrokerUnavailableError(
                    f"{what} URL {mask_url(url)} is malformed: {exc}"
                ) from None
            _probes[url] = probe
    try:
        probe.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        probe.connection_pool.disconnect()
        _answered.pop(url, None)
        raise BrokerUnavailableError(
            f"the {what} at {mask_url(url)} does not answer ({exc}); start Redis (for example "
            "`fused-celery up`) or fix FUSED_CELERY_BROKER_URL"
        ) from None
    mark_reachable(url)


#: What to do about a Redis that may evict keys.
EVICTION_FIX = (
    "set maxmemory-policy to noeviction (redis.conf or `CONFIG SET maxmemory-policy noeviction`; "
    "on ElastiCache/MemoryDB a parameter group with maxmemory-policy=noeviction), so that Redis "
    "refuses writes when full instead of silently dropping live pools and jobs"
)


def eviction_policy(url: str, timeout: float = 5.0) -> str | None:
    """The ``maxmemory-policy`` of the Redis at ``url``, or None when ``CONFIG`` is not available
    (renamed or disabled, as on some managed Redis). Connection errors are raised
    (``redis.exceptions.ConnectionError``)."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, decode_responses=True
    )
    try:
        return client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.exceptions.ResponseError:  # unknown/renamed command, or no permission (ACL)
        return None
    finally:
        client.close()


def check_eviction_policy(url: str, *, what: str = "broker", timeout: float = 5.0) -> str | None:
    """Refuse a Redis that may evict keys; every pool and job record has a TTL, so a policy but
    ``noeviction`` could drop live ones without a trace.

    Raises :class:`~fused_celery.errors.EvictionPolicyError` naming the policy and the fix when
    ``maxmemory-policy`` is not ``noeviction``. Returns a warning text (to be shown loudly) when
    the policy cannot be read (``CONFIG`` unavailable), else None.
    """
    policy = eviction_policy(url, timeout)
    if policy is None:
        return (
            f"cannot read maxmemory-policy of the {what} at {mask_url(url)} (CONFIG GET is not "
            f"available there): make sure it is noeviction. To fix: {EVICTION_FIX}"
        )
    if policy != "noeviction":
        raise EvictionPolicyError(
            f"the {what} at {mask_url(url)} has maxmemory-policy {policy!r}: Redis may evict "
            f"the records of running pools and jobs when memory runs short. To fix: {EVICTION_FIX}"
        )
    return None
