"""Redis connections of the state package: shared clients, reachability, URL masking."""

from __future__ import annotations

import multiprocessing
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from fused_celery.errors import BrokerUnavailableError
from fused_celery.state.connection import (
    check_reachable,
    command,
    mark_reachable,
    mask_url,
    redis_client,
    transaction,
)


def dead_url(password: str = "") -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


def test_mask_url_hides_the_password() -> None:
    assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("redis://user:s3cret@host/1") == "redis://user:***@host/1"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"
    assert mask_url(None) == "None" and mask_url("") == "''"


def test_check_reachable(redis_url: str) -> None:
    check_reachable(redis_url)  # answers
    with pytest.raises(BrokerUnavailableError, match="no result backend URL configured"):
        check_reachable(None, what="result backend")
    url = dead_url("s3cret")
    with pytest.raises(BrokerUnavailableError, match=r"\*\*\*.*does not answer") as info:
        check_reachable(url)
    assert "s3cret" not in str(info.value)


def test_recent_answer_skips_the_ping_only_when_asked() -> None:
    dead = dead_url()
    with pytest.raises(BrokerUnavailableError, match=str(dead.split(":")[2])):
        check_reachable(dead, recent=1.0)  # never answered: pinged, and named
    mark_reachable(dead)
    check_reachable(dead, recent=1.0)  # answered "just now": trusted without a round trip
    with pytest.raises(BrokerUnavailableError):
        check_reachable(dead)  # recent=0 (the default) always pings
    with pytest.raises(BrokerUnavailableError):
        check_reachable(dead, recent=1.0)  # the failed ping forgot the answer


def test_one_client_per_url(redis_url: str) -> None:
    client = redis_client(redis_url)
    assert redis_client(redis_url) is client
    assert client.ping() and client.get_encoder().decode_responses


def test_command_replies_as_the_client_does(redis_url: str) -> None:
    client = redis_client(redis_url)
    key = "test:command:value"
    assert command(client, "SET", key, "é") == "OK"  # the raw reply: no response callbacks
    assert command(client, "GET", key) == client.get(key) == "é"  # decoded as the client decodes
    script = "return {ARGV[1], ARGV[2], ARGV[3], ARGV[4], #ARGV[5]}"
    reply = command(client, "EVAL", script, 0, 7, 0.25, b"raw", "s", "x" * 100_000)
    assert reply == client.eval(script, 0, 7, 0.25, b"raw", "s", "x" * 100_000)
    assert reply == ["7", "0.25", "raw", "s", 100_000]
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        command(client, "LPUSH", key, "a")
    with pytest.raises(redis.exceptions.DataError, match="'bool'"):
        command(client, "SET", key, True)
    assert command(client, "GET", key) == "é"  # the connection is still in step after errors


def test_command_reconnects_after_its_connection_was_killed(redis_url: str) -> None:
    client = redis_client(redis_url)
    me = command(client, "CLIENT", "ID")
    killer = redis.Redis.from_url(redis_url)
    assert killer.client_kill_filter(_id=me) == 1
    killer.close()
    assert command(client, "PING") == "PONG"  # retried on a new connection
    assert command(client, "CLIENT", "ID") != me


def test_command_on_a_single_connection_client(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    assert command(client, "CLIENT", "ID") == command(client, "CLIENT", "ID") == client.client_id()
    client.close()


def test_transaction_runs_every_command_at_once(redis_url: str) -> None:
    client = redis_client(redis_url)
    key = "test:transaction:list"
    client.delete(key)
    replies = transaction(
        client, [["RPUSH", key, "a", "b"], ["RPUSH", key, "é", 3], ["LRANGE", key, 0, -1]]
    )
    assert replies == [2, 4, ["a", "b", "é", "3"]]
    script = "return redis.call('LLEN', KEYS[1]) + tonumber(ARGV[1])"
    assert transaction(client, [["EVAL", script, 1, key, 10]]) == [14]


def test_transaction_raises_errors_and_keeps_its_connection_in_step(redis_url: str) -> None:
    """A command that fails inside ``EXEC`` raises its error (the others ran: Redis does not
    roll back); a command refused when queued aborts the whole transaction (nothing ran)."""
    client = redis_client(redis_url)
    text, other = "test:transaction:text", "test:transaction:other"
    client.delete(other)
    client.set(text, "x")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        transaction(client, [["SET", other, "1"], ["LPUSH", text, "a"]])
    assert client.get(other) == "1"
    client.delete(other)
    with pytest.raises(redis.exceptions.ResponseError, match="wrong number of arguments"):
        transaction(client, [["SET", other, "1"], ["GET"]])
    assert client.get(other) is None
    assert command(client, "PING") == "PONG"  # every reply was read: the next command is in step
    assert transaction(client, [["GET", text]]) == ["x"]


def test_transaction_does_not_retry_after_its_connection_was_killed(redis_url: str) -> None:
    """``EXEC`` may have run when a connection breaks: the transaction raises rather than run
    its writes twice; the client's next command gets a new connection."""
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    me = client.client_id()
    killer = redis.Redis.from_url(redis_url)
    assert killer.client_kill_filter(_id=me) == 1
    killer.close()
    with pytest.raises(redis.exceptions.ConnectionError):
        transaction(client, [["INCR", "test:transaction:counter"]])
    assert client.ping()
    client.close()


def test_command_keeps_its_connection_between_calls(redis_url: str) -> None:
    """Calls one after another use one connection; calls at once use one each, kept after."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    me = command(client, "CLIENT", "ID")
    assert [command(client, "CLIENT", "ID") for _ in range(5)] == [me] * 5
    gate = "test:kept:gate"

    def at_once() -> int:
        command(client, "BLPOP", gate, 30)  # holds its connection until the gate opens
        return command(client, "CLIENT", "ID")

    watcher = redis.Redis.from_url(redis_url, decode_responses=True)
    with ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(at_once) for _ in range(4)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # all four blocked at once
            blocked = [c for c in watcher.client_list() if c.get("cmd") == "blpop"]
            if len(blocked) == 4:
                break
            time.sleep(0.01)
        watcher.rpush(gate, 1, 2, 3, 4)
        ids = {f.result(timeout=30) for f in futures}
    watcher.close()
    assert len(ids) == 4 and me in ids
    # the four are kept: later calls reuse them, none is opened
    created = client.connection_pool._created_connections
    assert {command(client, "CLIENT", "ID") for _ in range(8)} <= ids
    assert client.connection_pool._created_connections == created == 4
    client.close()


def test_a_command_cut_short_leaves_no_reply_behind(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that ends before its reply was read (here an exception raised in place of the
    read) disconnects its connection: the next call never reads the old reply."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    command(client, "SET", "test:kept:a", "old")
    real = redis.connection.Connection.read_response
    calls = []

    def cut(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("interrupted")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "read_response", cut)
    with pytest.raises(RuntimeError, match="interrupted"):
        command(client, "GET", "test:kept:a")  # its reply "old" stays unread on the socket
    calls.clear()
    with pytest.raises(RuntimeError, match="interrupted"):
        transaction(client, [["GET", "test:kept:a"]])  # its replies stay unread too
    monkeypatch.undo()
    assert command(client, "SET", "test:kept:a", "new") == "OK"
    assert command(client, "GET", "test:kept:a") == "new"
    assert transaction(client, [["GET", "test:kept:a"]]) == ["new"]
    client.close()


def _client_id(url: str) -> int:
    return command(redis_client(url), "CLIENT", "ID")


def test_a_forked_child_uses_connections_of_its_own(redis_url: str) -> None:
    """A forked child inherits the shared client and its kept connection, and opens its own."""
    client = redis_client(redis_url)
    mine = command(client, "CLIENT", "ID")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as children:
        theirs = children.apply(_client_id, (redis_url,))
    assert theirs != mine
    assert command(client, "PING") == "PONG"  # the parent's connections are still in step


def test_a_transaction_after_a_restart_opens_its_kept_connection_again(redis_url: str) -> None:
    """A kept connection the server has closed since (a restart, here ``CLIENT KILL``) is
    opened again before a transaction is sent: the transaction runs (it is never retried)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    me = command(client, "CLIENT", "ID")
    killer = redis.Redis.from_url(redis_url)
    assert killer.client_kill_filter(_id=me) == 1
    killer.close()
    client.delete("test:kept:counter")
    assert transaction(client, [["INCR", "test:kept:counter"]]) == [1]
    assert command(client, "CLIENT", "ID") != me
    assert client.get("test:kept:counter") == "1"
    client.close()
