"""Job records (``fused_celery.state.job_record``): status, progress, logs, expiry.

Every test talks to the real private ``redis-server`` of ``conftest.py`` (``fused_options``
points ``options`` and ``FUSED_CELERY_*`` at it); the pipeline's side is played by threads of
the test calling :class:`JobRecord` the way workers do.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import redis

from fused_celery.errors import (
    BrokerUnavailableError,
    JobNotFoundError,
)
from fused_celery.options import options
from fused_celery.state import job_record
from fused_celery.state.job_record import JobRecord, list_jobs
from fused_celery.state.keys import JOBS_INDEX, job_keys


def new_job(name: str = "ingest-test", **kwargs: Any) -> JobRecord:
    spec: dict[str, Any] = {
        "name": name,
        "kind": "ingest",
        "instance_type": "m5.large",
        "output": "s3://bucket/out/table",
        "config": {"steps": [{"type": "partition"}]},
    }
    return JobRecord.create(**(spec | kwargs))


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
        JobRecord("nope123").snapshot()
    with pytest.raises(JobNotFoundError):
        JobRecord.open("")


def test_expiry(fused_options: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "result_expires", 1)
    record = new_job()
    record.start_stage("prepare", 2)
    record.put_launch("prepare", {"data": {}, "members": [["0", 0], ["1", 1]]})
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
        JobRecord.open("abc")
    with pytest.raises(BrokerUnavailableError):
        list_jobs()
