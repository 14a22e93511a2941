"""``RunResponse`` and ``fused.api.job_*`` (API.md §4) over job records.

Every test talks to the real private ``redis-server`` of ``conftest.py`` (``fused_options``
points ``options`` and ``FUSED_CELERY_*`` at it); the pipeline's side is played by threads of
the test calling :class:`JobRecord` the way workers do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import fused_celery as fused
from fused_celery import api
from fused_celery.errors import (
    BrokerUnavailableError,
    JobCanceledError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
)
from fused_celery.jobs.response import RunResponse
from fused_celery.options import options
from fused_celery.state.job_record import JobRecord
from fused_celery.state.statuses import JOB_STATUSES, JOB_TERMINAL


@pytest.fixture
def no_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options.show, "enable_tqdm", False)


def new_job(name: str = "ingest-test", **kwargs: Any) -> JobRecord:
    spec: dict[str, Any] = {
        "name": name,
        "kind": "ingest",
        "instance_type": "m5.large",
        "output": "s3://bucket/out/table",
        "config": {"steps": [{"type": "partition"}]},
    }
    return JobRecord.create(**(spec | kwargs))


def later(delay: float, action: Callable[[], Any]) -> threading.Thread:
    """Run ``action`` in a thread after ``delay`` seconds (join the thread at the end)."""

    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- RunResponse / api


def test_run_response_fields_and_json(fused_options: object) -> None:
    record = new_job()
    record.start_stage("prepare", 3)
    record.task_done("prepare:0")
    response = RunResponse.from_job_id(record.job_id)
    assert (response.job_id, response.job_name) == (record.job_id, "ingest-test")
    assert response.status == response.job_status == "Running"
    assert (response.total_tasks, response.finished_tasks) == (3, 1)
    assert (response.instance_type, response.output) == ("m5.large", "s3://bucket/out/table")
    assert repr(response) == (
        f"<RunResponse job_id={record.job_id} name='ingest-test' status=Running 1/3 tasks>"
    )
    assert fused.RunResponse is RunResponse
    # JSON round trip: the copy reopens the record by id.
    copy = RunResponse.model_validate_json(response.model_dump_json())
    record.task_done("prepare:1")
    assert copy.get_status() is copy and copy.finished_tasks == 2
    with pytest.raises(TypeError, match="job id \\(str\\) or a RunResponse"):
        api.job_get_status(42)  # type: ignore[arg-type]


def test_get_logs_since(fused_options: object) -> None:
    record = new_job()
    record.log("first")
    time.sleep(0.02)
    since = int(time.time() * 1000)
    record.log("second", level="warning")
    lines = RunResponse.from_record(record).get_logs(since_ms=since)
    assert len(lines) == 1 and lines[0].endswith(" WARNING second")
    assert lines[0][:4].isdigit() and "T" in lines[0].split()[0]  # ISO timestamp first


def test_api_on_unknown_job_and_without_redis(
    fused_options: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(JobNotFoundError, match="never existed"):
        api.job_get_status("nope123")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(options, "broker_url", f"redis://:secret@127.0.0.1:{port}/0")
    monkeypatch.setattr(options, "result_backend", None)
    with pytest.raises(BrokerUnavailableError, match="FUSED_CELERY_BROKER_URL") as info:
        api.job_get_status("abc")
    assert "secret" not in str(info.value)
    with pytest.raises(BrokerUnavailableError):
        api.get_jobs()


def test_wait_for_job_ends_when_the_job_does_not_at_the_next_poll(
    fused_options: object, no_tqdm: None
) -> None:
    record = new_job()
    record.start_stage("prepare", 1)
    thread = later(0.3, lambda: record.finish("Done", result={"rows": 1}))
    response = RunResponse.from_record(record)
    t0 = time.monotonic()
    response.wait_for_job(poll_interval_seconds=120, timeout=600)
    thread.join(5)
    assert response.status == "Done"
    assert time.monotonic() - t0 < 60  # woken by the record's event, not after 120 s
    cancelled = new_job()  # a Pending job cancelled from elsewhere ends the wait too
    thread = later(0.3, cancelled.request_cancel)
    response = RunResponse.from_record(cancelled)
    t0 = time.monotonic()
    response.wait_for_job(poll_interval_seconds=120, timeout=600)
    thread.join(5)
    assert response.status == "Canceled" and time.monotonic() - t0 < 60


def test_wait_for_job(
    fused_options: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(options.show, "enable_tqdm", True)
    record = new_job()
    record.start_stage("prepare", 2)

    def progress() -> None:
        record.task_done("prepare:0")
        time.sleep(0.1)
        record.task_done("prepare:1")
        record.finish("Done", result={"rows": 3})

    thread = later(0.2, progress)
    response = RunResponse.from_record(record)
    t0 = time.monotonic()
    assert response.wait_for_job(poll_interval_seconds=0.05, timeout=10) is response
    thread.join(5)
    assert time.monotonic() - t0 < 3
    assert response.status == "Done" and response.finished_tasks == 2
    assert "2/2 tasks" in capsys.readouterr().err  # the tqdm bar
    results = api.job_get_results(response.job_id)
    assert results.pop("cost")["total_usd"] == 0  # no task ran on a worker
    assert results == {"rows": 3}

    slow = new_job()
    slow.start_stage("prepare", 5)
    t0 = time.monotonic()
    with pytest.raises(JobTimeoutError, match="still Running"):
        api.job_wait_for_job(slow.job_id, poll_interval_seconds=0.05, timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 2
    with pytest.raises(ValueError, match="poll_interval_seconds"):
        api.job_wait_for_job(slow.job_id, poll_interval_seconds=0)


def test_wait_returns_failed_and_results_raise(fused_options: object, no_tqdm: None) -> None:
    record = new_job()
    record.start_stage("prepare", 2)
    record.task_failed("prepare:1", "Traceback (most recent call last):\nOSError: disk full")
    response = RunResponse.from_record(record)
    assert response.get_results() is None  # still running
    record.finish("Failed", reason="1 chunk failed in stage prepare")
    assert response.wait_for_job(poll_interval_seconds=0.05, timeout=5).status == "Failed"
    with pytest.raises(JobFailedError, match="1 chunk failed in stage prepare") as info:
        api.job_get_results(response)
    assert "prepare:1: OSError: disk full" in str(info.value)
    assert info.value.reason == "1 chunk failed in stage prepare"  # type: ignore[attr-defined]
    assert "prepare:1" in info.value.errors  # type: ignore[attr-defined]

    canceled = new_job()
    canceled.request_cancel()
    with pytest.raises(JobCanceledError, match="canceled before it started"):
        api.job_get_results(canceled.job_id)


def test_exec_time(fused_options: object) -> None:
    record = new_job()
    assert api.job_get_exec_time(record.job_id) == timedelta(0)
    record.start_stage("prepare", 1)
    time.sleep(0.05)
    running = api.job_get_exec_time(record.job_id)
    assert running >= timedelta(seconds=0.05)
    record.finish("Done")
    final = api.job_get_exec_time(record.job_id)
    time.sleep(0.05)
    assert api.job_get_exec_time(record.job_id) == final  # frozen once finished
    snap = record.snapshot()
    assert final.total_seconds() == pytest.approx(snap.finished_at - snap.started_at, abs=1e-5)


def test_tail_and_print_logs(
    fused_options: object, no_tqdm: None, capsys: pytest.CaptureFixture[str]
) -> None:
    record = new_job()
    record.start_stage("prepare", 2)

    def pipeline() -> None:
        record.log("read 10 rows")
        record.task_done("prepare:0")
        time.sleep(0.1)
        record.log("wrote chunk 0")
        record.task_done("prepare:1")
        record.finish("Done")

    thread = later(0.1, pipeline)
    api.job_tail_logs(record.job_id, refresh_seconds=0.05, timeout=10)
    thread.join(5)
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 2)[2] for line in out] == [
        "stage prepare: 2 tasks",
        "read 10 rows",
        "wrote chunk 0",
        "job Done",
    ]
    api.job_print_logs(record.job_id)
    assert capsys.readouterr().out.splitlines() == out
    assert api.job_get_logs(record.job_id) == out

    slow = new_job()
    with pytest.raises(JobTimeoutError):
        RunResponse.from_record(slow).tail_logs(refresh_seconds=0.05, timeout=0.2)


def test_cancel_running_job(fused_options: object) -> None:
    record = new_job()
    record.start_stage("prepare", 3)

    def pipeline() -> None:  # honours the flag at its next check, like the watchdog
        deadline = time.monotonic() + 10
        while not record.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.02)
        record.finish("Canceled", reason="canceled by the user")

    thread = later(0, pipeline)
    response = api.job_cancel(record.job_id, timeout=10)
    thread.join(5)
    assert response.status == "Canceled"
    # Nobody finishes this one: cancel returns at its timeout, still Running, without raising.
    stuck = new_job()
    stuck.start_stage("prepare", 1)
    t0 = time.monotonic()
    assert RunResponse.from_record(stuck).cancel(timeout=0.3).status == "Running"
    assert time.monotonic() - t0 < 2
    assert stuck.cancel_requested
    assert api.job_cancel(new_job().job_id, wait=False).status == "Canceled"  # was Pending


def test_other_process_reads_and_cancels(fused_options: object, redis_url: str) -> None:
    record = new_job()
    record.start_stage("prepare", 4)
    record.task_done("prepare:0")

    def pipeline() -> None:
        deadline = time.monotonic() + 60
        while not record.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.02)
        record.finish("Canceled", reason="canceled by the user")

    thread = later(0, pipeline)
    script = textwrap.dedent(f"""
        import json
        from fused_celery import api
        status = api.job_get_status({record.job_id!r})
        before = status.model_dump()
        after = api.job_cancel({record.job_id!r}, timeout=30)
        print(json.dumps({{"before": before, "after": after.model_dump(),
                           "logs": api.job_get_logs({record.job_id!r})}}))
    """)
    env = {
        **os.environ,
        "FUSED_CELERY_BROKER_URL": redis_url,
        "FUSED_CELERY_RESULT_BACKEND": redis_url,
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    thread.join(5)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["before"]["status"] == seen["before"]["job_status"] == "Running"
    assert (seen["before"]["total_tasks"], seen["before"]["finished_tasks"]) == (4, 1)
    assert seen["after"]["status"] == "Canceled"
    assert any("cancel requested" in line for line in seen["logs"])
    assert record.snapshot().status == "Canceled"


def test_get_jobs_newest_first(fused_options: object) -> None:
    assert api.get_jobs() == []
    made = []
    for i in range(4):
        made.append(new_job(name=f"job{i}"))
        time.sleep(0.005)
    made[1].finish("Done")
    jobs = api.get_jobs(3)
    assert [j.job_name for j in jobs] == ["job3", "job2", "job1"]
    assert all(isinstance(j, RunResponse) for j in jobs)
    assert jobs[2].status == "Done" and jobs[0].status == "Pending"
    assert [j.job_name for j in api.get_jobs()] == ["job3", "job2", "job1", "job0"]
    made[2].delete()  # gone (as if expired): skipped
    assert [j.job_name for j in api.get_jobs(3)] == ["job3", "job1", "job0"]
    assert {j.status for j in api.get_jobs(10)} <= set(JOB_STATUSES)
    assert {"Done", "Failed", "Canceled"} == JOB_TERMINAL
