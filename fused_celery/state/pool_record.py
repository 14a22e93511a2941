"""A remote pool's record in Redis: creation, atomic state transitions and reads.

This module knows Redis and the key layout of :mod:`fused_celery.state.keys`, not Celery: the
Celery engine (client side) and the task bodies (worker side) both go through
:class:`PoolRecord`.

Every transition that workers and clients may race on is one Lua script of
:mod:`fused_celery.state.scripts` (``scripts/pool_*.lua``), so it is atomic:

- ``pool_create`` (client, at submit): the whole record, every key with its TTL, in one round
  trip.
- ``pool_start`` (worker, before running a message's entries): skip the message if the record is
  gone or it is a duplicate publish; per entry skip it if cancelled, superseded by a newer
  attempt, or already finished; fail it as "worker lost" when the same attempt was delivered
  too often; serve it from the result cache; else mark it ``running`` and return its encoded
  arguments.
- ``pool_finish`` (worker): record each entry's final outcome, or move it to its next attempt
  (automatic retry), and announce it on the pool's events channel (for a small pool, with the
  record's new state, so that a waiting client needs no read: :mod:`fused_celery.state.events`);
  then, for pools capped by ``max_workers``, choose the lane's next batch.
- ``pool_cancel`` / ``pool_retry`` / ``pool_retry_lanes`` (client).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from fused_celery.errors import PoolExpiredError, PoolNotFoundError
from fused_celery.state import keys, scripts
from fused_celery.state.connection import mask_url, redis_client, transaction
from fused_celery.state.events import EVENT_PAYLOAD_MAX_BYTES, SMALL_POOL_ENTRIES
from fused_celery.state.statuses import PENDING

#: A worker may begin the same attempt of an entry this many times (redeliveries after a lost
#: worker) before the attempt is failed as :class:`~fused_celery.errors.UdfWorkerLostError`.
MAX_DELIVERIES = 3

#: Characters of a retried attempt's logs kept in ``history``.
HISTORY_LOG_CHARS = 4096

#: The state of an entry as submitted (``P:state`` value).
INITIAL_STATE = f"{PENDING}|1||"


def _pairs(fields: list[str], value: str) -> list[str]:
    """``[field, value, field, value, ...]`` (one value for every field)."""
    out = [value] * (2 * len(fields))
    out[::2] = fields
    return out


def parse_outcomes(texts: Sequence[str | None]) -> list[Any]:
    """Stored outcomes (JSON texts, None where missing) parsed, in one ``json.loads`` of a JSON
    array of them (about 3x faster than one call each)."""
    return json.loads("[" + ",".join("null" if t is None else t for t in texts) + "]")


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys (the stored form of arguments; hashed for the cache)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def batch_task_id(pool_id: str, batch: int) -> str:
    """The Celery task id of batch ``batch``'s first message (also ``lane item`` ``b<batch>``)."""
    return f"{pool_id}.b{batch}"


def batch_positions(batch: int, batch_size: int, n: int) -> list[int]:
    """Positions of batch ``batch``: ``[batch * batch_size, min(n, (batch + 1) * batch_size))``."""
    return list(range(batch * batch_size, min(n, (batch + 1) * batch_size)))


def parse_state(value: str) -> tuple[str, int, float | None, float | None]:
    """Parse ``"<status>|<attempt>|<started>|<finished>"``."""
    status, attempt, started, finished = value.split("|", 3)
    return (
        status,
        int(attempt),
        float(started) if started else None,
        (float(finished) if finished else None),
    )


#: Pools of at most this many entries are created by one Lua script with their arguments inline;
#: larger ones write their bulk with native commands (see :meth:`PoolRecord.create`).
CREATE_INLINE_MAX = 1000

# --------------------------------------------------------------------------- the record


READ_SCRIPT_MIN = 256
"""Positions from which :meth:`PoolRecord.read_outcomes` reads through the ``pool_read`` script
(below, three ``HMGET`` replies parse as fast and cost Redis less)."""
READ_CHUNK = 5_000
"""Positions per ``pool_read`` call (a script holds Redis while it runs: a large pool's read is
cut into calls of this size)."""


class PoolRecord:
    """The Redis record of one pool.

    pool_id: the pool's id. url: Redis URL of the record (the result backend).
    """

    def __init__(self, pool_id: str, url: str) -> None:
        self.pool_id = pool_id
        self.url = url
        self.client = redis_client(url)
        self.keys = keys.pool_keys(pool_id)
        self.channel = keys.events_channel(pool_id)
        #: Every key a script of this record may name: the parts, ``tomb`` and ``pools``.
        self.script_keys = {
            **self.keys,
            "tomb": keys.tombstone_key(pool_id),
            "pools": keys.POOLS_INDEX,
        }

    # ------------------------------------------------------------------ client: create / read

    def create(
        self, *, meta: dict[str, Any], encoded_args: Sequence[str], batch_size: int, lanes: int
    ) -> None:
        """Write the whole record atomically, every key with its TTL, and index the pool.

        meta: fields of ``meta``. encoded_args: canonical JSON per position. batch_size:
        entries per message. lanes: number of ``max_workers`` lanes (0: uncapped). The first
        messages (one per lane, or every batch) are recorded as task ids ``<pool_id>.b<k>``
        (:func:`batch_task_id`); lane ``j`` starts with batch ``b<j>`` and the later batches
        form the backlog, in order.

        A pool of at most :data:`CREATE_INLINE_MAX` entries is one Lua script (one round trip:
        what a single call pays); a larger one is a MULTI of chunked native writes for its bulk
        (faster in Redis than a loop in Lua, which would block the server longer) followed by
        the same script for the rest, packed by hand (:func:`~.connection.transaction`).
        """
        k = self.keys
        ttl = keys.record_ttl()
        n, bs = len(encoded_args), max(1, batch_size)
        inline = n <= CREATE_INLINE_MAX
        args: dict[str, Any] = {
            "ttl": ttl,
            "tomb_ttl": keys.tombstone_ttl(),
            "created": repr(float(meta.get("created", time.time()))),
            "trim_before": repr(time.time() - ttl),
            "n": n,
            "batch_size": bs,
            "lanes": lanes,
            "pool_id": self.pool_id,
            "placeholder": keys.PLACEHOLDER,
            "meta": json.dumps({f: str(v) for f, v in meta.items()}, ensure_ascii=False),
            "inline": "1" if inline else "0",
            "encoded": encoded_args if inline else (),
        }
        if inline:
            scripts.pool_create(self.client, keys=self.script_keys, args=args)
            return
        chunk = 2000  # values per command
        commands: list[list[Any]] = []  # pool ids are fresh: nothing to delete first
        for start in range(0, n, chunk):
            commands.append(["RPUSH", k["args"], *encoded_args[start : start + chunk]])
            states = [str(p) for p in range(start, min(n, start + chunk))]
            commands.append(["HSET", k["state"], *_pairs(states, INITIAL_STATE)])
        n_batches = math.ceil(n / bs)
        tasks: list[str] = []
        for b in range(min(lanes, n_batches) if lanes else n_batches):
            task_id = batch_task_id(self.pool_id, b)
            tasks += _pairs([str(p) for p in range(b * bs, min(n, (b + 1) * bs))], task_id)
        for start in range(0, len(tasks), 2 * chunk):
            commands.append(["HSET", k["tasks"], *tasks[start : start + 2 * chunk]])
        backlog = [f"b{b}" for b in range(lanes, n_batches)] if lanes else []
        for start in range(0, len(backlog), chunk):  # (an empty list is no key: see retry)
            commands.append(["RPUSH", k["backlog"], *backlog[start : start + chunk]])
        commands.append(scripts.pool_create.eval_command(self.script_keys, args))
        transaction(self.client, commands)

    def delete(self, *, keep_tombstone: bool = False) -> None:
        """Remove the record (used when publishing failed: nothing half-submitted remains; and by
        ``JobPool.delete()``). keep_tombstone: leave the tombstone, so that workers drop the
        pool's queued messages at once (default False)."""
        pipe = self.client.pipeline(transaction=True)
        tomb = [] if keep_tombstone else [keys.tombstone_key(self.pool_id)]
        pipe.delete(*self.keys.values(), *tomb)
        pipe.zrem(keys.POOLS_INDEX, self.pool_id)
        pipe.execute()

    def not_found(self) -> PoolNotFoundError:
        """The error for a record that does not exist: expired (tombstone) or unknown."""
        created = self.client.get(keys.tombstone_key(self.pool_id))
        if created is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(created)))
            return PoolExpiredError(
                f"pool {self.pool_id!r} (created {when}) has expired: its states, results and "
                f"logs are kept for result_expires={keys.record_ttl()} s "
                "(FUSED_CELERY_RESULT_EXPIRES); submit it again"
            )
        return PoolNotFoundError(
            f"no pool with id {self.pool_id!r} in Redis at {mask_url(self.url)}: it was never "
            "submitted there, or it expired long ago; check the id and FUSED_CELERY_BROKER_URL"
        )

    def load(self) -> tuple[dict[str, str], list[str]]:
        """``(meta, encoded args JSON per position)``; raises ``PoolNotFoundError`` if absent."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys["meta"])
        pipe.lrange(self.keys["args"], 0, -1)
        meta, args = pipe.execute()
        if not meta:
            raise self.not_found()
        return meta, args

    def read_states(self, large: bool = False) -> tuple[int | None, dict[str, str]]:
        """``(version, {position: state string})`` in one round trip (version None: gone).
        large: read them through the ``pool_states`` script, one JSON string (default False:
        a pipelined ``GET`` and ``HGETALL``; for pools of :data:`READ_SCRIPT_MIN` entries or
        more, the string parses many times faster)."""
        if large:
            version, flat = json.loads(scripts.pool_states(self.client, keys=self.keys))
            flat = flat or []  # (an empty hash is encoded as an empty object)
            return (int(version) if version is not None else None), dict(zip(flat[::2], flat[1::2]))
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys["version"])
        pipe.hgetall(self.keys["state"])
        version, states = pipe.execute()
        return (int(version) if version is not None else None), states

    def counts(self) -> dict[str, int] | None:
        """Entries per status, kept by the Lua scripts (None when the record is gone)."""
        raw = self.client.hgetall(self.keys["counts"])
        if not raw:
            return None
        return {status: int(count) for status, count in raw.items()}

    def version(self) -> int | None:
        """The change counter (None when the record is gone)."""
        value = self.client.get(self.keys["version"])
        return int(value) if value is not None else None

    def read_outcomes(
        self, positions: Sequence[int]
    ) -> tuple[list[str | None], list[Any], list[str | None]]:
        """``(states, outcomes, logs)`` of ``positions``, each outcome parsed from its JSON
        (None where missing): in one round trip up to :data:`READ_SCRIPT_MIN` positions, else
        in one ``pool_read`` script per :data:`READ_CHUNK` positions (each call reads its
        positions' three fields at one instant)."""
        fields = [str(p) for p in positions]
        if len(fields) < READ_SCRIPT_MIN:
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(self.keys["state"], fields)
            pipe.hmget(self.keys["outcome"], fields)
            pipe.hmget(self.keys["logs"], fields)
            states, texts, logs = pipe.execute()
            return states, parse_outcomes(texts), logs
        states, outcomes, logs = [], [], []
        for i in range(0, len(fields), READ_CHUNK):
            part = fields[i : i + READ_CHUNK]
            raw = scripts.pool_read(self.client, keys=self.keys, args={"positions": part})
            got_states, got_outcomes, got_logs = json.loads(raw)
            states += got_states
            outcomes += got_outcomes
            logs += got_logs
        return states, outcomes, logs

    def hosts(self) -> dict[int, str]:
        """Worker hostname per position (entries that started)."""
        raw = self.client.hgetall(self.keys["hosts"])
        return {int(p): h for p, h in raw.items() if p != keys.PLACEHOLDER}

    def task_ids(self) -> dict[int, str]:
        """Celery task id of each position's latest attempt."""
        raw = self.client.hgetall(self.keys["tasks"])
        return {int(p): t for p, t in raw.items() if p != keys.PLACEHOLDER and t}

    def history(self) -> dict[str, dict[str, Any]]:
        """Retried or superseded attempts, ``"<pos>:<attempt>" -> record``."""
        raw = self.client.hgetall(self.keys["history"])
        return {f: json.loads(v) for f, v in raw.items() if f != keys.PLACEHOLDER and v}

    # ------------------------------------------------------------------ client: transitions

    def cancel(self) -> tuple[int, int, list[str]]:
        """Cancel every pending entry: ``(cancelled, running, task ids to revoke)``."""
        out = scripts.pool_cancel(self.client, keys=self.keys, args={"channel": self.channel})
        return int(out[0]), int(out[1]), [str(t) for t in out[2:]]

    def retry_lanes(
        self, entries: Iterable[tuple[int, int]], *, meta: dict[str, str], now: float | None = None
    ) -> tuple[int, list[tuple[int, str, list[tuple[int, int]]]]]:
        """Retry entries of a capped pool through its lanes: ``entries`` of ``(position, new
        attempt)`` become retry items at the end of the backlog; idle lanes take items at once.
        now: the retry's time, recorded as ``meta.retried`` (default: this call's time).

        Returns ``(moved, [(lane, item, [(pos, attempt)])])``: the items to publish now.
        """
        args = {
            "now": time.time() if now is None else now,
            "channel": self.channel,
            "n": meta.get("n", "0"),
            "batch_size": meta.get("batch_size", "1"),
            "n_lanes": meta.get("lanes", "0"),
            "pool_id": self.pool_id,
            "tag": uuid.uuid4().hex[:8],
            "entries": entries,
        }
        out = scripts.pool_retry_lanes(self.client, keys=self.keys, args=args)
        if int(out[0]) < 0:
            raise self.not_found()
        self._renew()
        assigned = []
        for raw in out[1:]:
            lane, item, *rest = json.loads(raw)
            pairs = [(int(rest[i]), int(rest[i + 1])) for i in range(0, len(rest), 2)]
            assigned.append((int(lane), str(item), pairs))
        return int(out[0]), assigned

    def _renew(self) -> None:
        ttl = keys.record_ttl()
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.values():
            pipe.expire(key, ttl)
        pipe.expire(keys.tombstone_key(self.pool_id), keys.tombstone_ttl())
        pipe.execute()

    def lanes(self) -> dict[str, str]:
        """The lanes hash: lane -> item in flight (``end``), ``"<lane>:prev"`` -> its dispatcher."""
        raw = self.client.hgetall(self.keys["lanes"])
        return {f: v for f, v in raw.items() if f != keys.PLACEHOLDER}

    def retry(self, items: Iterable[tuple[int, int, str]], *, now: float | None = None) -> int:
        """Move entries to a new attempt: ``items`` of ``(position, new attempt, task id)``;
        now: the retry's time, recorded as ``meta.retried`` (default: this call's time).

        Only entries whose current attempt is older move (concurrent retries are harmless).
        Renews the TTL of the whole record. Returns how many moved; raises if the record is gone.
        """
        moved = scripts.pool_retry(
            self.client,
            keys=self.keys,
            args={
                "now": time.time() if now is None else now,
                "channel": self.channel,
                "entries": items,
            },
        )
        if int(moved) < 0:
            raise self.not_found()
        self._renew()
        return int(moved)

    # ------------------------------------------------------------------ worker

    def meta(self) -> dict[str, str]:
        """The ``meta`` hash (empty when the record is gone)."""
        return self.client.hgetall(self.keys["meta"])

    def start(
        self,
        *,
        task_id: str,
        redelivered: bool,
        host: str,
        entries: Sequence[tuple[int, int]],
        cache_digest: str = "",
        cache_max_age: float = 0,
        fetch_meta: bool = False,
    ) -> tuple[list[tuple[int, str, str, str]], dict[str, str] | None] | str:
        """Begin a message: ``([(position, decision, args JSON, cache key)], meta)``, or
        ``"gone"`` / ``"dup"`` for the whole message, or ``"unborn"`` when the record (and its
        tombstone) does not exist yet (submit publishes a small pool's messages first).

        entries: ``(position, attempt)`` pairs. cache_digest: the UDF's cache digest, or ""
        when caching is off. fetch_meta: read the cache settings from the record's ``meta``
        instead and return that hash (``meta`` is None otherwise), so a worker that has not
        seen the pool yet needs no extra round trip. Decisions: run, cached, cancelled,
        superseded, done, lost, gone.
        """
        args = {
            "task_id": task_id,
            "redelivered": "1" if redelivered else "0",
            "host": host,
            "now": repr(time.time()),
            "max_deliveries": MAX_DELIVERIES,
            "channel": self.channel,
            "cache_digest": cache_digest,
            "cache_max_age": cache_max_age,
            "cache_prefix": keys.CACHE_PREFIX,
            "want_meta": "1" if fetch_meta else "0",
            "placeholder": keys.PLACEHOLDER,
            "entries": entries,
        }
        out = scripts.pool_start(self.client, keys=self.script_keys, args=args)
        if isinstance(out, str):
            return out
        out = json.loads(out[0])
        meta = json.loads(out[0]) if fetch_meta else None
        return [
            (int(out[i]), out[i + 1], out[i + 2], out[i + 3]) for i in range(1, len(out), 4)
        ], meta

    def finish(
        self,
        *,
        results: Sequence[dict[str, Any]],
        meta: dict[str, str],
        lane: Sequence[Any] | None,
        redelivered: bool,
        chain: bool,
        retry_task_id: str = "",
    ) -> tuple[str, list[tuple[int, int]]] | None:
        """Record outcomes; return the lane's next item ``(item, [(pos, attempt)])`` or None.

        results: dicts with ``pos, attempt, status, json, logs, started, finished, mode``
        (``final`` or ``retry``) and ``cache_key``. lane: ``[lane, item]`` of a capped pool's
        message. chain: take the lane's next item (False while a retry of this item is
        pending, or for a partial write). Returns None also when the record is gone.
        """
        cache_ttl = int(float(meta.get("cache_max_age") or 0)) if meta.get("cache") == "1" else 0
        args = {
            "now": repr(time.time()),
            "channel": self.channel,
            "n": meta.get("n", "0"),
            "batch_size": meta.get("batch_size", "1"),
            "lane": str(lane[0]) if lane else "",
            "lane_item": str(lane[1]) if lane else "",
            "redelivered": "1" if redelivered else "0",
            "chain": "1" if chain else "0",
            "cache_ttl": cache_ttl,
            "retry_task_id": retry_task_id,
            "pool_id": self.pool_id,
            "payload_max": (
                EVENT_PAYLOAD_MAX_BYTES if int(meta.get("n") or 0) <= SMALL_POOL_ENTRIES else 0
            ),
            "results": [
                (
                    r["pos"],
                    r["attempt"],
                    r["status"],
                    r["json"],
                    r.get("logs", ""),
                    repr(r["started"]) if r.get("started") is not None else "",
                    repr(r["finished"]) if r.get("finished") is not None else "",
                    r.get("mode", "final"),
                    r.get("cache_key", ""),
                )
                for r in results
            ],
        }
        out = scripts.pool_finish(self.client, keys=self.keys, args=args)
        if isinstance(out[0], int):
            return None
        rest = out[1:]
        return str(out[0]), [(int(rest[i]), int(rest[i + 1])) for i in range(0, len(rest), 2)]
