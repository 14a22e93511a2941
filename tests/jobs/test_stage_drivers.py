"""The generic stage machinery (fused_celery.jobs.stages and its two drivers) on a tiny non-ingest
sequence (toy_stages.py): on real Celery workers (chained chords, the job record as guard), on the
local engine and in this process."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import toy_stages as toy

from fused_celery.errors import ColumnNotFoundError
from fused_celery.jobs import celery_driver
from fused_celery.jobs.local_driver import run_stages
from fused_celery.jobs.response import RunResponse
from fused_celery.jobs.stages import FailedItem, MemberOutcome
from fused_celery.options import DEFAULT_QUEUE
from fused_celery.state.job_record import JobRecord

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVERS = ["celery", "local", "in-process"]


@pytest.fixture
def toy_path(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """PYTHONPATH with this folder first, for every process that imports ``toy_stages``."""
    path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    return {"PYTHONPATH": path}


@pytest.fixture
def cluster(celery_workers, fused_options, toy_path) -> None:
    """One real worker (concurrency 2) that can import ``toy_stages``."""
    celery_workers(n=1, concurrency=2, env=toy_path)


def new_run(tmp_path, **fields) -> toy.ToyRun:
    return toy.ToyRun(job_id=uuid.uuid4().hex, folder=str(tmp_path), **fields)


def submit(run: toy.ToyRun) -> RunResponse:
    record = celery_driver.submit(run, queue=DEFAULT_QUEUE, name="toy", message="submitted")
    return RunResponse.from_record(record)


def finish(driver: str, run: toy.ToyRun, request: pytest.FixtureRequest) -> dict:
    """The job's result dict, run by ``driver`` (errors raised as the driver raises them)."""
    if driver == "celery":
        request.getfixturevalue("cluster")
        resp = submit(run)
        resp.wait_for_job(timeout=60)
        result = resp.get_results()
        assert set(result.pop("cost")) >= {"total_usd", "by_instance_type"}  # (the cluster's)
        return result
    request.getfixturevalue("toy_path")
    done = run_stages(run, engine="local" if driver == "local" else None)
    result, _ = toy.TOY.result(done)
    return {**result, "failed": [f.model_dump() for f in done.failed]}


@pytest.mark.parametrize("driver", DRIVERS)
def test_items_fan_out_and_collect_sees_results_in_order(driver, request, tmp_path):
    run = new_run(tmp_path, n=6)
    result = finish(driver, run, request)
    assert result == {"squares": [0, 1, 4, 9, 16, 25], "total": 55, "failed": []}
    assert toy.count(str(tmp_path), "member-square") == 6
    assert toy.count(str(tmp_path), "member-add") == 3
    assert toy.count(str(tmp_path), "collect-add") == 1
    assert toy.count(str(tmp_path), "discard") == 0
    if driver == "celery":
        snap = JobRecord.open(run.job_id).snapshot()
        assert snap.status == "Done" and snap.stage == "sum"
        assert snap.finished_tasks == snap.total_tasks == 6 + 3 + 1
        logs = [e["message"] for e in JobRecord.open(run.job_id).logs()]
        assert logs[0] == "submitted" and "done: total 55" in logs


@pytest.mark.parametrize("driver", DRIVERS)
def test_empty_fan_out_goes_straight_to_collect(driver, request, tmp_path):
    result = finish(driver, new_run(tmp_path, n=0), request)
    assert result == {"squares": [], "total": 0, "failed": []}


@pytest.mark.parametrize("driver", DRIVERS)
def test_failing_member_fails_the_job_with_its_reason(driver, request, tmp_path):
    run = new_run(tmp_path, n=4, fail=(2,))
    if driver == "celery":
        request.getfixturevalue("cluster")
        resp = submit(run)
        resp.wait_for_job(timeout=60)
        snap = JobRecord.open(run.job_id).snapshot()
        assert snap.status == "Failed"
        assert "square: 1 of 4 task(s) failed; square 2: no value 2" in snap.reason
    else:
        with pytest.raises(ColumnNotFoundError, match="no value 2"):
            finish(driver, run, request)
    assert toy.count(str(tmp_path), "discard") == 1
    assert toy.count(str(tmp_path), "member-add") == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_ignore_errors_lists_the_failures(driver, request, tmp_path):
    run = new_run(tmp_path, n=4, fail=(2,), ignore_errors=True)
    result = finish(driver, run, request)
    failed = FailedItem(stage="square", key="2", error="no value 2").model_dump()
    assert result == {"squares": [0, 1, 9], "total": 10, "failed": [failed]}
    assert toy.count(str(tmp_path), "discard") == 0
    # every member failing still fails the stage
    run = new_run(tmp_path / "all", n=2, fail=(0, 1), ignore_errors=True)
    os.mkdir(run.folder)
    if driver == "celery":
        resp = submit(run)
        resp.wait_for_job(timeout=60)
        assert JobRecord.open(run.job_id).snapshot().status == "Failed"
    else:
        with pytest.raises(ColumnNotFoundError, match="no value 0"):
            finish(driver, run, request)


def test_redelivered_callback_does_not_launch_a_stage_twice(cluster, tmp_path):
    run = new_run(tmp_path, n=4)
    record = JobRecord.create(
        job_id=run.job_id, name=None, kind=toy.KIND, instance_type=None, output=None, config={}
    )
    record.start_stage("square", 4)  # as the start task does
    results = [
        MemberOutcome(key=str(x), status="ok", value=x * x).model_dump(mode="json")
        for x in range(4)
    ]
    data = run.model_dump(mode="json")
    for _ in range(2):  # the callback delivered twice: run here as the worker would
        celery_driver.collect_stage(results, toy.TARGET, data, "square", DEFAULT_QUEUE)
    resp = RunResponse.from_record(record)
    resp.wait_for_job(timeout=60)
    assert resp.get_results()["total"] == 0 + 1 + 4 + 9
    snap = record.snapshot()
    assert snap.total_tasks == 4 + 2 + 1  # the add stage counted once
    assert toy.count(str(tmp_path), "collect-square") == 2  # the collect itself runs again
    assert toy.count(str(tmp_path), "member-add") == 2  # but its two members ran once
    starts = [e["message"] for e in record.logs() if e["message"].startswith("stage add")]
    assert starts == ["stage add: 2 tasks"]


def test_cancel_ends_canceled_and_discards(cluster, tmp_path):
    run = new_run(tmp_path, n=4, gate=True)
    resp = submit(run)
    deadline = time.monotonic() + 60
    while toy.count(str(tmp_path), "member-square") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # two members wait at the gate
    assert resp.get_status().status == "Running"
    JobRecord.open(run.job_id).request_cancel()
    (tmp_path / "open").touch()
    resp.wait_for_job(timeout=60)
    snap = JobRecord.open(run.job_id).snapshot()
    assert snap.status == "Canceled", snap.reason
    assert snap.reason == "cancelled during square"
    assert toy.count(str(tmp_path), "discard") == 1
    assert toy.count(str(tmp_path), "member-square") == 2  # the queued ones were skipped
    assert toy.count(str(tmp_path), "member-add") == 0


def test_job_cost_sums_its_tasks_run_time(cluster, tmp_path):
    """Each member's run time / its worker's slots (concurrency 2), by instance type: the
    default queue's worker has none (``unknown``, unpriced)."""
    run = new_run(tmp_path, n=4)
    resp = submit(run)
    resp.wait_for_job(timeout=60)
    cost = resp.get_results()["cost"]
    assert cost["unpriced"] == ["unknown"] and cost["total_usd"] == 0
    assert cost["by_instance_type"]["unknown"]["instance_seconds"] > 0


def test_job_to_an_unserved_queue_fails_fast(fused_options, toy_path, tmp_path):
    """An instance type's job in a region no worker or autoscaled group serves is refused at
    submit, naming the queue; nothing of it is written."""
    from fused_celery.errors import JobNotFoundError, QueueNotServedError

    run = new_run(tmp_path, n=2)
    with pytest.raises(QueueNotServedError, match="m5.large@eu-west-1"):
        celery_driver.submit(
            run, queue="m5.large", instance_type="m5.large", config={"region": "eu-west-1"}
        )
    with pytest.raises(JobNotFoundError):
        JobRecord.open(run.job_id)
