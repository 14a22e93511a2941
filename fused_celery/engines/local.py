"""The local engine: the pool's entries run in worker *processes* on this machine.

Workers are ``python -m fused_celery.engines.local_worker`` subprocesses talking over pipes, so
the user's ``__main__`` is never re-imported and no forked copy of a threaded parent exists. A
dispatcher thread hands out entries (small adaptive batches for tiny entries, one at a time for
slow ones), collects outcomes, retries failures up to ``max_retry`` and replaces workers that
die. Because the dispatcher knows exactly which entry each worker runs, an entry that kills its
process (``os._exit``, a segfault) fails alone with :class:`UdfWorkerLostError`, an entry over
``options.task_time_limit`` ends ``timeout``, and the rest of the pool finishes.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from fused_celery.engines.base import (
    CANCELLED,
    ERROR,
    FAILED,
    PENDING,
    RUNNING,
    SUCCESS,
    TIMEOUT,
    Engine,
    EntryState,
    Notifier,
    PoolSpec,
)
from fused_celery.engines.local_process import WorkerProcess, can_fork, start_worker
from fused_celery.errors import UdfTimeoutError, UdfWorkerLostError
from fused_celery.execute import Outcome
from fused_celery.options import cpu_count, options
from fused_celery.result_cache import DiskCache, cache_key

#: Target wall time of one batch of tiny entries (seconds).
_BATCH_SECONDS = 0.01
#: Largest adaptive batch.
_MAX_BATCH = 64
#: Seconds a worker process may take to start before its entries count as overrun.
_START_SECONDS = 120.0


class _Worker:
    """One worker subprocess and the entries it holds, in the order it runs them."""

    def __init__(self, init_msg: tuple[Any, ...], *, fork: bool = False) -> None:
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        self.proc: WorkerProcess = start_worker(p2c_r, c2p_w, fork=fork)
        os.close(p2c_r)
        os.close(c2p_w)
        self.tx = Connection(p2c_w, readable=False)
        self.rx = Connection(c2p_r, writable=False)
        self.batches: deque[tuple[list[int], int]] = deque()  # (positions, threads)
        self.progress_at = time.time()
        self.batch_started = time.time()  # when the first of ``batches`` began running
        self.spawned = time.time()
        self.ready = False  # the process said it has started (its imports are done)
        self.dead = False
        self._send_lock = threading.Lock()  # the dispatcher and cancel() both send
        self.send(init_msg)

    @property
    def inflight(self) -> list[int]:
        return [p for positions, _ in self.batches for p in positions]

    def started(self) -> None:
        """The process reported ready: the time of what it holds counts from now."""
        self.ready = True
        self.progress_at = self.batch_started = time.time()

    def overran(self, now: float, limit: float) -> bool:
        """True when an entry has run longer than ``limit`` s: one entry without progress
        for that long, or a batch on threads (its entries run together) begun that long ago.
        Before the process is ready (starting an interpreter under load can take seconds),
        only a start longer than ``limit`` and :data:`_START_SECONDS` counts."""
        if not self.batches:
            return False
        if not self.ready:
            return now - self.spawned > max(limit, _START_SECONDS)
        if self.batches[0][1] > 1 and now - self.batch_started > limit:
            return True
        return now - self.progress_at > limit

    def running(self) -> list[int]:
        """Entries this worker is running now: the first unreported entry of its first batch
        (batches run in order, one entry at a time), or the whole batch when it runs on threads."""
        if not self.batches:
            return []
        positions, threads = self.batches[0]
        return list(positions) if threads > 1 else positions[:1]

    def send(self, msg: Any) -> bool:
        try:
            with self._send_lock:
                self.tx.send(msg)
            return True
        except (BrokenPipeError, OSError):
            return False

    def finished(self, pos: int) -> None:
        """Drop ``pos`` from the in-flight batches."""
        self.progress_at = time.time()
        for positions, _ in self.batches:
            if pos in positions:
                positions.remove(pos)
                break
        while self.batches and not self.batches[0][0]:
            self.batches.popleft()
            self.batch_started = self.progress_at

    def stop(self, kill: bool = False) -> None:
        """Ask the process to exit (kill: terminate at once); close the pipes."""
        if kill:
            self.proc.kill()
        else:
            self.send(None)
        for conn in (self.tx, self.rx):
            try:
                conn.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.dead = True


def _kill_all(workers: list[_Worker]) -> None:
    for w in list(workers):
        if not w.dead:
            w.stop(kill=True)


def _release(workers: list[_Worker], fds: tuple[int, ...]) -> None:
    """Finalizer of a collected engine: kill leftover workers, close the wake pipe."""
    _kill_all(workers)
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class LocalEngine(Engine):
    """Runs a pool's entries in local worker processes (see module docstring).

    spec.max_workers: number of processes (default: CPU count, at most one per batch).
    spec.batch_size: entries handed to a process together and run on that many threads.
    """

    name = "local"

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        self._lock = threading.Lock()
        self._notifier = Notifier()
        self._states = [EntryState() for _ in range(spec.n)]
        self._counts: Counter[str] = Counter({PENDING: spec.n})
        self._outcomes: dict[int, Outcome] = {}
        self._budget = [1 + spec.max_retry] * spec.n  # attempts allowed before failing for good
        self._queue: deque[int] = deque()
        self._workers: list[_Worker] = []
        self._thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []  # every dispatcher started (shutdown joins)
        self._dispatching = False  # a dispatcher is running and will still pick up queued work
        self._alone: set[int] = set()  # entries to run in a batch of their own (see _lost)
        self._cancelled = False
        self._avg: float | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._keys: list[str | None] = [None] * spec.n
        self._cache = DiskCache(options.cache_dir) if spec.cache else None
        self._max_age = (
            spec.cache_max_age if spec.cache_max_age is not None else (options.cache_max_age)
        )
        os.set_blocking(self._wake_r, False)
        self._finalizer = weakref.finalize(
            self, _release, self._workers, (self._wake_r, self._wake_w)
        )

    # ------------------------------------------------------------------ interface

    def submit(self) -> None:
        """Serve cached results at once; queue the rest and start the dispatcher."""
        with self._lock:
            for pos in range(self.spec.n):
                if self._cache is not None:
                    key = cache_key(self.spec.udf, self.spec.encoded[pos])
                    self._keys[pos] = key
                    hit = self._cache.get(key, self._max_age)
                    if hit is not None:
                        self._record(pos, hit, SUCCESS)
                        continue
                self._queue.append(pos)
            self._prestart()
            self._ensure_thread()
        self._notifier.pulse()

    def _prestart(self) -> None:
        """Under the lock, before the dispatcher thread exists: start the worker processes
        from the caller's thread, forked when that is safe (:func:`can_fork`; the dispatcher
        starts later workers, e.g. replacements, as fresh interpreters)."""
        if not self._queue or self._dispatching or self._workers:
            return
        self._fill_workers(fork=can_fork(options.local_start_method))

    def _fill_workers(self, *, fork: bool = False) -> None:
        """Under the lock: start worker processes (forked or fresh interpreters) while work is
        queued and there are fewer than :meth:`_n_processes`."""
        while self._queue and len(self._workers) < self._n_processes():
            self._workers.append(_Worker(self._init_msg(), fork=fork))

    def states(self) -> list[EntryState]:
        with self._lock:
            return [EntryState(s.status, s.attempt, s.started, s.finished) for s in self._states]

    def counts(self) -> Counter[str]:
        with self._lock:
            return +self._counts

    def _set(self, state: EntryState, status: str) -> None:
        self._counts[state.status] -= 1
        self._counts[status] += 1
        state.status = status

    def outcomes(self, positions: Sequence[int]) -> dict[int, Outcome]:
        with self._lock:
            return {p: self._outcomes[p] for p in positions if p in self._outcomes}

    def wait_for_change(self, timeout: float) -> None:
        self._notifier.wait(timeout)

    def cancel(self) -> tuple[int, int]:
        with self._lock:
            self._cancelled = True
            cancelled = 0
            while self._queue:
                pos = self._queue.popleft()
                state = self._states[pos]
                self._set(state, CANCELLED)
                state.started, state.finished = None, None
                self._outcomes.pop(pos, None)
                cancelled += 1
            skips = []
            for w in self._workers:
                queued = [p for p in w.inflight if self._states[p].status == PENDING]
                for pos in queued:  # handed to the worker but not started: it will skip them
                    w.finished(pos)
                    state = self._states[pos]
                    self._set(state, CANCELLED)
                    state.attempt -= 1
                    self._outcomes.pop(pos, None)
                if queued:
                    skips.append((w, queued))
                    cancelled += len(queued)
            running = self._counts[RUNNING]
        for w, queued in skips:
            w.send(("cancel", queued))
        self._wake()
        self._notifier.pulse()
        return cancelled, running

    def retry(self, positions: Sequence[int]) -> None:
        with self._lock:
            self._cancelled = False
            for pos in positions:
                state = self._states[pos]
                if state.status not in FAILED:
                    continue
                self._set(state, PENDING)
                self._budget[pos] = state.attempt + 1 + self.spec.max_retry
                self._queue.append(pos)
            self.retried_at = time.time()
            self._ensure_thread()
        self._wake()
        self._notifier.pulse()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker processes once the queue drains (wait: block until then)."""
        if wait:
            for thread in list(self._threads):
                thread.join()
        else:
            self._wake()

    # ------------------------------------------------------------------ dispatcher

    def _ensure_thread(self) -> None:
        # A dispatcher that decided to exit (it may still be stopping its workers) no longer
        # looks at the queue, so "alive" is not enough: a retry() then needs a new one.
        if self._queue and not self._dispatching:
            self._dispatching = True
            self._thread = threading.Thread(
                target=self._dispatch_loop, name=f"fused-local-{self.pool_id}", daemon=True
            )
            self._threads = [t for t in self._threads if t.is_alive()] + [self._thread]
            self._thread.start()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _n_processes(self) -> int:
        batches = math.ceil(self.spec.n / self.spec.batch_size)
        return max(1, min(self.spec.max_workers or cpu_count(), batches))

    def _batch_plan(self) -> tuple[int, int, int]:
        """(entries per batch, threads per batch, batches in flight per worker)."""
        if self.spec.batch_size > 1:
            return self.spec.batch_size, self.spec.batch_size, 1
        alive = max(1, sum(1 for w in self._workers if not w.dead))
        if self._avg is None or self._avg > 1.0:
            return 1, 1, 1  # long entries: a round trip is negligible, keep the tail balanced
        if self._avg > 0.005:
            # Prefetch one entry (it stays 'pending' and cancellable until it starts) to hide
            # the round trip, except at the tail where it could wait behind a slow one.
            return 1, 1, 2 if len(self._queue) > alive else 1
        size = int(min(_MAX_BATCH, max(1, _BATCH_SECONDS / max(self._avg, 1e-6))))
        size = max(1, min(size, math.ceil(len(self._queue) / alive)))
        return size, 1, 2

    def _init_msg(self) -> tuple[Any, ...]:
        cache_dir = options.cache_dir if self._cache is not None else None
        return ("udf", self.spec.udf, options.max_log_bytes, cache_dir)

    def _assign(self) -> list[tuple[_Worker, Any]]:
        """Under the lock: pick batches for workers with room; returns messages to send."""
        sends = []
        if self._cancelled:
            return sends
        self._workers[:] = [w for w in self._workers if not w.dead]
        self._fill_workers()
        size, threads, window = self._batch_plan()
        for w in self._workers:
            while self._queue and len(w.batches) < window:
                positions = [self._queue.popleft()]
                if positions[0] not in self._alone:
                    while (
                        self._queue and len(positions) < size and self._queue[0] not in self._alone
                    ):
                        positions.append(self._queue.popleft())
                for pos in positions:  # pending (queued on the worker) until it runs them
                    state = self._states[pos]
                    state.started, state.finished = None, None
                    state.attempt += 1
                if not w.batches:
                    w.progress_at = w.batch_started = time.time()
                w.batches.append((positions, threads))
                work = [(p, self.spec.encoded[p], self._keys[p]) for p in positions]
                sends.append((w, ("run", work, threads)))
            self._mark_running(w)
        return sends

    def _mark_running(self, w: _Worker) -> None:
        for pos in w.running():
            if self._states[pos].status == PENDING:
                self._set(self._states[pos], RUNNING)

    def _dispatch_loop(self) -> None:
        """Run :meth:`_dispatch` and, should it ever crash, fail the unfinished entries with the
        reason instead of leaving waiters hanging."""
        try:
            self._dispatch()
        except BaseException as exc:  # noqa: BLE001 - reported on every unfinished entry
            self._fail_everything(exc)
            raise

    def _dispatch(self) -> None:
        """Hand out batches and collect outcomes until nothing is queued or in flight."""
        while True:
            with self._lock:
                sends = self._assign()
                busy = any(w.batches for w in self._workers)
                if not busy and not (self._queue and not self._cancelled):
                    idle = list(self._workers)
                    self._workers.clear()
                    self._dispatching = False
                    break
            for w, msg in sends:
                if not w.send(msg):
                    with self._lock:
                        self._lost(w)
            if sends:
                self._notifier.pulse()
            with self._lock:  # after the sends: a worker lost while sending is closed by now
                conns = {w.rx: w for w in self._workers if not w.dead}
            ready = wait([*conns, self._wake_r], timeout=self._next_deadline())
            changed = False
            for conn in ready:
                if conn == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                changed |= self._drain(conns[conn])
            changed |= self._check_dead_and_slow(list(conns.values()))
            if changed:
                self._notifier.pulse()
        for w in idle:
            w.stop()
        self._notifier.pulse()

    def _fail_everything(self, exc: BaseException) -> None:
        with self._lock:
            self._dispatching = False
            _kill_all(self._workers)
            self._workers.clear()
            self._queue.clear()
            now = time.time()
            err = UdfWorkerLostError(
                f"the local engine's dispatcher failed: {type(exc).__name__}: {exc}",
                child_exception_class=type(exc).__name__,
            )
            for pos, state in enumerate(self._states):
                if state.status in (PENDING, RUNNING):
                    self._record(
                        pos,
                        {
                            "ok": False,
                            "value": None,
                            "error": err.to_dict(),
                            "logs": "",
                            "started": now,
                            "finished": now,
                        },
                        ERROR,
                    )
        self._notifier.pulse()

    def _next_deadline(self) -> float:
        return min(1.0, max(0.01, options.task_time_limit / 4))

    def _drain(self, w: _Worker) -> bool:
        changed = False
        if w.dead:
            return False
        try:
            while w.rx.poll():
                kind, done = w.rx.recv()
                if kind == "ready":  # its imports are done: its entries' clocks start now
                    with self._lock:
                        w.started()
                    continue
                with self._lock:
                    for pos, outcome in done:
                        w.finished(pos)
                        if not outcome.get("cancelled"):  # skipped: already marked cancelled
                            self._complete(pos, outcome)
                    self._mark_running(w)
                changed = True
        except (EOFError, OSError):
            with self._lock:
                self._lost(w)
            changed = True
        return changed

    def _check_dead_and_slow(self, workers: list[_Worker]) -> bool:
        changed = False
        now = time.time()
        for w in workers:
            if w.dead:
                continue
            if w.proc.poll() is not None:
                if w.rx.poll():
                    continue  # drain the last messages first
                with self._lock:
                    self._lost(w)
                changed = True
            elif w.overran(now, options.task_time_limit):
                with self._lock:
                    self._lost(w, timed_out=True)
                changed = True
        return changed

    # ------------------------------------------------------------------ state changes (locked)

    def _lost(self, w: _Worker, timed_out: bool = False) -> None:
        """The worker died or overran: fail what it was running, requeue the rest."""
        if w.dead:
            return
        batches = list(w.batches)
        w.batches.clear()
        w.stop(kill=True)
        code = w.proc.returncode
        now = time.time()
        for i, (positions, threads) in enumerate(batches):
            culprits = positions[:1]
            if i == 0 and timed_out and threads > 1:
                # A batch on threads began over the time limit ago: every entry it has not
                # reported ran that long (all of them started with the batch).
                culprits = list(positions)
            elif i == 0 and len(positions) > 1:
                # Several entries of the running batch were unreported: some may have finished
                # (outcomes are sent in groups) or been killed by a batch-mate. Blame none; each
                # reruns alone, so the culprit is found without failing innocent entries.
                culprits = []
                self._alone.update(positions)
            for pos in positions:
                if i == 0 and pos in culprits:
                    if timed_out:
                        err = UdfTimeoutError(
                            f"the entry ran longer than the time limit of "
                            f"{options.task_time_limit:g} s (options.task_time_limit)",
                            child_exception_class="TimeLimitExceeded",
                        )
                    else:
                        err = UdfWorkerLostError(
                            f"the worker process died (exit code {code}) while running this "
                            "entry; the UDF may have called os._exit, crashed or run out of memory",
                            child_exception_class="WorkerLostError",
                        )
                    outcome: Outcome = {
                        "ok": False,
                        "value": None,
                        "error": err.to_dict(),
                        "logs": "",
                        "started": now,
                        "finished": now,
                    }
                    self._complete(pos, outcome)
                else:  # never started: not this entry's fault
                    state = self._states[pos]
                    self._set(state, PENDING)
                    state.attempt -= 1
                    self._queue.appendleft(pos)

    def _complete(self, pos: int, outcome: Outcome) -> None:
        state = self._states[pos]
        if outcome["ok"]:
            status = SUCCESS
        elif (outcome.get("error") or {}).get("type") == "UdfTimeoutError":
            status = TIMEOUT
        else:
            status = ERROR
        duration = max(0.0, outcome["finished"] - outcome["started"])
        self._avg = duration if self._avg is None else 0.8 * self._avg + 0.2 * duration
        if status != SUCCESS and not self._cancelled and state.attempt < self._budget[pos]:
            self._set(state, PENDING)  # automatic retry, whether or not anyone waits
            self._outcomes[pos] = outcome
            self._queue.append(pos)
            return
        self._record(pos, outcome, status)

    def _record(self, pos: int, outcome: Outcome, status: str) -> None:
        state = self._states[pos]
        self._alone.discard(pos)
        self._set(state, status)
        state.started = outcome.get("started")
        state.finished = outcome.get("finished")
        self._outcomes[pos] = outcome
