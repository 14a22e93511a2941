"""The Celery engine: every entry of a pool runs in a Celery task on the cluster.

The pool's record (UDF, arguments, per-entry state, outcomes, logs, task ids and attempts) lives
in Redis under the keys of :mod:`fused_celery.state.keys`; it, not Celery's ``PENDING`` (which also
means "unknown id"), is the source of truth for entry statuses. Any process that reaches the same
Redis can :meth:`CeleryEngine.attach` to a pool by id.

Submission writes the record atomically (one Lua script for a small pool: one round trip) and
publishes one message per batch of ``batch_size`` entries (``n_processes_per_worker``, run on
that many threads) through a single producer whose publishes are pipelined (kombu's
``Producer.batch``: about one round trip per 1,000 messages). A large pool writes first, then
publishes. A small pool (``PREFETCH_MAX_ENTRIES``) publishes first, which takes the write off
the critical path of a single call: a worker that takes a message before the record exists (no
record and no tombstone) waits for it (``worker.RECORD_WAIT_SECONDS``). If either step fails,
nothing of the pool remains: messages already sent find nothing to do.

``max_workers`` caps the pool's messages in flight (as the local engine caps its processes, each
running a batch) with *lanes*, worker-side: submit publishes the first ``max_workers`` batches
and queues the rest in the record's backlog; the worker that finishes a lane's item pops the
next item that still has pending entries (skipping cancelled ones) and publishes it. The choice
is atomic in Redis and the message id deterministic, so a redelivered message republishes the
same item and duplicates are dropped at start. Lanes need no client: a capped pool keeps going
after the submitting process exits. ``retry()`` of a capped pool queues retry items behind the
backlog and hands them to idle lanes.

Time limits: every message carries the submitting process's ``task_soft_time_limit`` /
``task_time_limit`` (see :func:`~fused_celery.celery_app.time_limits`).

One concept, hence one module over 600 lines: the client side of the engine interface
(:class:`~fused_celery.engines.base.Engine`) for a pool on the cluster.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis

from fused_celery import codec
from fused_celery.autoscale.cost import CostRow
from fused_celery.celery_app import RUN_ENTRIES, get_app, time_limits
from fused_celery.engines.base import (
    CANCELLED,
    FAILED,
    FINISHED,
    PENDING,
    Engine,
    EntryState,
    PoolSpec,
)
from fused_celery.engines.celery.arguments import store_arguments
from fused_celery.engines.celery.lost import find_lost
from fused_celery.errors import BrokerUnavailableError, UdfRuntimeError
from fused_celery.execute import Outcome
from fused_celery.options import DEFAULT_QUEUE, WHITELISTED_INSTANCE_TYPES, options
from fused_celery.queues import parse_queue
from fused_celery.result_cache import cache_key
from fused_celery.state import workers
from fused_celery.state.connection import check_reachable, mark_reachable, mask_url, redis_client
from fused_celery.state.events import SMALL_POOL_ENTRIES, PoolEvents
from fused_celery.state.keys import RECORD_VERSION
from fused_celery.state.pool_record import (
    INITIAL_STATE,
    READ_SCRIPT_MIN,
    PoolRecord,
    batch_positions,
    batch_task_id,
    canonical_json,
    parse_outcomes,
    parse_state,
)
from fused_celery.state.statuses import ENTRY_WITH_OUTCOME as _OUTCOME_STATUSES
from fused_celery.task_display import PoolDisplay

logger = logging.getLogger(__name__)

#: A waiting client looks for lost messages when the pool has pending entries and its record
#: has not changed for this many seconds (and at most once per this many seconds).
LOST_CHECK_SECONDS = 10.0

#: Pools of at most this many entries read their states, outcomes and logs together with the
#: counts (one round trip instead of three when a waiter sees the pool finished; what a
#: single call, ``udf(x, engine="remote")``, waits for), or take them from the event that woke
#: the waiter, which carries them (no round trip; see ``state/scripts/pool_finish.lua``).
PREFETCH_MAX_ENTRIES = SMALL_POOL_ENTRIES

#: ``submit`` skips its PING of the broker (and result backend) when Redis there answered
#: within this many seconds: a burst of small pools (``udf(x, engine="remote")`` in a loop)
#: pays one round trip less each. If Redis died in that second, writing the record fails with
#: a :class:`BrokerUnavailableError` naming the URL after the client's retries (~30 s).
REACHABLE_SECONDS = 1.0

#: A prefetched snapshot serves at most one ``states()`` / ``outcomes()`` call, within this
#: many seconds of the read.
PREFETCH_SECONDS = 0.1


def load_value(outcome: dict[str, Any]) -> dict[str, Any] | None:
    """The codec envelope of a stored outcome, fetched from storage when it is a reference."""
    if outcome.get("ref"):
        from fused_celery import blobs

        return blobs.load_envelope(outcome["ref"])
    return outcome.get("value")


def _queue_for(spec: PoolSpec) -> str:
    queue = spec.queue or DEFAULT_QUEUE
    if queue != DEFAULT_QUEUE:
        try:
            parse_queue(queue)
        except ValueError:
            allowed = ", ".join(WHITELISTED_INSTANCE_TYPES)
            raise ValueError(
                f"unknown instance type or queue {queue!r}; use one of: {allowed} (optionally "
                "with @<region> and :<image_name>)"
            ) from None
    return queue


def plan_lanes(n: int, batch_size: int, max_workers: int | None) -> tuple[int, int]:
    """``(threads, lanes)`` for a pool: threads per message and lanes (0: uncapped).

    n: entries. batch_size: entries per message, run on as many threads. max_workers: messages
    in flight (None: no cap), like the local engine's processes; 0 lanes when there are no
    more batches than that.
    """
    batch_size = max(1, batch_size)
    if max_workers is None:
        return batch_size, 0
    lanes = max(1, int(max_workers))
    if lanes >= math.ceil(n / batch_size):
        lanes = 0
    return batch_size, lanes


class CeleryEngine(Engine):
    """Runs a pool's entries as Celery tasks; state in Redis (see the module docstring).

    spec: the pool. The Redis holding the record is ``options.resolved_result_backend``; tasks go
    to ``options.broker_url``, queue ``spec.queue`` (an instance type) or ``DEFAULT_QUEUE``.
    """

    name = "celery"

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        self.queue = _queue_for(spec)
        self.record_url = options.resolved_result_backend
        self._record: PoolRecord | None = None
        self._cached: tuple[int, list[EntryState]] | None = None
        # (version, any entry pending, entries finished) at the last read
        self._seen: tuple[int, bool, int] | None = None
        self._changed_at = time.monotonic()
        self._woke_at = 0.0
        self._limits = time_limits()
        self._swept_at = time.monotonic()
        # small pools: (taken at, version, state, outcome, logs) read along with the counts
        self._snapshot: tuple[float, int, dict[str, str], dict[str, str], dict[str, str]] | None
        self._snapshot = None
        self._lanes = plan_lanes(spec.n, spec.batch_size, spec.max_workers)[1]
        self._stored_blobs = False  # submit put arguments in storage
        # the pool's event token taken just before the last read (None: none was taken)
        self._read_token: tuple[int, int] | None = None
        # small pools: (time.monotonic(), event token) taken just before submit wrote the record
        self._submitted: tuple[float, tuple[int, int]] | None = None

    # ------------------------------------------------------------------ helpers

    @property
    def record(self) -> PoolRecord:
        """The pool's Redis record."""
        if self._record is None:
            if not self.record_url:
                raise BrokerUnavailableError(
                    "no broker configured: set fused_celery.options.broker_url or "
                    "FUSED_CELERY_BROKER_URL (e.g. redis://127.0.0.1:6379/0)"
                )
            self._record = PoolRecord(self.pool_id, self.record_url)
        return self._record

    def _publish(self, messages: Sequence[tuple[str, list[int], list[int], Any]]) -> None:
        """Publish ``(task_id, positions, attempts, lane)`` messages through one producer,
        pipelined when the transport supports it. The first message declares the queue on the
        producer's connection (as Celery does for every message); the others skip kombu's
        ``maybe_declare``, which binds a copy of the queue before it finds it declared (a
        quarter of a publish's time in a profile of a 3,000-entry submit)."""
        app = get_app(results=False)
        soft, hard = self._limits
        shown = self._display
        with app.producer_or_acquire() as producer:
            batch = producer.batch() if hasattr(producer, "batch") else contextlib.nullcontext()
            declare: list[Any] | None = None  # None: Celery declares the message's queue
            with batch:
                for task_id, positions, attempts, lane in messages:
                    app.send_task(
                        RUN_ENTRIES,
                        args=[self.pool_id, positions, attempts, lane],
                        task_id=task_id,
                        queue=self.queue,
                        producer=producer,
                        declare=declare,
                        soft_time_limit=soft,
                        time_limit=hard,
                        **shown.options(positions),
                    )
                    declare = []

    @functools.cached_property
    def _display(self) -> PoolDisplay:
        """How the pool's messages read in Flower (``udf:<name>``, pool, entries, arguments)."""
        return PoolDisplay.of(self.spec.udf, self.pool_id, self.spec.args)

    # ------------------------------------------------------------------ Engine

    def submit(self) -> None:
        """Write the pool record and publish the first messages (all, or one per lane); a
        small pool publishes first (see the module docstring).

        Raises :class:`BrokerUnavailableError` naming the URL when the broker or result backend
        does not answer; then nothing of the pool remains in Redis (messages already published
        find no record and do nothing).
        """
        spec = self.spec
        # small pools: the event token before the record exists (see _submitted_state)
        taken = (time.monotonic(), self._token()) if spec.n <= PREFETCH_MAX_ENTRIES else None
        check_reachable(options.broker_url, what="broker", recent=REACHABLE_SECONDS)
        if self.record_url != options.broker_url:
            check_reachable(self.record_url, what="result backend", recent=REACHABLE_SECONDS)
        workers.check_queue(self.queue, self.spec.disk_size_gb)
        n, bs = spec.n, max(1, spec.batch_size)
        threads, lanes = plan_lanes(n, bs, spec.max_workers)
        n_batches = math.ceil(n / bs)
        first = range(lanes) if lanes else range(n_batches)
        messages = []
        for b in first:
            positions = batch_positions(b, bs, n)
            lane = [b, f"b{b}"] if lanes else None
            messages.append((batch_task_id(self.pool_id, b), positions, [1] * len(positions), lane))
        soft, hard = self._limits
        max_age = spec.cache_max_age if spec.cache_max_age is not None else options.cache_max_age
        caching = bool(spec.cache) and max_age > 0
        stored = store_arguments(
            spec.encoded,
            spec.constants,
            root=options.storage_root,
            pool_id=self.pool_id,
            threshold=options.large_argument_bytes,
            limit=options.max_argument_bytes,
        )
        self._stored_blobs = bool(stored.folder)
        meta = {
            "version": RECORD_VERSION,
            "udf": json.dumps(spec.udf),
            "n": n,
            "batch_size": bs,
            "threads": threads,
            "max_workers": spec.max_workers if spec.max_workers is not None else "",
            "lanes": lanes,
            "max_retry": max(0, int(spec.max_retry)),
            "queue": self.queue,
            "cache": 1 if caching else 0,
            "cache_max_age": int(max_age),
            "cache_digest": cache_key(spec.udf, stored.constants) if caching else "",
            "constants": canonical_json(stored.constants) if stored.constants else "",
            "args_folder": stored.folder,
            "created": repr(spec.created_at),
            "retried": "",
            "soft_time_limit": soft,
            "time_limit": hard,
        }
        encoded = stored.entries
        if n <= PREFETCH_MAX_ENTRIES:
            # A small pool publishes first and writes its record while the worker takes the
            # message (a worker that finds neither record nor tombstone yet waits for them, see
            # tasks.RECORD_WAIT_SECONDS): the write is off a single call's critical path. A
            # large pool's messages take longer to publish than a worker would wait.
            self._publish_first(messages, written=False)
            self._write_record(meta, encoded, bs, lanes, published=True)
        else:
            self._write_record(meta, encoded, bs, lanes, published=False)
            self._publish_first(messages, written=True)
        if taken is not None and taken[1] is not None:
            self._submitted = (taken[0], taken[1])

    def _write_record(
        self, meta: dict[str, Any], encoded: list[str], bs: int, lanes: int, *, published: bool
    ) -> None:
        """Write the record (see :meth:`PoolRecord.create`); on failure remove any trace of it
        and raise (:class:`BrokerUnavailableError` for a connection error)."""
        try:
            self.record.create(meta=meta, encoded_args=encoded, batch_size=bs, lanes=lanes)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self.record.delete()
            self._discard_blobs()
            if isinstance(exc, redis.exceptions.ConnectionError):
                raise BrokerUnavailableError(
                    f"the result backend at {mask_url(self.record_url)} failed while the pool "
                    f"was being written ({exc})"
                    + (
                        "; its published messages find no record and do nothing"
                        if published
                        else ""
                    )
                ) from None
            raise
        mark_reachable(self.record_url)

    def _publish_first(
        self, messages: Sequence[tuple[str, list[int], list[int], Any]], *, written: bool
    ) -> None:
        """Publish the pool's first messages; if that fails, delete the record if ``written``
        (messages already sent then find nothing to do) and raise
        :class:`BrokerUnavailableError`."""
        try:
            self._publish(messages)
        except Exception as exc:
            if written:
                with contextlib.suppress(Exception):
                    self.record.delete()
            self._discard_blobs()
            raise BrokerUnavailableError(
                f"could not publish the pool's tasks to the broker at "
                f"{mask_url(options.broker_url)} ({type(exc).__name__}: {exc}); nothing was "
                "submitted"
            ) from exc
        mark_reachable(options.broker_url)

    def _discard_blobs(self) -> None:
        """Delete the arguments submit stored (the pool was not submitted after all)."""
        if self._stored_blobs:
            from fused_celery import blobs

            with contextlib.suppress(Exception):
                blobs.delete_pool(options.storage_root, self.pool_id)

    def states(self) -> list[EntryState]:
        """Every entry's state, from the record (one round trip; cached while unchanged)."""
        record = self.record
        snap = self._fresh_snapshot()
        if snap is not None:
            version, raw = snap[1], snap[2]
        else:
            if self._cached is not None:
                token = self._token()
                version = record.version()
                if version is None:
                    raise record.not_found()
                if version == self._cached[0]:
                    self._read_token = token
                    return list(self._cached[1])
            token = self._token()
            large = self.spec.n >= READ_SCRIPT_MIN
            version, raw = record.read_states(large)  # type: ignore[assignment]
            self._read_token = token
            if version is None:
                raise record.not_found()
        states = [EntryState() for _ in range(self.spec.n)]
        for field, value in raw.items():
            pos = int(field)
            status, attempt, started, finished = parse_state(value)
            if status in (PENDING, CANCELLED):
                attempt -= 1
            states[pos] = EntryState(status, attempt, started, finished)
        self._cached = (version, states)
        self._observe(
            version,
            any(state.status == PENDING for state in states),
            sum(state.status in FINISHED for state in states),
        )
        return list(states)

    def counts(self) -> Counter[str]:
        """Entries per status, from the record's counts hash (one small read, whatever ``n``),
        or for a small pool from the event that just woke a waiter (see :meth:`_event_state`)."""
        k = self.record.keys
        small = self.spec.n <= PREFETCH_MAX_ENTRIES
        event = (self._event_state() or self._submitted_state()) if small else None
        if event is not None:
            version, raw = event
        else:
            pipe = self.record.client.pipeline(transaction=False)
            pipe.get(k["version"])
            pipe.hgetall(k["counts"])
            if small:
                pipe.hgetall(k["state"])
                pipe.hgetall(k["outcome"])
                pipe.hgetall(k["logs"])
            token = self._token()
            version, raw, *rest = pipe.execute()
            self._read_token = token
            if version is None or not raw:
                self._snapshot = None
                raise self.record.not_found()
            if small:
                self._snapshot = (time.monotonic(), int(version), rest[0], rest[1], rest[2])
        counts = Counter({status: int(v) for status, v in raw.items() if int(v) > 0})
        self._observe(int(version), counts[PENDING] > 0, sum(counts[s] for s in FINISHED))
        return counts

    def _event_state(self) -> tuple[int, dict[str, str]] | None:
        """A small pool's ``(version, counts hash)`` from the latest event this process heard,
        if that event carried the pool's state, came after the last read (an event serves one
        read) and was heard less than :data:`PREFETCH_SECONDS` ago; also makes it the snapshot
        that ``states()`` / ``outcomes()`` use, as old as the event. (Entries that only started
        since do not publish: as with a snapshot, their ``running`` may show a moment late.)"""
        events = PoolEvents.existing(self.record.url)
        latest = events.latest(self.pool_id) if events is not None else None
        if latest is None or latest[0] == self._read_token:
            return None
        token, body, heard = latest
        if time.monotonic() - heard > PREFETCH_SECONDS:
            return None
        try:
            data = json.loads(body)
            version = int(data["v"])
            raw, state, outcome, logs = data["c"], data["s"], data["o"], data["l"]
        except (ValueError, KeyError, TypeError):
            return None
        if self._seen is not None and version < self._seen[0]:
            return None  # a read already saw a newer state
        self._snapshot = (heard, version, state, outcome, logs)
        self._read_token = token
        return version, raw

    def _submitted_state(self) -> tuple[int, dict[str, str]] | None:
        """A small pool's ``(version, counts hash)`` as :meth:`submit` wrote it (every entry
        pending), for the first read within :data:`PREFETCH_SECONDS` of the submit when no
        event of the pool came since (nothing finished); also makes it the snapshot. This is
        the read that starts a wait: it costs no round trip."""
        sub, self._submitted = self._submitted, None
        if sub is None or time.monotonic() - sub[0] > PREFETCH_SECONDS or self._token() != sub[1]:
            return None
        n = self.spec.n
        self._snapshot = (sub[0], 0, dict.fromkeys(map(str, range(n)), INITIAL_STATE), {}, {})
        self._read_token = sub[1]
        return 0, {PENDING: str(n)}

    def _token(self) -> tuple[int, int] | None:
        """The pool's event token, if this process already listens to the record's events
        (taken before a read, it lets :meth:`wait_for_change` skip a read of its own)."""
        events = PoolEvents.existing(self.record.url)
        return events.token(self.pool_id) if events is not None else None

    def _fresh_snapshot(
        self, *, keep: bool = True
    ) -> tuple[float, int, dict[str, str], dict[str, str], dict[str, str]] | None:
        """The snapshot of the last ``counts()`` if recent (see :data:`PREFETCH_SECONDS`).

        keep: leave it for one ``outcomes()`` call (``states()``); else it is used up.
        """
        snap = self._snapshot
        if snap is None or time.monotonic() - snap[0] > PREFETCH_SECONDS:
            self._snapshot = None
            return None
        if not keep:
            self._snapshot = None
        return snap

    def _observe(self, version: int, pending: bool, finished: int) -> None:
        self._submitted = None  # a read came first: the state as submitted is old news
        if self._seen is None or self._seen[0] != version:
            self._changed_at = time.monotonic()
        self._seen = (version, pending, finished)

    def _finished_now(self) -> int | None:
        """Entries finished per the counts hash (None when the record is gone)."""
        counts = self.record.counts()
        return None if counts is None else sum(counts.get(s, 0) for s in FINISHED)

    def outcomes(self, positions: Sequence[int]) -> dict[int, Outcome]:
        """Outcomes of finished entries among ``positions`` (large results fetched from storage)."""
        positions = list(positions)
        if not positions:
            return {}
        snap = self._fresh_snapshot(keep=False)
        if snap is not None:
            fields = [str(p) for p in positions]
            states = [snap[2].get(f) for f in fields]
            outcomes = parse_outcomes([snap[3].get(f) for f in fields])
            logs = [snap[4].get(f) for f in fields]
        else:
            states, outcomes, logs = self.record.read_outcomes(positions)
        found: dict[int, Outcome] = {}
        for pos, state, stored, log in zip(positions, states, outcomes, logs):
            if state is None or stored is None:
                continue
            status, _, started, finished = parse_state(state)
            if status not in _OUTCOME_STATUSES:
                continue
            try:
                value = load_value(stored) if stored.get("ok") else None
            except Exception as exc:  # noqa: BLE001 - storage unreadable: report it per entry
                ref = stored.get("ref") or {}
                found[pos] = {
                    "ok": False,
                    "value": None,
                    "logs": log or "",
                    "started": started or 0.0,
                    "finished": finished or 0.0,
                    "error": UdfRuntimeError(
                        f"the result stored at {ref.get('url')} could not be read: {exc}",
                        child_exception_class=type(exc).__name__,
                    ).to_dict(),
                }
                continue
            found[pos] = {
                "ok": bool(stored.get("ok")),
                "value": value,
                "error": stored.get("error"),
                "logs": log or "",
                "started": started or 0.0,
                "finished": finished or 0.0,
            }
        return found

    def wait_for_change(self, timeout: float) -> None:
        """Block until an entry of the pool finishes (Redis pub/sub) or ``timeout`` s pass.

        Entries that start only bump the record's version, which the next read sees. Wake-ups
        are at least ``options.poll_interval`` apart, so a pool finishing thousands of entries a
        second is re-read about 20 times a second, not once per entry; the event of the pool's
        last entry (see :data:`~fused_celery.state.events.DONE_SUFFIX`) ends that pause at once.
        """
        start = time.monotonic()
        deadline = start + max(0.0, timeout)
        pause = min(options.poll_interval - (start - self._woke_at), deadline - start)
        if pause > 0:
            # the pause ends early when the pool's last entry finishes after the caller's read
            listener, read = PoolEvents.existing(self.record.url), self._read_token
            if listener is None or read is None or not listener.connected:
                time.sleep(pause)
            elif listener.wait_done(self.pool_id, read, pause):
                self._woke_at = time.monotonic()
                return
        try:
            events = PoolEvents.for_url(self.record.url)
            if not events.ready(min(1.0, max(0.0, deadline - time.monotonic()))):
                time.sleep(max(0.0, min(options.poll_interval, deadline - time.monotonic())))
                return
            # A token taken just before the caller's read: any entry that finished after that
            # read has moved it, so waiting on it misses nothing.
            token = self._read_token
            if token is None:
                token = events.token(self.pool_id)
                # Entries that finished since the caller's read (their event may have come
                # before the token): return at once. Entries that only started do not count,
                # so a waiter is not woken (and then throttled by the pause above) for them.
                seen = self._seen[2] if self._seen is not None else None
                if seen is None or self._finished_now() != seen:
                    return
            self._maybe_recover()
            events.wait(self.pool_id, token, max(0.0, deadline - time.monotonic()))
        except (redis.exceptions.RedisError, OSError):
            time.sleep(max(0.0, min(options.poll_interval * 4, deadline - time.monotonic())))
        finally:
            self._woke_at = time.monotonic()

    def _maybe_recover(self) -> None:
        """Republish the messages of pending entries that were lost (see :func:`find_lost`),
        when the pool has been still for :data:`LOST_CHECK_SECONDS`."""
        now = time.monotonic()
        if self._seen is None or min(now - self._changed_at, now - self._swept_at) < (
            LOST_CHECK_SECONDS
        ):
            return
        if not self._seen[1]:
            return
        self._swept_at = now
        if not options.broker_url:
            return
        lost = find_lost(self.record, redis_client(options.broker_url), self.queue)
        if not lost:
            return
        messages = [
            (task_id, [p for p, _ in entries], [a for _, a in entries], self._lane_of(task_id))
            for task_id, entries in lost.items()
        ]
        self._publish(messages)
        logger.warning(
            "pool %s: republished %d lost message(s) (%d entries)",
            self.pool_id,
            len(messages),
            sum(len(m[1]) for m in messages),
        )

    def _lane_of(self, task_id: str) -> list[Any] | None:
        """``[lane, item]`` of a lane message id ``<pool>.<item>[.r...]`` (None otherwise)."""
        if not self._lanes:
            return None
        match = re.fullmatch(rf"{re.escape(self.pool_id)}\.([br][\w.]*?)(?:\.r)*", task_id)
        if match is None:
            return None
        item = match.group(1)
        for field, value in self.record.lanes().items():
            if value == item and ":" not in field:
                return [int(field), item]
        return None

    def cancel(self) -> tuple[int, int]:
        """Cancel pending entries: durable cancelled set (checked by workers before running an
        entry) plus a Celery revoke of their tasks. Returns ``(cancelled, running)``."""
        cancelled, running, task_ids = self.record.cancel()
        if task_ids:
            with contextlib.suppress(Exception):  # the durable set is what guarantees it
                control = get_app().control
                for start in range(0, len(task_ids), 5000):
                    control.revoke(task_ids[start : start + 5000])
        self._cached = None
        self._snapshot = None
        return cancelled, running

    def delete(self) -> None:
        """Cancel pending entries, delete the record (its tombstone stays, so that messages
        still queued are dropped at once) and the pool's blobs in storage."""
        from fused_celery import blobs

        with contextlib.suppress(Exception):  # an expired record has nothing to cancel
            self.cancel()
        self.record.delete(keep_tombstone=True)
        blobs.delete_pool(options.storage_root, self.pool_id)
        self._cached = None
        self._snapshot = None

    def retry(self, positions: Sequence[int]) -> None:
        """Run failed (or cancelled) entries again as new attempts, under new task ids."""
        _, raw = self.record.read_states()
        if not raw:
            raise self.record.not_found()
        todo: list[tuple[int, int]] = []
        for pos in dict.fromkeys(positions):
            value = raw.get(str(pos))
            if value is None:
                continue
            status, attempt, _, _ = parse_state(value)
            if status in FAILED or status == CANCELLED:
                todo.append((pos, attempt + 1))
        if not todo:
            return
        # the retry's time is taken before its messages go out: a worker may finish a retried
        # entry before this call returns, and total_time(since_retry=True) must not be negative
        now = time.time()
        if self._lanes:
            self._retry_in_lanes(todo, now)
        else:
            self._retry_now(todo, now)
        self.retried_at = now
        self._cached = None
        self._snapshot = None

    def _retry_now(self, todo: list[tuple[int, int]], now: float) -> None:
        """Uncapped pool: publish the retries, then move the entries to their new attempt (so a
        crash in between leaves the entries as they were, and a duplicate is dropped)."""
        bs = max(1, self.spec.batch_size)
        messages = []
        items = []
        tag = uuid.uuid4().hex[:8]
        for k in range(0, len(todo), bs):
            chunk = todo[k : k + bs]
            task_id = f"{self.pool_id}.t{tag}.{k // bs}"
            messages.append((task_id, [p for p, _ in chunk], [a for _, a in chunk], None))
            items += [(p, a, task_id) for p, a in chunk]
        try:
            self._publish(messages)
        except Exception as exc:
            raise BrokerUnavailableError(
                f"could not publish the retry to the broker at {mask_url(options.broker_url)} "
                f"({type(exc).__name__}: {exc}); the entries were not retried"
            ) from exc
        self.record.retry(items, now=now)

    def _retry_in_lanes(self, todo: list[tuple[int, int]], now: float) -> None:
        """Capped pool: queue the retries behind the backlog; publish what idle lanes took.
        (If publishing fails, the entries are pending with a recorded task id and no message:
        a waiting client republishes them, see :meth:`_maybe_recover`.)"""
        meta = {
            "n": str(self.spec.n),
            "batch_size": str(max(1, self.spec.batch_size)),
            "lanes": str(self._lanes),
        }
        _, assigned = self.record.retry_lanes(todo, meta=meta, now=now)
        messages = [
            (f"{self.pool_id}.{item}", [p for p, _ in pairs], [a for _, a in pairs], [lane, item])
            for lane, item, pairs in assigned
        ]
        if messages:
            try:
                self._publish(messages)
            except Exception as exc:
                raise BrokerUnavailableError(
                    f"could not publish the retry to the broker at "
                    f"{mask_url(options.broker_url)} ({type(exc).__name__}: {exc})"
                ) from exc

    def shutdown(self, wait: bool = True) -> None:
        """Nothing runs in this process (the remote pool keeps running)."""

    # ------------------------------------------------------------------ extras

    def hosts(self) -> dict[int, str]:
        """Celery hostname of the worker that ran each started entry (``cache`` for cache hits)."""
        return self.record.hosts()

    def task_ids(self) -> dict[int, str]:
        """Celery task id of each entry's latest attempt."""
        return self.record.task_ids()

    def cost_rows(self) -> list[CostRow]:
        """Every run of the pool's entries (latest attempts and retried ones), each on its
        worker's instance type with ``concurrency * threads`` slots (a worker that left no
        description: the queue's instance type and one process). Cache hits cost nothing."""
        runs: list[tuple[float, float, str]] = []
        hosts = self.record.hosts()
        for pos, state in enumerate(self.states()):
            host = hosts.get(pos, "")
            if state.started is not None and state.finished is not None and host != "cache":
                runs.append((state.started, state.finished, host))
        for old in self.record.history().values():
            if old.get("started") and old.get("finished"):
                runs.append((float(old["started"]), float(old["finished"]), old.get("host") or ""))
        known = workers.describe(self.record.client, [h for _, _, h in runs])
        try:
            fallback = parse_queue(self.queue).instance_type
        except ValueError:
            fallback = None
        threads = max(1, self.spec.batch_size)
        rows = []
        for started, finished, host in runs:
            info = known.get(host)
            instance_type = info.instance_type if info is not None else fallback
            slots = (info.concurrency if info is not None else 1) * threads
            rows.append(CostRow(instance_type, finished - started, slots))
        return rows

    @classmethod
    def attach(cls, pool_id: str) -> CeleryEngine:
        """Rebuild the engine of an existing pool from its Redis record.

        Raises :class:`~fused_celery.errors.PoolNotFoundError` for an unknown id and its subclass
        :class:`~fused_celery.errors.PoolExpiredError` for a pool whose record expired.
        """
        url = options.resolved_result_backend
        check_reachable(url, what="result backend")
        record = PoolRecord(pool_id, url)  # type: ignore[arg-type]
        meta, args_json = record.load()
        constants = json.loads(meta["constants"]) if meta.get("constants") else {}
        encoded = [{**constants, **json.loads(a)} for a in args_json]
        args = []
        for enc in encoded:
            try:
                args.append(codec.decode_kwargs(enc))
            except Exception:  # noqa: BLE001 - show the wire form rather than fail the attach
                args.append(enc)
        max_workers = meta.get("max_workers")
        spec = PoolSpec(
            udf=json.loads(meta["udf"]),
            args=args,
            encoded=encoded,
            constants=constants,
            max_workers=int(max_workers) if max_workers else None,
            batch_size=int(meta.get("batch_size") or 1),
            max_retry=int(meta.get("max_retry") or 0),
            cache=meta.get("cache") == "1",
            cache_max_age=int(meta.get("cache_max_age") or 0),
            queue=None if meta.get("queue") in (None, "", DEFAULT_QUEUE) else meta["queue"],
            pool_id=pool_id,
            created_at=float(meta.get("created") or time.time()),
        )
        engine = cls(spec)
        engine._record = record
        engine._lanes = int(meta.get("lanes") or 0)
        if meta.get("time_limit"):  # retries run under the limits the pool was submitted with
            engine._limits = (float(meta["soft_time_limit"]), float(meta["time_limit"]))
        if meta.get("retried"):
            engine.retried_at = float(meta["retried"])
        return engine
