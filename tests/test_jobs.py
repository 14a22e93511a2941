"""Job records (``fused_celery.state.job_record``), ``RunResponse`` and ``fused.api.job_*`` (API.md
§4).

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
import redis

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
from fused_celery.state import job_record
from fused_celery.state.job_record import TERMINAL, JobRecord, list_jobs
from fused_celery.state.keys import JOBS_INDEX, job_keys


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


# --------------------------------------------------------------------------- the record


def test_lifecycle(fused_options: object) -> None:
    record = new_job()
    snap = record.snapshot()
    assert (snap.status, snap.job_name, snap.kind) == ("Pending", "ingest-test", "ingest")
    assert (snap.instance_type, snap.output) == ("m5.large", "s3://bucket/out/table")
    assert (snap.total_tasks, snap.finished_tasks, snap.started_at, snap.finished_at) == (
        0,
        0,
        None,
        None,
    )
    assert snap.created_at == pytest.approx(time.time(), abs=5)
    assert record.config() == {"steps": [{"type": "partition"}]}

    assert record.start_stage("prepare", 3) is True
    snap = record.snapshot()
    assert (snap.status, snap.stage, snap.total_tasks) == ("Running", "prepare", 3)
    started = snap.started_at
    assert started is not None and snap.last_progress_at is not None
    for key in ("prepare:0", "prepare:1", "prepare:2"):
        assert record.task_done(key) is True
    record.start_stage("write", 2)
    record.task_done("write:0")
    record.task_failed("write:1", "Traceback ...\nValueError: bad chunk")
    snap = record.snapshot()
    assert (snap.stage, snap.total_tasks, snap.finished_tasks, snap.failed_tasks) == (
        "write",
        5,
        5,
        1,
    )
    assert snap.started_at == started  # set once
    assert snap.errors == {"write:1": "Traceback ...\nValueError: bad chunk"}

    assert record.finish("Done", result={"rows": 10}) is True
    snap = record.snapshot()
    assert snap.status == "Done" and snap.terminal and snap.result == {"rows": 10}
    assert snap.finished_at is not None and snap.finished_at >= started
    messages = [e["message"] for e in record.logs()]
    assert messages == [
        "stage prepare: 3 tasks",
        "stage write: 2 tasks",
        "task write:1 failed: ValueError: bad chunk",
        "job Done",
    ]
    # A terminal job takes no new stage.
    assert record.start_stage("late", 7) is False
    assert record.snapshot().total_tasks == 5


def test_stage_and_task_idempotent(fused_options: object) -> None:
    record = new_job()
    assert record.start_stage("prepare", 4) is True
    assert record.start_stage("prepare", 4) is False  # a redelivered callback
    assert record.snapshot().total_tasks == 4
    assert record.task_done("prepare:0") is True
    assert record.task_done("prepare:0") is False
    assert record.task_failed("prepare:1", "boom") is True
    assert record.task_failed("prepare:1", "boom") is False
    record.task_done("prepare:1")  # done after failing: still one finished task
    snap = record.snapshot()
    assert (snap.finished_tasks, snap.failed_tasks) == (2, 1)
    assert sum(e["message"].startswith("stage prepare") for e in record.logs()) == 1


def test_finish_first_wins_across_threads(fused_options: object) -> None:
    record = new_job()
    record.start_stage("prepare", 1)
    statuses = ["Done", "Failed", "Canceled"] * 4
    barrier = threading.Barrier(len(statuses))
    won: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def finish(status: str) -> None:
        mine = JobRecord(record.job_id)
        barrier.wait()
        ok = mine.finish(status, reason=f"by {status}")
        with lock:
            won.append((status, ok))

    threads = [threading.Thread(target=finish, args=(s,)) for s in statuses]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    winners = [status for status, ok in won if ok]
    assert len(won) == len(statuses) and len(winners) == 1
    snap = record.snapshot()
    assert snap.status == winners[0] and snap.reason == f"by {winners[0]}"
    assert sum(e["message"].startswith("job ") for e in record.logs()) == 1
    with pytest.raises(ValueError, match="status must be one of"):
        record.finish("Running")


def test_request_cancel(fused_options: object) -> None:
    pending = new_job()
    assert pending.request_cancel() is True
    snap = pending.snapshot()
    assert snap.status == "Canceled" and snap.cancel_requested and snap.finished_at is not None
    assert pending.request_cancel() is False  # already terminal

    running = new_job()
    assert running.cancel_requested is False
    running.start_stage("prepare", 2)
    assert running.request_cancel() is True
    snap = running.snapshot()
    assert snap.status == "Running" and snap.cancel_requested and running.cancel_requested
    assert running.finish("Canceled", reason="stopped at a cancel check") is True
    assert running.request_cancel() is False

    done = new_job()
    done.finish("Done")
    assert done.request_cancel() is False
    assert done.snapshot().cancel_requested is False


def test_logs_since_and_caps(fused_options: object, monkeypatch: pytest.MonkeyPatch) -> None:
    record = new_job()
    record.log("first")
    time.sleep(0.02)
    since = int(time.time() * 1000)
    record.log("second", level="warning")
    record.log("é 🌍 \udcff")  # any text, lone surrogates replaced
    assert [e["message"] for e in record.logs()] == ["first", "second", "é 🌍 ?"]
    assert [e["message"] for e in record.logs(since_ms=since)] == ["second", "é 🌍 ?"]
    assert record.logs(since_ms=since)[0]["level"] == "WARNING"
    lines = RunResponse.from_record(record).get_logs(since_ms=since)
    assert len(lines) == 2 and lines[0].endswith(" WARNING second")
    assert lines[0][:4].isdigit() and "T" in lines[0].split()[0]  # ISO timestamp first

    monkeypatch.setattr(job_record, "MAX_LOG_LINES", 5)
    monkeypatch.setattr(job_record, "MAX_ERRORS", 2)
    for i in range(8):
        record.log(f"line {i}")
    kept = record.logs()
    assert [e["message"] for e in kept] == [f"line {i}" for i in range(3, 8)]
    seq, after = record.logs_after(kept[-2]["seq"])
    assert seq == kept[-1]["seq"] and [e["message"] for e in after] == ["line 7"]
    record.log("x" * (job_record.MAX_LOG_MESSAGE_CHARS + 50))
    assert len(record.logs()[-1]["message"]) == job_record.MAX_LOG_MESSAGE_CHARS

    for i in range(4):
        record.task_failed(f"t{i}", "e" * (job_record.MAX_ERROR_CHARS + 10))
    snap = record.snapshot()
    assert snap.failed_tasks == 4 and len(snap.errors) == 2
    assert all(len(text) == job_record.MAX_ERROR_CHARS for text in snap.errors.values())


def test_fields_and_validation(fused_options: object) -> None:
    record = new_job()
    record.set_fields(stage_deadline=12.5, watchdog_runs=3, owner="lead")
    assert record.get_field("stage_deadline") == "12.5"
    assert record.get_field("watchdog_runs") == "3"
    assert record.get_field("missing") is None
    with pytest.raises(ValueError, match="managed by JobRecord"):
        record.set_fields(status="Done")
    before = record.snapshot().last_progress_at
    time.sleep(0.01)
    record.touch()
    assert record.snapshot().last_progress_at > (before or 0)
    with pytest.raises(ValueError, match="already exists"):
        new_job(job_id=record.job_id)
    with pytest.raises(ValueError, match="invalid job id"):
        new_job(job_id="a b")
    assert new_job(job_id="my-job.1").job_id == "my-job.1"


def test_open_unknown_job(fused_options: object) -> None:
    with pytest.raises(JobNotFoundError, match="nope123.*expired after result_expires"):
        JobRecord.open("nope123")
    with pytest.raises(JobNotFoundError, match="never existed"):
        api.job_get_status("nope123")
    with pytest.raises(JobNotFoundError):
        JobRecord.open("")


def test_expiry(fused_options: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "result_expires", 1)
    record = new_job()
    record.start_stage("prepare", 2)
    record.task_failed("prepare:0", "boom")
    client = redis.Redis.from_url(record.url, decode_responses=True)
    for key in job_keys(record.job_id).values():
        assert 0 < client.pttl(key) <= 1000, key  # every key exists and carries the TTL
    time.sleep(0.6)
    record.touch()  # a write renews the TTL of every key
    time.sleep(0.6)
    assert record.snapshot().status == "Running"
    time.sleep(1.1)
    with pytest.raises(JobNotFoundError, match="expired"):
        JobRecord.open(record.job_id)
    with pytest.raises(JobNotFoundError):
        record.snapshot()
    with pytest.raises(JobNotFoundError):
        record.task_done("prepare:1")  # a late worker write does not recreate the record
    assert not client.keys(f"fc:job:{record.job_id}:*")
    assert list_jobs(5) == []
    assert client.zcard(JOBS_INDEX) == 0  # expired ids are dropped from the index when met
    client.close()


def test_unreachable_redis(fused_options: object, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://:secret@127.0.0.1:{port}/0"
    with pytest.raises(BrokerUnavailableError, match=r"\*\*\*.*does not answer") as info:
        new_job(url=url)
    assert "secret" not in str(info.value)
    with pytest.raises(BrokerUnavailableError):
        JobRecord.open("abc", url=url)
    monkeypatch.setattr(options, "broker_url", url)
    monkeypatch.setattr(options, "result_backend", None)
    with pytest.raises(BrokerUnavailableError, match="FUSED_CELERY_BROKER_URL"):
        api.job_get_status("abc")
    with pytest.raises(BrokerUnavailableError):
        api.get_jobs()


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
    assert api.job_get_results(response.job_id) == {"rows": 3}

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
    assert {j.status for j in api.get_jobs(10)} <= set(job_record.JOB_STATUSES)
    assert {"Done", "Failed", "Canceled"} == TERMINAL
