"""``JobPool``: watch, cancel, retry and collect the entries of a ``udf.map``.

The pool talks to its engine only through :class:`~fused_celery.engines.base.Engine`; it works the
same on the local process pool and on the Celery cluster. Statuses: ``pending``, ``running``,
``success``, ``error``, ``timeout``, ``cancelled``.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from fused_celery import codec, gc_pause
from fused_celery.collect import arg_names, build_frame, constant_args
from fused_celery.engines.base import (
    CANCELLED,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    STATUSES,
    SUCCESS,
    Engine,
    EntryState,
)
from fused_celery.errors import CancelledError, UdfRuntimeError, error_from_dict
from fused_celery.options import options

_BAR_FORMAT = "{l_bar}{bar} | {n_fmt}/{total_fmt} | {elapsed}"


class JobFuture:
    """One entry of a pool (``pool[i]``): its arguments, status, result, logs and time."""

    def __init__(self, pool: JobPool, position: int) -> None:
        self.pool = pool
        self.position = position

    @property
    def args(self) -> dict[str, Any]:
        """The entry's keyword arguments."""
        return self.pool._spec.args[self.position]

    @property
    def status(self) -> str:
        """The entry's current status."""
        return self.pool._engine.states()[self.position].status

    def done(self) -> bool:
        """True once the entry is finished (success, error, timeout or cancelled)."""
        return self.status in FINISHED

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the entry and return its result (raises its error)."""
        self.pool._wait_positions([self.position], timeout)
        value = self.pool._value(self.position)
        if isinstance(value, BaseException):
            raise value
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the entry and return its error, or None."""
        self.pool._wait_positions([self.position], timeout)
        value = self.pool._value(self.position)
        return value if isinstance(value, BaseException) else None

    def logs(self) -> str | None:
        """Captured stdout/stderr of the entry's latest finished attempt."""
        return self.pool.logs()[self.position]

    def __repr__(self) -> str:
        return f"<JobFuture #{self.position} {self.status} {self.args}>"


class JobPool:
    """The entries of one ``udf.map`` call (see the module docstring for statuses)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._spec = engine.spec
        self._decoded: dict[int, tuple[int, float | None, Any]] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def attach(cls, pool_id: str) -> JobPool:
        """Reattach to a pool on the cluster by id, from any process that reaches its Redis.

        Raises :class:`~fused_celery.errors.PoolNotFoundError` for unknown or expired ids.
        """
        from fused_celery.engines.celery.client import CeleryEngine

        return cls(CeleryEngine.attach(pool_id))

    def _submit(self, quiet: bool = False) -> None:
        self._engine.submit()
        if not quiet and self._engine.name != "local":
            print(f"Submitted {self.n_jobs} jobs as pool {self.id} (JobPool.attach({self.id!r}))")

    # ------------------------------------------------------------------ basics

    @property
    def id(self) -> str:
        """The pool's id (``JobPool.attach(id)`` reattaches to a remote pool)."""
        return self._spec.pool_id

    @property
    def n_jobs(self) -> int:
        """The number of entries."""
        return self._spec.n

    def __len__(self) -> int:
        return self._spec.n

    def __getitem__(self, index: int) -> JobFuture:
        if not -self.n_jobs <= index < self.n_jobs:
            raise IndexError(f"pool has {self.n_jobs} entries; index {index} is out of range")
        return JobFuture(self, index % self.n_jobs)

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.n_jobs):
            yield self[i].result()

    def _states(self) -> list[EntryState]:
        return self._engine.states()

    def _finished_count(self) -> int:
        counts = self._engine.counts()
        return sum(counts[s] for s in FINISHED)

    def _statuses(self) -> list[str]:
        return [s.status for s in self._states()]

    # ------------------------------------------------------------------ waiting

    def _wait_positions(self, positions: list[int] | None, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if positions is None:
                if self._finished_count() == self.n_jobs:
                    return
            else:
                statuses = self._statuses()
                if all(statuses[p] in FINISHED for p in positions):
                    return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"pool {self.id} is not finished after {timeout} s")
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            self._engine.wait_for_change(wait)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every entry is finished, with a tqdm bar when
        ``options.show.enable_tqdm`` (default True). timeout: seconds (default: no limit)."""
        if not options.show.enable_tqdm or self._finished_count() == self.n_jobs:
            self._wait_positions(None, timeout)
            return
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=self.n_jobs, bar_format=_BAR_FORMAT) as bar:
            while True:
                done = self._finished_count()
                bar.update(done - bar.n)
                if done == self.n_jobs:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"pool {self.id} is not finished after {timeout} s")
                self._engine.wait_for_change(0.25)

    def done(self) -> bool:
        """True if every entry is finished, whatever its status."""
        return all(s in FINISHED for s in self._statuses())

    def all_succeeded(self) -> bool:
        """True if every entry finished with success."""
        return all(s == SUCCESS for s in self._statuses())

    def any_failed(self) -> bool:
        """True if any entry finished with an error or timeout."""
        return any(s in FAILED for s in self._statuses())

    def any_succeeded(self) -> bool:
        """True if any entry finished with success."""
        return any(s == SUCCESS for s in self._statuses())

    def status(self) -> pd.Series:
        """Counts of entries by status (only statuses that occur), as a Series."""
        counts = pd.Series(self._statuses(), dtype=object).value_counts()
        order = [s for s in STATUSES if s in counts.index]
        series = counts.reindex(order).astype(int)
        series.index.name = "status"
        series.name = "count"
        return series

    # ------------------------------------------------------------------ results

    def _value(self, pos: int, state: EntryState | None = None) -> Any:
        """The decoded result or error of a finished entry (cached per attempt)."""
        state = state or self._states()[pos]
        if state.status == CANCELLED:
            return CancelledError(f"entry {pos} was cancelled before it ran")
        cached = self._decoded.get(pos)
        if cached is not None and cached[:2] == (state.attempt, state.finished):
            return cached[2]
        outcome = self._engine.outcomes([pos]).get(pos)
        if outcome is None:
            return None
        value = (
            codec.decode(outcome["value"]) if outcome["ok"] else error_from_dict(outcome["error"])
        )
        self._decoded[pos] = (state.attempt, state.finished, value)
        return value

    def _values(self, states: list[EntryState], positions: list[int]) -> dict[int, Any]:
        need = [
            p
            for p in positions
            if states[p].status != CANCELLED
            and (self._decoded.get(p) or (None, None))[:2]
            != (states[p].attempt, states[p].finished)
        ]
        if need:
            fetched = self._engine.outcomes(need)
            for p, outcome in fetched.items():
                value = (
                    codec.decode(outcome["value"])
                    if outcome["ok"]
                    else error_from_dict(outcome["error"])
                )
                self._decoded[p] = (states[p].attempt, states[p].finished, value)
        return {p: self._value(p, states[p]) for p in positions}

    def _finished_values(self) -> tuple[list[EntryState], dict[int, Any]]:
        with gc_pause.paused():  # O(n) acyclic objects: see gc_pause
            states = self._states()
            positions = [i for i, s in enumerate(states) if s.status in FINISHED]
            return states, self._values(states, positions)

    def results(self, return_exceptions: bool = False) -> list[Any]:
        """Wait, then every result in argument order.

        return_exceptions: put errors in the list instead of raising the first (default False).
        """
        self.wait()
        return list(self.results_now(return_exceptions=return_exceptions).values())

    def results_now(self, return_exceptions: bool = False) -> dict[int, Any]:
        """Results of the entries finished so far, by position.

        return_exceptions: include errors instead of raising the first one (default False).
        """
        _, values = self._finished_values()
        if not return_exceptions:
            for value in values.values():
                if isinstance(value, BaseException):
                    raise value
        return values

    def success(self) -> dict[int, Any]:
        """Results of the entries that finished with success, by position."""
        states, values = self._finished_values()
        return {p: v for p, v in values.items() if states[p].status == SUCCESS}

    def errors(self) -> dict[int, Exception]:
        """Errors of the entries finished with error or timeout, by position."""
        states, values = self._finished_values()
        return {p: v for p, v in values.items() if states[p].status in FAILED}

    def first_error(self) -> Exception | None:
        """The first error by argument order, or None."""
        errors = self.errors()
        return errors[min(errors)] if errors else None

    def _by_status(self, status: str) -> dict[int, Any]:
        return {i: self._spec.args[i] for i, s in enumerate(self._statuses()) if s == status}

    def pending(self) -> dict[int, Any]:
        """Arguments of entries not started yet, by position."""
        return self._by_status(PENDING)

    def running(self) -> dict[int, Any]:
        """Arguments of entries running now, by position."""
        return self._by_status(RUNNING)

    def cancelled(self) -> dict[int, Any]:
        """Arguments of entries cancelled before they ran, by position."""
        return self._by_status(CANCELLED)

    # ------------------------------------------------------------------ logs and times

    def logs(self) -> list[str | None]:
        """Captured stdout/stderr per entry; None for entries not finished."""
        states = self._states()
        finished = [i for i, s in enumerate(states) if s.status in FINISHED - {CANCELLED}]
        outcomes = self._engine.outcomes(finished)
        return [outcomes[i].get("logs", "") if i in outcomes else None for i in range(self.n_jobs)]

    def first_log(self) -> str | None:
        """The logs of the first finished entry by argument order, or None."""
        return next((log for log in self.logs() if log is not None), None)

    def cost(self) -> dict[str, Any]:
        """What the pool's runs cost so far: each entry's run time divided by its worker's slots,
        summed by instance type, times ``options.autoscale_instance_prices`` (USD per hour).
        Returns ``{"total_usd", "currency", "by_instance_type": {type: {"instance_seconds",
        "usd"}}, "unpriced": [...]}`` (see :mod:`fused_celery.autoscale.cost`; the local engine's
        runs are on instance type ``unknown``, unpriced)."""
        from fused_celery.autoscale.cost import cost_report, instance_seconds

        rows = self._engine.cost_rows()
        return cost_report(instance_seconds(rows), options.autoscale_instance_prices)

    def times(self) -> list[timedelta | None]:
        """Run time (not queue time) of each entry's latest attempt; None if not finished."""
        return [
            timedelta(seconds=s.finished - s.started)
            if s.status in FINISHED and s.started is not None and s.finished is not None
            else None
            for s in self._states()
        ]

    def total_time(self, since_retry: bool = False) -> timedelta:
        """Wall time from submission (since_retry: from the last ``retry()``) to the last
        finished entry; while entries run, up to the latest one finished so far."""
        start = self._spec.created_at
        if since_retry and self._engine.retried_at is not None:
            start = self._engine.retried_at
        ends = [s.finished for s in self._states() if s.finished is not None]
        end = max(ends) if ends else start
        return timedelta(seconds=max(0.0, end - start))

    def _arg_keys(self) -> list[str]:
        """The argument names given per entry (``arg_list``), in order of first appearance:
        the constant keyword arguments of ``udf.map(..., **kwargs)`` are left out, as in the
        reference SDK's ``arg_df``, ``logs_df`` and ``collect`` index."""
        constants = set(constant_args(self._spec.udf))
        return [k for k in arg_names(self._spec.args) if k not in constants]

    def arg_df(self) -> pd.DataFrame:
        """The arguments given per entry as a DataFrame, one row per entry (index: position;
        constant keyword arguments of ``udf.map`` are not columns, as in the reference SDK)."""
        keys = self._arg_keys()
        rows = [{k: a[k] for k in keys if k in a} for a in self._spec.args]
        frame = pd.DataFrame(rows, columns=keys)
        frame.index.name = "arg_pos"
        return frame

    def logs_df(
        self,
        status_column: str | None = "status",
        result_column: str | None = "result",
        time_column: str | None = "time",
        logs_column: str | None = "logs",
        exception_column: str | None = None,
        include_exceptions: bool = True,
    ) -> pd.DataFrame:
        """The :meth:`arg_df` columns, then status, time, result and logs of every entry as
        they are now (the reference SDK's column order).

        Each ``*_column`` names its column (None omits it). The time column holds run seconds
        as floats (NaN while not finished), as in the reference SDK. include_exceptions: show
        errors in the result column (default True). exception_column: also add a column of
        errors (default None: none).
        """
        states, values = self._finished_values()
        frame = self.arg_df()
        if status_column:
            frame[status_column] = [s.status for s in states]
        if time_column:
            frame[time_column] = pd.Series(
                [None if t is None else t.total_seconds() for t in self.times()],
                index=frame.index,
                dtype=float,
            )
        if result_column:
            frame[result_column] = pd.Series(
                [
                    None
                    if (v := values.get(i)) is None
                    or (isinstance(v, BaseException) and not include_exceptions)
                    else v
                    for i in range(self.n_jobs)
                ],
                index=frame.index,
                dtype=object,
            )
        if logs_column:
            frame[logs_column] = self.logs()
        if exception_column:
            frame[exception_column] = pd.Series(
                [
                    v if isinstance(v, BaseException) else None
                    for v in (values.get(i) for i in range(self.n_jobs))
                ],
                index=frame.index,
                dtype=object,
            )
        return frame

    # ------------------------------------------------------------------ collect

    def collect(
        self, ignore_exceptions: bool = False, flatten: bool = True, drop_index: bool = False
    ) -> pd.DataFrame:
        """Wait and collect results into a DataFrame (see :mod:`fused_celery.collect`).

        ignore_exceptions: drop failed entries instead of raising the first error (default
        False). flatten: concatenate DataFrame results (default True). drop_index: index by
        ``arg_pos`` instead of the arguments (default False). Shuts a local pool down.
        """
        self.wait()
        states, values = self._finished_values()
        positions = []
        for pos in range(self.n_jobs):
            value = values.get(pos)
            if isinstance(value, BaseException):
                if not ignore_exceptions:
                    self.shutdown(wait=False)
                    raise value
                continue
            positions.append(pos)
        frame = build_frame(
            positions,
            self._spec.args,
            [values[p] for p in positions],
            flatten=flatten,
            drop_index=drop_index,
            keys=self._arg_keys(),
        )
        self.shutdown(wait=True)
        return frame

    def df(
        self, ignore_exceptions: bool = False, flatten: bool = True, drop_index: bool = False
    ) -> pd.DataFrame:
        """Alias of :meth:`collect`."""
        return self.collect(
            ignore_exceptions=ignore_exceptions, flatten=flatten, drop_index=drop_index
        )

    # ------------------------------------------------------------------ control

    def retry(self) -> None:
        """Rerun the entries in ``error`` or ``timeout``, as new attempts in this pool."""
        failed = [i for i, s in enumerate(self._statuses()) if s in FAILED]
        for pos in failed:
            self._decoded.pop(pos, None)
        if failed:
            self._engine.retry(failed)

    def cancel(self, wait: bool = False) -> None:
        """Cancel the entries that are not running yet; prints how many were cancelled and how
        many were already running. wait: then wait for the running ones (default False)."""
        cancelled, running = self._engine.cancel()
        print(
            f"Cancelled {cancelled} pending job(s); {running} already running"
            + (", waiting for them to finish" if wait and running else "")
        )
        if wait:
            self._wait_positions(None, None)

    def delete(self) -> None:
        """Cancel the entries that are not running yet and delete the pool: on the cluster its
        Redis record (attaching then fails) and its large results and arguments in storage. An
        entry still running finishes but is not recorded."""
        self._engine.delete()
        self._decoded.clear()

    def shutdown(self, wait: bool = True) -> None:
        """Release the engine's workers (local engine; a no-op on the cluster).

        wait: block until running entries finish (default True).
        """
        self._engine.shutdown(wait=wait)

    def tail(self, stop_on_exception: bool = False, timeout: float | None = None) -> None:
        """Print a line per finished entry until all are done, then ``End of tail`` and the
        status counts. stop_on_exception: stop at the first error (default False).
        timeout: seconds (default: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: dict[int, tuple[int, float | None]] = {}
        while True:
            states = self._states()
            new = [
                i
                for i, s in enumerate(states)
                if s.status in FINISHED and seen.get(i) != (s.attempt, s.finished)
            ]
            new.sort(key=lambda i: (states[i].finished or 0, i))
            values = self._values(states, new)
            for i in new:
                seen[i] = (states[i].attempt, states[i].finished)
                print(self._tail_line(i, states[i], values.get(i)), flush=True)
                if stop_on_exception and states[i].status in FAILED:
                    print("End of tail (stopped on exception)")
                    print(self.status().to_string())
                    return
            if all(s.status in FINISHED for s in states):
                break
            if deadline is not None and time.monotonic() >= deadline:
                print("End of tail (timeout)")
                print(self.status().to_string())
                return
            self._engine.wait_for_change(0.5)
        print("End of tail")
        print(self.status().to_string())

    def _tail_line(self, pos: int, state: EntryState, value: Any) -> str:
        stamp = datetime.fromtimestamp(state.finished or time.time()).strftime("%H:%M:%S")
        if state.status == SUCCESS:
            took = (state.finished or 0) - (state.started or 0)
            summary = f"{took:.2f}s"
        elif state.status == CANCELLED:
            summary = "cancelled before it ran"
        elif isinstance(value, UdfRuntimeError):
            summary = f"{value.child_exception_class}: {value.message}"
        else:
            summary = str(value)
        return f"[{stamp}] Run #{pos} {state.status} ({summary}) {self._spec.args[pos]}"

    # ------------------------------------------------------------------ display

    def _counts_text(self) -> str:
        counts = self.status()
        return ", ".join(f"{n} {s}" for s, n in counts.items())

    def __repr__(self) -> str:
        return f"<JobPool id={self.id} with {self.n_jobs} jobs [{self._counts_text()}]>"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(str(s))}</td><td>{n}</td></tr>" for s, n in self.status().items()
        )
        return (
            f"<div><b>JobPool</b> <code>{html.escape(self.id)}</code> "
            f"({self.n_jobs} jobs, engine {html.escape(self._engine.name)})"
            f"<table><tr><th>status</th><th>count</th></tr>{rows}</table></div>"
        )

    # ------------------------------------------------------------------ async

    async def wait_async(self, timeout: float | None = None) -> None:
        """:meth:`wait` without blocking the event loop."""
        await asyncio.to_thread(self.wait, timeout)

    async def results_async(self, return_exceptions: bool = False) -> list[Any]:
        """:meth:`results` without blocking the event loop."""
        return await asyncio.to_thread(self.results, return_exceptions)

    async def results_now_async(self, return_exceptions: bool = False) -> dict[int, Any]:
        """:meth:`results_now` without blocking the event loop."""
        return await asyncio.to_thread(self.results_now, return_exceptions)

    async def errors_async(self) -> dict[int, Exception]:
        """:meth:`errors` without blocking the event loop."""
        return await asyncio.to_thread(self.errors)

    async def first_error_async(self) -> Exception | None:
        """:meth:`first_error` without blocking the event loop."""
        return await asyncio.to_thread(self.first_error)

    async def logs_async(self) -> list[str | None]:
        """:meth:`logs` without blocking the event loop."""
        return await asyncio.to_thread(self.logs)

    async def first_log_async(self) -> str | None:
        """:meth:`first_log` without blocking the event loop."""
        return await asyncio.to_thread(self.first_log)

    async def logs_df_async(self, **kwargs: Any) -> pd.DataFrame:
        """:meth:`logs_df` without blocking the event loop."""
        return await asyncio.to_thread(lambda: self.logs_df(**kwargs))

    async def success_async(self) -> dict[int, Any]:
        """:meth:`success` without blocking the event loop."""
        return await asyncio.to_thread(self.success)

    async def tail_async(self, stop_on_exception: bool = False, timeout: float | None = None):
        """:meth:`tail` without blocking the event loop."""
        await asyncio.to_thread(self.tail, stop_on_exception, timeout)

    async def cancel_async(self, wait: bool = False) -> None:
        """:meth:`cancel` without blocking the event loop."""
        await asyncio.to_thread(self.cancel, wait)

    async def collect_async(
        self, ignore_exceptions: bool = False, flatten: bool = True, drop_index: bool = False
    ) -> pd.DataFrame:
        """:meth:`collect` without blocking the event loop."""
        return await asyncio.to_thread(self.collect, ignore_exceptions, flatten, drop_index)
