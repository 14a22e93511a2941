"""Module-level functions of the Fused API (``fused.api.*``).

The ``job_*`` functions take a job id (str) or a :class:`~fused_celery.jobs.response.RunResponse`
and work from any process that reaches the result backend (``options.resolved_result_backend``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fused_celery.jobs.response import RunResponse
from fused_celery.pool import JobPool
from fused_celery.state.job_record import list_jobs


def get_pool(pool_id: str) -> JobPool:
    """Reattach to a remote pool by id (same as ``JobPool.attach(pool_id)``)."""
    return JobPool.attach(pool_id)


def _job(job: str | RunResponse) -> RunResponse:
    if isinstance(job, RunResponse):
        return job
    if isinstance(job, str):
        return RunResponse.from_job_id(job)
    raise TypeError(
        f"job must be a job id (str) or a RunResponse, not {type(job).__name__}: pass "
        "run_remote()'s return value or its .job_id"
    )


def job_get_status(job: str | RunResponse) -> RunResponse:
    """The job's current status, as a refreshed :class:`RunResponse`.

    Raises :class:`~fused_celery.errors.JobNotFoundError` for unknown or expired job ids.
    """
    return _job(job).get_status()


def job_cancel(job: str | RunResponse, wait: bool = True, timeout: float = 60.0) -> RunResponse:
    """Cancel the job (see :meth:`RunResponse.cancel`; wait default True, timeout default 60 s)."""
    return _job(job).cancel(wait=wait, timeout=timeout)


def job_tail_logs(
    job: str | RunResponse, refresh_seconds: float = 1, timeout: float | None = None
) -> None:
    """Print the job's logs as they come until it finishes (see :meth:`RunResponse.tail_logs`;
    refresh_seconds default 1, timeout default None)."""
    _job(job).tail_logs(refresh_seconds=refresh_seconds, timeout=timeout)


def job_print_logs(job: str | RunResponse, since_ms: int | None = None) -> None:
    """Print the job's log lines (since_ms: epoch ms, default None for all)."""
    _job(job).print_logs(since_ms=since_ms)


def job_get_logs(job: str | RunResponse, since_ms: int | None = None) -> list[str]:
    """The job's log lines (since_ms: epoch ms, default None for all)."""
    return _job(job).get_logs(since_ms=since_ms)


def job_wait_for_job(
    job: str | RunResponse, poll_interval_seconds: float = 1, timeout: float | None = None
) -> RunResponse:
    """Wait until the job is finished (see :meth:`RunResponse.wait_for_job`;
    poll_interval_seconds default 1, timeout default None)."""
    return _job(job).wait_for_job(poll_interval_seconds=poll_interval_seconds, timeout=timeout)


def job_get_exec_time(job: str | RunResponse) -> timedelta:
    """The job's run time (see :meth:`RunResponse.get_exec_time`)."""
    return _job(job).get_exec_time()


def job_get_results(job: str | RunResponse) -> dict[str, Any] | None:
    """The job's result (see :meth:`RunResponse.get_results`)."""
    return _job(job).get_results()


def get_jobs(n: int = 5) -> list[RunResponse]:
    """The ``n`` most recently created jobs (default 5), newest first; expired ones are skipped."""
    return [RunResponse.from_snapshot(snap) for snap in list_jobs(n)]
