"""The worker side of the Celery engine: begin, run and record the entries of a pool.

The task definition itself is :mod:`.tasks` (thin); this module is its runtime.

One message of :data:`~fused_celery.celery_app.RUN_ENTRIES` carries
``(pool_id, positions, attempts, lane)``: which entries to run, which attempt of each, and for
pools capped by ``max_workers`` the ``[lane, item]`` it belongs to. Arguments are not in the
message; they are read from the pool record when the entries begin (see
:mod:`fused_celery.state.pool_record`).

A message's life on a worker:

1. ``start`` (one Lua call): skip cancelled / superseded / finished entries and duplicate
   publishes, serve cache hits, mark the rest ``running`` with this worker's hostname. (A
   small pool's messages are published before its record is written: a start that finds
   neither the record nor its tombstone is retried for :data:`RECORD_WAIT_SECONDS`.)
2. Run the entries with :func:`fused_celery.execute.run_batch`, on ``batch_size`` threads
   (``n_processes_per_worker``). Each finished entry is recorded within
   :data:`FLUSH_SECONDS`, not when the whole batch ends. A soft time limit marks unfinished
   entries ``timeout``.
3. Publish the automatic retry of failed entries (attempt <= ``max_retry``, exponential backoff
   as a countdown) *before* recording them, so that a crash in between cannot lose the retry.
4. ``finish`` (one Lua call): outcomes, logs and times; successes into the result cache; for
   capped pools the lane's next item, which this worker then publishes.

Every step is idempotent: with ``acks_late`` a message whose worker died is delivered again and
the record tells what is left to do. A *redelivered* message of several entries does not run
them together again: it republishes each as its own message, so an entry that kills its process
is failed alone (:data:`~fused_celery.state.pool_record.MAX_DELIVERIES`). The Celery return value is
deterministic (``{"pool_id", "positions", "attempts"}``); per-entry results live in the record.

One concept (a message's life on a worker), hence one module of about 600 lines.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, SimpleQueue
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from fused_celery import blobs, codec, execute
from fused_celery.celery_app import RUN_ENTRIES, app
from fused_celery.errors import (
    UdfRuntimeError,
    UdfSerializationError,
    UdfTimeoutError,
    UdfWorkerLostError,
)
from fused_celery.options import DEFAULT_QUEUE, options
from fused_celery.state import blob_sweep
from fused_celery.state.pool_record import (
    HISTORY_LOG_CHARS,
    MAX_DELIVERIES,
    PoolRecord,
    parse_state,
)
from fused_celery.state.statuses import ERROR, PENDING, RUNNING, SUCCESS, TIMEOUT
from fused_celery.task_display import PoolDisplay

logger = logging.getLogger(__name__)

#: Automatic retry ``k`` (1-based) waits ``min(MAX, BASE * 2**(k-1))`` seconds.
RETRY_BACKOFF_BASE = 0.5
RETRY_BACKOFF_MAX = 60.0

#: Entries of a batch that finished are written at most this long after they finished.
FLUSH_SECONDS = 0.05

#: Submit publishes a small pool's messages, then writes its record: a worker that takes one
#: before the record (or its tombstone) exists retries its start for up to this many seconds,
#: then drops the message (its submit failed: the client raised).
RECORD_WAIT_SECONDS = 2.0

_META_CACHE_SIZE = 64
_meta_cache: OrderedDict[str, dict[str, Any]] = OrderedDict()


def retry_countdown(attempt: int) -> float:
    """Seconds before the automatic retry that follows attempt ``attempt`` (1-based)."""
    return min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE * 2 ** max(0, attempt - 1))


def _record(pool_id: str) -> PoolRecord:
    url = options.resolved_result_backend
    if not url:
        raise RuntimeError("no result backend configured: set FUSED_CELERY_BROKER_URL")
    return PoolRecord(pool_id, url)


def _remember_meta(pool_id: str, raw: dict[str, str]) -> dict[str, Any]:
    """Cache a pool's meta (``udf`` parsed into ``udf_obj``) in this process; return it."""
    meta: dict[str, Any] = dict(raw)
    meta["udf_obj"] = json.loads(raw["udf"])
    _meta_cache[pool_id] = meta
    while len(_meta_cache) > _META_CACHE_SIZE:
        _meta_cache.popitem(last=False)
    return meta


def _cached_meta(pool_id: str) -> dict[str, Any] | None:
    """The pool's meta if this process has seen the pool (a pool's meta never changes except
    ``retried``, which workers do not use), else None."""
    found = _meta_cache.get(pool_id)
    if found is not None:
        _meta_cache.move_to_end(pool_id)
    return found


def _pool_meta(record: PoolRecord) -> dict[str, Any] | None:
    """The pool's meta with ``udf`` parsed, cached per process. None when the record is gone."""
    found = _cached_meta(record.pool_id)
    if found is not None:
        return found
    raw = record.meta()
    return _remember_meta(record.pool_id, raw) if raw else None


def _publish(
    pool_id: str,
    entries: list[tuple[int, int]],
    lane: list[Any] | None,
    meta: dict[str, Any],
    *,
    task_id: str,
    countdown: float | None = None,
) -> None:
    """Publish a message of the pool (same queue and time limits as the ones submitted)."""
    soft = float(meta.get("soft_time_limit") or 0) or None
    hard = float(meta.get("time_limit") or 0) or None
    positions = [p for p, _ in entries]
    shown = PoolDisplay.of(meta.get("udf_obj") or {}, pool_id)
    app.send_task(
        RUN_ENTRIES,
        args=[pool_id, positions, [a for _, a in entries], lane],
        task_id=task_id,
        queue=meta.get("queue") or DEFAULT_QUEUE,
        countdown=countdown,
        soft_time_limit=soft,
        time_limit=hard,
        **shown.options(positions),
    )


def _timeout_error(message: str, exc_class: str = "SoftTimeLimitExceeded") -> dict[str, Any]:
    return UdfTimeoutError(message, child_exception_class=exc_class).to_dict()


class _Recorder:
    """Classifies a message's outcomes and writes them: finished ones in small groups while
    the batch runs, retries and the lane's next item at the end (:meth:`close`).

    record / meta: the pool. task_id, lane, redelivered, host: the message. attempt_of:
    position -> attempt. cache_keys: position -> result cache key ("" when not cached).
    """

    def __init__(
        self,
        record: PoolRecord,
        meta: dict[str, Any],
        *,
        task_id: str,
        lane: list[Any] | None,
        redelivered: bool,
        host: str,
        attempt_of: dict[int, int],
        cache_keys: dict[int, str],
    ) -> None:
        self.record = record
        self.meta = meta
        self.task_id = task_id
        self.lane = lane
        self.redelivered = redelivered
        self.host = host
        self.attempt_of = attempt_of
        self.cache_keys = cache_keys
        self.max_retry = int(meta.get("max_retry") or 0)
        self.ready: list[dict[str, Any]] = []  # final results not written yet
        self.retries: list[dict[str, Any]] = []  # failed entries with attempts left
        self.flushed_at = time.monotonic()

    def add(
        self,
        pos: int,
        out: execute.Outcome | dict[str, Any],
        status: str | None = None,
        stored: dict[str, Any] | None = None,
    ) -> None:
        """Take one entry's outcome (``status``/``stored`` given for failures made here)."""
        attempt = self.attempt_of[pos]
        if stored is None:
            stored = _stored_outcome(self.record.pool_id, pos, attempt, out)
        if status is None:
            err = stored.get("error") or {}
            status = (
                SUCCESS
                if stored["ok"]
                else TIMEOUT
                if err.get("type") == "UdfTimeoutError"
                else ERROR
            )
        row = {
            "pos": pos,
            "attempt": attempt,
            "status": status,
            "logs": out.get("logs", ""),
            "started": out.get("started"),
            "finished": out.get("finished"),
        }
        if status != SUCCESS and attempt <= self.max_retry:
            self.retries.append(
                {**row, "mode": "retry", "json": _history(status, stored, out, self.host)}
            )
        else:
            self.ready.append(
                {
                    **row,
                    "mode": "final",
                    "json": json.dumps(stored),
                    "cache_key": self.cache_keys.get(pos, ""),
                }
            )

    def tick(self) -> None:
        """Write finished entries if the oldest waited :data:`FLUSH_SECONDS`."""
        if self.ready and time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.record.finish(
                results=self.ready,
                meta=self.meta,
                lane=None,
                redelivered=self.redelivered,
                chain=False,
            )
            self.ready = []
            self.flushed_at = time.monotonic()

    def close(self) -> None:
        """Publish retries, write everything left, and dispatch the lane's next item."""
        retry_id = f"{self.task_id}.r"
        if self.retries:
            entries = [(r["pos"], r["attempt"] + 1) for r in self.retries]
            worst = max(r["attempt"] for r in self.retries)
            _publish(
                self.record.pool_id,
                entries,
                self.lane,
                self.meta,
                task_id=retry_id,
                countdown=retry_countdown(worst),
            )
        results = self.ready + self.retries
        if not results and not self.lane:
            return
        nxt = self.record.finish(
            results=results,
            meta=self.meta,
            lane=self.lane,
            redelivered=self.redelivered,
            chain=not self.retries,
            retry_task_id=retry_id if self.retries else "",
        )
        self.ready, self.retries = [], []
        if nxt is not None and self.lane:
            item, entries = nxt
            _publish(
                self.record.pool_id,
                entries,
                [self.lane[0], item],
                self.meta,
                task_id=f"{self.record.pool_id}.{item}",
            )


def _run(
    udf: dict[str, Any],
    items: list[tuple[int, dict[str, Any]]],
    threads: int,
    recorder: _Recorder,
    soft_limit: float | None,
) -> threading.Event | None:
    """Run ``items`` (position, encoded kwargs) on ``threads`` threads, handing each outcome to
    ``recorder`` as it comes; a soft time limit turns the unfinished ones into timeouts.

    Returns None, or, when the soft limit struck while entries still ran on threads (a signal
    cannot stop those), an event set once they have all returned: see :func:`_end_stragglers`.
    """
    log_cap = options.max_log_bytes
    done: set[int] = set()
    all_done: threading.Event | None = None
    limit_text = (
        f"the entry ran longer than the soft time limit ({soft_limit:g} s); raise "
        "FUSED_CELERY_TASK_SOFT_TIME_LIMIT / TASK_TIME_LIMIT or split the work"
    )

    def take(pos: int, out: execute.Outcome) -> None:
        err = out.get("error") or {}
        if not out.get("ok") and err.get("child_exception_class") == "SoftTimeLimitExceeded":
            out["error"] = _timeout_error(limit_text)
        done.add(pos)
        recorder.add(pos, out)

    try:
        if len(items) == 1:
            [(pos, out)] = execute.run_batch(udf, items, max_log_bytes=log_cap)
            take(pos, out)
            return None
        todo = deque(items)
        outcomes: SimpleQueue[Any] = SimpleQueue()
        all_done = threading.Event()
        running = [len(items)]
        lock = threading.Lock()
        # drains submitted in all, and those of them that have not taken an entry yet
        drains, spare = [0], [0]

        def add_drain() -> None:  # (called with ``lock`` held)
            drains[0] += 1
            spare[0] += 1
            pool.submit(drain)

        def drain() -> None:
            # Each drain takes entries until none is left. Drains are added one at a time: a
            # drain that takes an entry while more wait, and no other drain is on its way,
            # submits one more (up to ``threads``). Entries that block (I/O) thus soon run
            # ``threads`` at once, while short entries run on one or two threads instead of
            # waking ``threads`` of them (measured: 100 trivial entries on 100 threads
            # took 2.5 ms in all, on one thread 1.4-1.8 ms).
            fresh = True
            while True:
                try:
                    item = todo.popleft()
                except IndexError:
                    if fresh:
                        with lock:
                            spare[0] -= 1
                    return
                with lock:
                    if fresh:
                        spare[0] -= 1
                        fresh = False
                    if todo and not spare[0] and drains[0] < threads:
                        try:
                            add_drain()
                        except RuntimeError:  # the executor was dropped: the message ends
                            pass
                try:
                    outcomes.put(execute.run_batch(udf, [item], max_log_bytes=log_cap)[0])
                except BaseException as exc:  # noqa: BLE001 - handed to the message's thread
                    outcomes.put(exc)
                with lock:
                    running[0] -= 1
                    if running[0] == 0:
                        all_done.set()

        pool = _executor(threads)
        try:
            with lock:
                add_drain()
            left = len(items)
            while left:
                # Wake when every entry is done, or every FLUSH_SECONDS to write what finished
                # (not once per entry: that would cost a thread switch per entry).
                all_done.wait(FLUSH_SECONDS)
                while True:
                    try:
                        got = outcomes.get_nowait()
                    except Empty:
                        break
                    if isinstance(got, BaseException):
                        raise got
                    take(*got)
                    left -= 1
                recorder.tick()
        except BaseException:
            # A soft time limit (or any failure): start no further entry, do not wait for UDF
            # threads that are still running, and do not reuse their executor.
            dropped = 0
            while True:  # (popleft is atomic: each entry is dropped here or run by a thread)
                try:
                    todo.popleft()
                except IndexError:
                    break
                dropped += 1
            with lock:
                running[0] -= dropped
                if running[0] == 0:
                    all_done.set()
            _drop_executor(threads, pool)
            raise
    except SoftTimeLimitExceeded:
        now = time.time()
        for pos, _ in items:
            if pos not in done:
                recorder.add(
                    pos,
                    {"logs": "", "started": now, "finished": now},
                    TIMEOUT,
                    {"ok": False, "value": None, "error": _timeout_error(limit_text)},
                )
        if all_done is not None and not all_done.is_set():
            return all_done
    return None


def _end_stragglers(all_done: threading.Event, deadline: float | None) -> None:
    """Entries that timed out on threads of this process still run (CPU, memory, side effects):
    keep this task busy until they return or the hard time limit (monotonic ``deadline``) kills
    the process, so that the pool replaces it; with no hard limit, leave the process at once
    (``SystemExit``: the worker starts a fresh one). Their outcomes are already recorded."""
    logger.warning(
        "fused-celery: entries that timed out still run on threads of process %d; it is "
        "replaced at the hard time limit",
        os.getpid(),
    )
    if deadline is not None and all_done.wait(max(0.0, deadline - time.monotonic()) + 5.0):
        return
    raise SystemExit(1)


_executors: dict[int, ThreadPoolExecutor] = {}


def _executor(threads: int) -> ThreadPoolExecutor:
    """This process's executor of ``threads`` threads, kept across messages (its threads start
    lazily and are reused: a batch of 100 entries does not start 100 threads every time)."""
    threads = max(1, threads)
    pool = _executors.get(threads)
    if pool is None:
        pool = _executors[threads] = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"fused-entries-{threads}"
        )
    return pool


def _drop_executor(threads: int, pool: ThreadPoolExecutor) -> None:
    """Forget ``pool`` (its threads may still run a UDF) and cancel what it has not started."""
    if _executors.get(max(1, threads)) is pool:
        del _executors[max(1, threads)]
    pool.shutdown(wait=False, cancel_futures=True)


def _constants(meta: dict[str, Any]) -> dict[str, Any]:
    """The pool's constant keyword arguments, encoded, those stored by reference read back:
    read once per process and pool (kept in the cached meta)."""
    found = meta.get("constants_obj")
    if found is None:
        raw = meta.get("constants") or ""
        found = blobs.resolve_kwargs(json.loads(raw), meta.get("args_folder")) if raw else {}
        meta["constants_obj"] = found
    return found


def _with_constants(
    meta: dict[str, Any], items: list[tuple[int, dict[str, Any]]], recorder: _Recorder
) -> list[tuple[int, dict[str, Any]]]:
    """Each entry's arguments with the pool's constants merged under them and arguments stored
    by reference read back; an entry whose arguments cannot be read fails (recorded now)."""
    ready = []
    for pos, encoded in items:
        try:
            ready.append(
                (
                    pos,
                    {**_constants(meta), **blobs.resolve_kwargs(encoded, meta.get("args_folder"))},
                )
            )
        except Exception as exc:  # noqa: BLE001 - storage unreadable: this entry's error
            now = time.time()
            err = UdfSerializationError(
                f"the entry's arguments stored in {meta.get('args_folder')} could not be read: "
                f"{exc}",
                child_exception_class=type(exc).__name__,
            )
            recorder.add(
                pos,
                {"logs": "", "started": now, "finished": now},
                ERROR,
                {"ok": False, "value": None, "error": err.to_dict()},
            )
    return ready


def _stored_outcome(pool_id: str, pos: int, attempt: int, out: Any) -> dict[str, Any]:
    """The outcome as stored in Redis; a large value goes to storage and only its ref stays."""
    if not out.get("ok"):
        return {"ok": False, "value": None, "error": out.get("error")}
    value = out.get("value") or {"j": None}
    if codec.envelope_size(value) > options.large_result_bytes:
        url = blobs.result_url(options.storage_root, pool_id, pos, attempt)
        try:
            ref = blobs.store_envelope(value, url)
        except Exception as exc:  # noqa: BLE001 - storage errors become the entry's error
            err = UdfSerializationError(
                f"the result ({codec.envelope_size(value)} bytes) is over large_result_bytes and "
                f"could not be written to storage at {url}: {exc}",
                child_exception_class=type(exc).__name__,
            )
            return {"ok": False, "value": None, "error": err.to_dict()}
        return {"ok": True, "value": None, "ref": ref, "error": None}
    return {"ok": True, "value": value, "error": None}


def _history(status: str, stored: dict[str, Any], out: Any, host: str) -> str:
    logs = out.get("logs") or ""
    return json.dumps(
        {
            "status": status,
            "error": stored.get("error"),
            "logs": logs[-HISTORY_LOG_CHARS:],
            "started": out.get("started"),
            "finished": out.get("finished"),
            "host": host,
        }
    )


class EntriesTask(Task):
    """Base of the ``run_entries`` task: a safety net for failures outside the UDF.

    When the body raises (a Redis outage longer than the client's retries, a soft time limit
    hit outside user code) or the hard time limit kills the process, the entries of the message
    that are still ``running`` at that attempt are failed (``timeout`` for time limits, else
    ``error``), and retried automatically while attempts remain.
    """

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        try:
            params = _params(args, kwargs)
            record = _record(params["pool_id"])
            meta = _pool_meta(record)
            if meta is None:
                return
            if isinstance(exc, (TimeLimitExceeded, SoftTimeLimitExceeded)):
                status = TIMEOUT
                error = _timeout_error(
                    "the entry ran longer than the time limit "
                    f"({float(meta.get('time_limit') or 0):g} s) and its process was stopped",
                    type(exc).__name__,
                )
            else:
                status = ERROR
                error = UdfRuntimeError(
                    f"the worker failed outside the UDF: {exc!r}",
                    child_exception_class=type(exc).__name__,
                ).to_dict()
            attempt_of = dict(zip(params["positions"], params["attempts"]))
            recorder = _Recorder(
                record,
                meta,
                task_id=task_id,
                lane=params["lane"],
                redelivered=True,
                host="",
                attempt_of=attempt_of,
                cache_keys={},
            )
            states, _, _ = record.read_outcomes(params["positions"])
            now = time.time()
            for pos, state in zip(params["positions"], states):
                if state is None:
                    continue
                current, current_attempt, _, _ = parse_state(state)
                if current_attempt != attempt_of[pos] or current not in (RUNNING, PENDING):
                    continue  # finished (or superseded) before the failure: nothing to redo
                recorder.add(
                    pos,
                    {"logs": "", "started": None, "finished": now},
                    status,
                    {"ok": False, "value": None, "error": error},
                )
            if recorder.ready or recorder.retries:
                recorder.close()
        except Exception:  # noqa: BLE001 - never mask the original failure
            logger.exception("fused-celery: could not record the failure of task %s", task_id)


def fail_refused(task_id: str, args: Any, kwargs: Any, reason: str) -> list[int]:
    """Fail the entries of a ``run_entries`` message this worker refused (unsigned, or signed by
    an untrusted certificate): each one still ``pending``/``running`` at the message's attempt
    becomes a final ``error`` carrying ``reason``. Never retried, and a capped pool's lane is not
    continued: the worker would sign work nobody it trusts asked for. ``args``/``kwargs`` come
    from the refused message (not trusted: they only say which entries to fail). Waits up to
    :data:`RECORD_WAIT_SECONDS` for a record that is not written yet (a small pool publishes
    first). Returns the positions failed."""
    params = _params(args, kwargs)
    record = _record(str(params["pool_id"]))
    meta = _pool_meta(record)
    deadline = time.monotonic() + RECORD_WAIT_SECONDS  # a small pool's record comes after
    while meta is None and time.monotonic() < deadline:
        time.sleep(0.05)
        meta = _pool_meta(record)
    if meta is None:
        return []
    positions = [int(p) for p in params["positions"]]
    attempt_of = dict(zip(positions, (int(a) for a in params["attempts"])))
    recorder = _Recorder(
        record,
        meta,
        task_id=task_id,
        lane=None,
        redelivered=True,
        host="",
        attempt_of=attempt_of,
        cache_keys={},
    )
    recorder.max_retry = -1  # final at once
    error = UdfRuntimeError(reason, child_exception_class="MessageRefused").to_dict()
    states, _, _ = record.read_outcomes(positions)
    now = time.time()
    failed = []
    for pos, state in zip(positions, states):
        if state is None:
            continue
        current, current_attempt, _, _ = parse_state(state)
        if current_attempt != attempt_of.get(pos) or current not in (RUNNING, PENDING):
            continue
        recorder.add(
            pos,
            {"logs": "", "started": None, "finished": now},
            ERROR,
            {"ok": False, "value": None, "error": error},
        )
        failed.append(pos)
    if recorder.ready:
        recorder.close()
    return failed


def _params(args: Any, kwargs: Any) -> dict[str, Any]:
    names = ("pool_id", "positions", "attempts", "lane")
    values = dict(zip(names, args or ()))
    values.update(kwargs or {})
    values.setdefault("lane", None)
    return values


def _split(
    record: PoolRecord,
    meta: dict[str, Any],
    task_id: str,
    positions: list[int],
    attempts: list[int],
    lane: list[Any] | None,
) -> None:
    """Republish a redelivered multi-entry message as one message per entry (ids derived from
    ``task_id``, so a second redelivery republishes the same ones), then let the lane go on."""
    for pos, attempt in zip(positions, attempts):
        _publish(record.pool_id, [(pos, attempt)], None, meta, task_id=f"{task_id}.s{pos}")
    if lane:
        _Recorder(
            record,
            meta,
            task_id=task_id,
            lane=lane,
            redelivered=True,
            host="",
            attempt_of={},
            cache_keys={},
        ).close()


def run_message(
    request: Any,
    pool_id: str,
    positions: list[int],
    attempts: list[int],
    lane: list[Any] | None = None,
) -> dict[str, Any]:
    """Run entries ``positions`` (attempt ``attempts[i]`` each) of pool ``pool_id``; the body of
    the ``run_entries`` task (:mod:`.tasks`).

    request: the Celery task request (id, hostname, delivery info, time limits). lane:
    ``[lane, item]`` when the pool is capped by ``max_workers`` (default None). Returns
    ``{"pool_id", "positions", "attempts"}`` (deterministic; results are in the record).
    """
    began = time.monotonic()
    summary = {"pool_id": pool_id, "positions": positions, "attempts": attempts}
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    host = request.hostname or ""
    record = _record(pool_id)
    meta = _cached_meta(pool_id)
    if redelivered and len(positions) > 1:
        meta = meta or _pool_meta(record)
        if meta is not None:
            _split(record, meta, request.id, positions, attempts, lane)
        return summary
    cache_on = meta is not None and meta.get("cache") == "1"
    deadline = time.monotonic() + RECORD_WAIT_SECONDS
    delay = 0.001
    while True:
        started = record.start(
            task_id=request.id,
            redelivered=redelivered,
            host=host,
            entries=list(zip(positions, attempts)),
            cache_digest=meta.get("cache_digest", "") if meta is not None and cache_on else "",
            cache_max_age=float(meta.get("cache_max_age") or 0) if meta is not None else 0,
            fetch_meta=meta is None,  # a pool new to this process: its meta comes with the start
        )
        # "unborn": submit published this message before writing the record; it is on its way
        if started != "unborn" or time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(2 * delay, 0.05)
    if isinstance(started, str):  # "gone", "dup" (or still "unborn": its submit failed)
        return summary
    begun, fetched = started
    if meta is None:
        if not fetched:
            return summary
        meta = _remember_meta(pool_id, fetched)
    to_run: list[tuple[int, dict[str, Any]]] = []
    cache_keys: dict[int, str] = {}
    lost: list[int] = []
    for pos, decision, args_json, cache_key in begun:
        if decision == "run":
            try:
                encoded = json.loads(args_json)
            except ValueError:
                encoded = {"__undecodable__": {"x": args_json[:100]}}
            to_run.append((pos, encoded))
            cache_keys[pos] = cache_key
        elif decision == "lost":
            lost.append(pos)
    recorder = _Recorder(
        record,
        meta,
        task_id=request.id,
        lane=lane,
        redelivered=redelivered,
        host=host,
        attempt_of=dict(zip(positions, attempts)),
        cache_keys=cache_keys,
    )
    now = time.time()
    for pos in lost:
        err = UdfWorkerLostError(
            f"the worker process running this entry died {MAX_DELIVERIES} times (killed, out "
            "of memory, or the UDF ended the process)",
            child_exception_class="WorkerLostError",
        ).to_dict()
        recorder.add(
            pos,
            {"logs": "", "started": None, "finished": now},
            ERROR,
            {"ok": False, "value": None, "error": err},
        )
    if to_run and (meta.get("constants") or meta.get("args_folder")):
        to_run = _with_constants(meta, to_run, recorder)
    stragglers = None
    if to_run:
        soft = (request.timelimit or (None, None))[1] or float(meta.get("soft_time_limit") or 0)
        threads = max(1, int(meta.get("threads") or 1))
        stragglers = _run(meta["udf_obj"], to_run, threads, recorder, soft)
    recorder.close()
    if stragglers is not None:
        hard = (request.timelimit or (None, None))[0] or float(meta.get("time_limit") or 0)
        _end_stragglers(stragglers, began + hard if hard else None)
    blob_sweep.maybe_sweep()
    return summary
