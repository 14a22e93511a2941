"""``RunResponse``: follow, wait for, cancel and read the results of a job, from any process.

A ``RunResponse`` is a JSON-serializable view of a job's record
(:mod:`fused_celery.state.job_record`)
that refreshes itself from Redis: ``RunResponse.from_job_id(job_id)`` (or
``fused_celery.api.job_get_status(job_id)``) works in any process that reaches the result
backend. Statuses: ``Pending``, ``Running``, ``Done``, ``Failed``, ``Canceled``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, PrivateAttr

from fused_celery.errors import JobCanceledError, JobFailedError, JobTimeoutError
from fused_celery.options import options
from fused_celery.state.job_record import JobRecord, JobSnapshot
from fused_celery.state.statuses import JOB_CANCELED, JOB_DONE, JOB_FAILED, JOB_PENDING

_BAR_FORMAT = "{l_bar}{bar} | {n_fmt}/{total_fmt} {unit} | {elapsed}"

#: Seconds between polls while ``cancel(wait=True)`` waits.
CANCEL_POLL_SECONDS = 0.2

#: Task errors quoted in a :class:`~fused_celery.errors.JobFailedError` message.
ERRORS_IN_MESSAGE = 3


def format_log_line(entry: dict[str, Any]) -> str:
    """``"<ISO time, UTC> <LEVEL> <message>"`` of a log entry ``{ts_ms, level, message}``."""
    stamp = datetime.fromtimestamp(entry["ts_ms"] / 1000, tz=timezone.utc)
    return f"{stamp.isoformat(timespec='milliseconds')} {entry['level']} {entry['message']}"


class _Bar:
    """A tqdm bar of the current stage's progress, made on first use (only when
    ``options.show.enable_tqdm``): its units of work when the stage counts them (a map step's
    chunks: ``step2.map | 12/40 chunks``), else the job's finished/total tasks."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and options.show.enable_tqdm
        self.bar: Any = None
        self.shown: tuple[str | None, str] | None = None

    def update(self, snap: JobSnapshot) -> None:
        if not self.enabled:
            return
        progress = snap.progress.get(snap.stage or "")
        if progress is not None:
            total, done, unit = progress.total, progress.done, f"{progress.unit}s"
        else:
            total, done, unit = snap.total_tasks, snap.finished_tasks, "tasks"
        if self.bar is None:
            if snap.terminal:  # nothing to watch
                return
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, bar_format=_BAR_FORMAT, unit=unit)
        shown = (snap.stage, unit)
        if shown != self.shown:  # another stage: a bar of its own units
            if self.shown is not None:
                self.bar.reset(total=total)
            self.bar.unit = unit
            self.shown = shown
        if self.bar.total != total:
            self.bar.total = total
        self.bar.set_description_str(snap.stage or snap.status, refresh=False)
        self.bar.update(done - self.bar.n)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunResponse(BaseModel):
    """A job submitted with ``run_remote`` (or reopened by id).

    Fields (as of the latest refresh): ``job_id``, ``job_name``, ``status`` and ``job_status``
    (the same value: ``Pending|Running|Done|Failed|Canceled``), ``total_tasks``,
    ``finished_tasks``, ``instance_type``, ``output`` (the output table's URL).
    """

    job_id: str
    job_name: str | None = None
    status: str = JOB_PENDING
    job_status: str = JOB_PENDING
    total_tasks: int = 0
    finished_tasks: int = 0
    instance_type: str | None = None
    output: str | None = None

    _url: str | None = PrivateAttr(default=None)
    _record: JobRecord | None = PrivateAttr(default=None)
    _snapshot: JobSnapshot | None = PrivateAttr(default=None)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_snapshot(cls, snap: JobSnapshot, url: str | None = None) -> RunResponse:
        """A response showing ``snap``. url: Redis URL of the record (default
        ``options.resolved_result_backend`` when first needed)."""
        response = cls(job_id=snap.job_id)
        response._url = url
        response._apply(snap)
        return response

    @classmethod
    def from_record(cls, record: JobRecord) -> RunResponse:
        """A response for ``record``, refreshed from Redis."""
        response = cls.from_snapshot(record.snapshot(errors=False), record.url)
        response._record = record
        return response

    @classmethod
    def from_job_id(cls, job_id: str, url: str | None = None) -> RunResponse:
        """Reopen a job by id. url: default ``options.resolved_result_backend``. Raises
        :class:`~fused_celery.errors.JobNotFoundError` for unknown or expired ids."""
        return cls.from_record(JobRecord.open(job_id, url))

    def _get_record(self) -> JobRecord:
        if self._record is None:
            self._record = JobRecord.open(self.job_id, self._url)
        return self._record

    def _apply(self, snap: JobSnapshot) -> None:
        self._snapshot = snap
        self.job_name = snap.job_name
        self.status = self.job_status = snap.status
        self.total_tasks = snap.total_tasks
        self.finished_tasks = snap.finished_tasks
        self.instance_type = snap.instance_type
        self.output = snap.output

    def _refresh(self, errors: bool = False) -> JobSnapshot:
        snap = self._get_record().snapshot(errors=errors)
        self._apply(snap)
        return snap

    # ------------------------------------------------------------------ status

    def get_status(self) -> RunResponse:
        """Refresh the fields from Redis; returns ``self``."""
        self._refresh()
        return self

    def get_exec_time(self) -> timedelta:
        """Run time: ``finished_at - started_at`` once finished, ``now - started_at`` while
        running, zero before any stage started."""
        snap = self._refresh()
        if snap.started_at is None:
            return timedelta(0)
        end = snap.finished_at if snap.finished_at is not None else time.time()
        return timedelta(seconds=max(0.0, end - snap.started_at))

    def get_results(self) -> dict[str, Any] | None:
        """The job's result (a JSON dict set by its pipeline) once ``Done``; None while it is
        ``Pending`` or ``Running`` (call :meth:`wait_for_job` first). Raises
        :class:`~fused_celery.errors.JobFailedError` (with the reason and the first task errors)
        for a ``Failed`` job, :class:`~fused_celery.errors.JobCanceledError` for a ``Canceled``
        one. A dict result gets ``"cost"`` (:meth:`cost`)."""
        snap = self._refresh(errors=True)
        if snap.status == JOB_FAILED:
            raise self._failed_error(snap)
        if snap.status == JOB_CANCELED:
            raise JobCanceledError(
                f"job {self.job_id} ({self.job_name or 'unnamed'}) was canceled"
                + (f": {snap.reason}" if snap.reason else "")
                + "; run it again to produce its output"
            )
        if snap.status != JOB_DONE:
            return None
        result = snap.result
        if isinstance(result, dict):  # a step's list of results stays as it is (see cost())
            result = {**result, "cost": self.cost()}
        return result

    def cost(self) -> dict[str, Any]:
        """What the job's tasks cost so far (each task's run time / its worker's slots, summed by
        instance type, times ``options.autoscale_instance_prices``; see
        :func:`fused_celery.autoscale.cost.cost_report`)."""
        from fused_celery.autoscale.cost import cost_report

        return cost_report(self._get_record().cost_seconds(), options.autoscale_instance_prices)

    def _failed_error(self, snap: JobSnapshot) -> JobFailedError:
        quoted = [
            f"{key}: {text.strip().splitlines()[-1] if text.strip() else text}"[:500]
            for key, text in list(snap.errors.items())[:ERRORS_IN_MESSAGE]
        ]
        message = (
            f"job {self.job_id} ({self.job_name or 'unnamed'}) failed: "
            f"{snap.reason or 'no reason recorded'}"
        )
        if snap.failed_tasks:
            message += f"; {snap.failed_tasks} task(s) failed"
        if quoted:
            message += ", first errors:\n  " + "\n  ".join(quoted)
        error = JobFailedError(message)
        error.reason = snap.reason  # type: ignore[attr-defined]
        error.errors = dict(snap.errors)  # type: ignore[attr-defined]
        return error

    # ------------------------------------------------------------------ logs

    def get_logs(self, since_ms: int | None = None) -> list[str]:
        """The job's log lines, oldest first, each ``"<ISO time> <LEVEL> <message>"``.
        since_ms: only lines logged at or after this epoch time in ms (default None: all)."""
        return [format_log_line(e) for e in self._get_record().logs(since_ms)]

    def print_logs(self, since_ms: int | None = None) -> None:
        """Print :meth:`get_logs` (since_ms: as there)."""
        for line in self.get_logs(since_ms):
            print(line)

    def tail_logs(self, refresh_seconds: float = 1, timeout: float | None = None) -> None:
        """Print the job's log lines, then new ones as they come, with a progress bar of
        finished/total tasks (when ``options.show.enable_tqdm``), until the job is finished.

        refresh_seconds: seconds between polls (default 1). timeout: seconds (default None: no
        limit); raises :class:`~fused_celery.errors.JobTimeoutError` when reached.
        """
        _check_interval(refresh_seconds, "refresh_seconds")
        record = self._get_record()
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Bar(enabled=True)
        seq = 0
        try:
            while True:
                snap, seq, entries = record.poll(seq)
                self._apply(snap)
                for entry in entries:
                    bar.write(format_log_line(entry))
                bar.update(snap)
                if snap.terminal:
                    return
                _sleep_or_timeout(self, deadline, refresh_seconds, timeout)
        finally:
            bar.close()

    # ------------------------------------------------------------------ waiting

    def wait_for_job(
        self, poll_interval_seconds: float = 1, timeout: float | None = None
    ) -> RunResponse:
        """Block until the job is ``Done``, ``Failed`` or ``Canceled`` and return ``self``
        (refreshed; a failed job does not raise here, see :meth:`get_results`). Shows a tqdm bar
        of finished/total tasks described by the current stage when ``options.show.enable_tqdm``.

        poll_interval_seconds: seconds between polls, one Redis round trip each (default 1); the
            wait ends as soon as the job does (its record announces it), not at the next poll.
        timeout: seconds (default None: no limit); raises
        :class:`~fused_celery.errors.JobTimeoutError` when reached (the job goes on).
        """
        self._wait(poll_interval_seconds, timeout, bar=True)
        return self

    def _wait(self, poll: float, timeout: float | None, *, bar: bool) -> JobSnapshot:
        _check_interval(poll, "poll_interval_seconds")
        record = self._get_record()
        deadline = None if timeout is None else time.monotonic() + timeout
        progress = _Bar(enabled=bar)
        try:
            with record.terminal_wait() as wait:  # woken at once when the job ends
                while True:
                    snap = record.snapshot(errors=False)
                    self._apply(snap)
                    progress.update(snap)
                    if snap.terminal:
                        return snap
                    _sleep_or_timeout(self, deadline, poll, timeout, wait)
        finally:
            progress.close()

    def cancel(self, wait: bool = True, timeout: float = 60.0) -> RunResponse:
        """Ask the job to stop (a ``Pending`` job is ``Canceled`` at once; a running one stops
        at its pipeline's next check). wait: wait until it is finished (default True), at most
        ``timeout`` seconds (default 60; then return without raising). Returns ``self``,
        refreshed."""
        self._get_record().request_cancel()
        if wait:
            try:
                self._wait(CANCEL_POLL_SECONDS, timeout, bar=False)
            except JobTimeoutError:
                pass
        return self.get_status()

    def resume(self, **overrides: Any) -> RunResponse:
        """Run this ``Failed`` or ``Canceled`` job again with ``resume=True``: only the work
        its run did not stage is redone (:func:`fused_celery.jobs.resume.resume_job`); returns
        the new job's RunResponse. overrides: other ``run_remote`` arguments."""
        from fused_celery.jobs.resume import resume_job

        return resume_job(self.job_id, **overrides)

    # ------------------------------------------------------------------ display

    def __repr__(self) -> str:
        name = f" name={self.job_name!r}" if self.job_name else ""
        return (
            f"<RunResponse job_id={self.job_id}{name} status={self.status} "
            f"{self.finished_tasks}/{self.total_tasks} tasks>"
        )

    __str__ = __repr__


def _check_interval(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


def _sleep_or_timeout(
    response: RunResponse,
    deadline: float | None,
    interval: float,
    timeout: float | None,
    wait: Callable[[float], None] = time.sleep,
) -> None:
    """Wait ``interval`` with ``wait`` (default ``time.sleep``; cut at ``deadline``); raise
    JobTimeoutError once ``deadline`` has passed."""
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise JobTimeoutError(
                f"job {response.job_id} is still {response.status} "
                f"({response.finished_tasks}/{response.total_tasks} tasks) after {timeout} s; "
                "it goes on running: wait again, or cancel() it"
            )
        interval = min(interval, left)
    wait(interval)
