"""``JobConfig``: steps in sequence as one job, on this machine and on real workers (one job
record, per-step stages and logs), its JSON round trip, and failures that stop the job without
a partial table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from steps_tables import make_points

import fused_celery as fused
from fused_celery.errors import (
    JobFailedError,
    StepInputError,
    StepOutputError,
    TableExistsError,
    UdfRuntimeError,
)
from fused_celery.jobs.config import JobConfig
from fused_celery.state.job_record import list_jobs
from fused_celery.steps.udf import UdfJobStepConfig
from fused_celery.table import open_table, read_chunk_metadata


@fused.udf
def scale(gdf, k: float = 2.0):
    print(f"scaling {len(gdf)} rows by {k}")
    out = gdf.copy()
    out["v"] = out["v"] * k
    return out


@fused.udf
def fail_file_1(gdf, metadata=None):
    if metadata["file_id"] == "1":
        raise ValueError("step three breaks on file 1")
    return gdf


@fused.udf
def returns_list(gdf):
    return [1, 2]


@fused.udf
def count(x: int):
    return x + 1


def three_steps(tmp_path: Path, src, last_udf=scale, name: str | None = "ingest.map:map-1"):
    path = tmp_path / "src.parquet"
    src.to_parquet(path)
    return JobConfig(
        name=name,
        steps=[
            fused.ingest(
                str(path),
                output=str(tmp_path / "t1"),
                partitioning_maximum_per_file=200,
                partitioning_maximum_per_chunk=50,
            ),
            fused.map(None, udf=scale, output_table=str(tmp_path / "t2"), name="double"),
            fused.map(None, udf=last_udf, output_table=str(tmp_path / "t3"), chunks_per_task=2),
        ],
        metadata={"owner": "tests"},
    )


def assert_no_table(url: Path) -> None:
    assert not url.exists() or not any(url.rglob("*")), list(url.rglob("*"))


# --- the model --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "job_1", "x.y:z-2", "A-b.c:d_e"])
def test_valid_names(name):
    assert JobConfig(name=name, steps=[UdfJobStepConfig(udf=count)]).name == name


@pytest.mark.parametrize("name", ["", "1job", "has space", "a/b", "-x", "é"])
def test_invalid_names_are_refused(name):
    with pytest.raises(ValidationError, match="job name"):
        JobConfig(name=name, steps=[UdfJobStepConfig(udf=count)])


def test_steps_are_required_and_must_be_steps():
    with pytest.raises(ValidationError, match="one or more steps"):
        JobConfig(steps=[])
    with pytest.raises(ValidationError, match="not a job step"):
        JobConfig(steps=[count])


def test_json_round_trip_in_another_process(tmp_path):
    job = three_steps(tmp_path, make_points(50))
    job.steps.append(UdfJobStepConfig(udf=count, input=[1, 2]))
    text = job.model_dump_json()
    again = JobConfig.model_validate_json(text)
    assert again.model_dump() == job.model_dump()
    assert [type(s).__name__ for s in again.steps] == [
        "GeospatialPartitionJobStepConfig",
        "MapJobStepConfig",
        "MapJobStepConfig",
        "UdfJobStepConfig",
    ]
    code = (
        "import sys; from fused_celery.jobs.config import JobConfig; "
        "j = JobConfig.model_validate_json(sys.stdin.read()); "
        "print(' '.join(s.type for s in j.steps), j.name, j.steps[1].udf.name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=text, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["partition_geospatial", "map", "map", "udf", job.name, "scale"]


# --- on this machine --------------------------------------------------------------------------


@pytest.mark.parametrize("engine", [None, "local"])
def test_three_steps_locally(tmp_path, engine):
    src = make_points(300)
    result = three_steps(tmp_path, src).run_local(engine=engine, k=3.0)
    assert [s["output"] for s in result["steps"]] == [str(tmp_path / f"t{i}") for i in (1, 2, 3)]
    assert result["output"] == str(tmp_path / "t3") and result["failed"] == []
    t1, t3 = read_chunk_metadata(str(tmp_path / "t1")), read_chunk_metadata(str(tmp_path / "t3"))
    assert [(c.file_id, c.chunk_id, c.num_rows) for c in t1] == [
        (c.file_id, c.chunk_id, c.num_rows) for c in t3
    ]
    frame = open_table(str(tmp_path / "t3")).get_dataframe().sort_values("uid")
    assert np.allclose(frame["v"], src["v"] * 9)


def test_failed_step_stops_the_job_and_leaves_no_partial_table(tmp_path):
    job = three_steps(tmp_path, make_points(300), last_udf=fail_file_1)
    with pytest.raises(UdfRuntimeError, match="step three breaks") as info:
        job.run_local(engine=None)
    notes = "\n".join(info.value.__notes__)
    assert "job stopped in step 3/3" in notes and "tables committed by earlier steps stay" in notes
    assert str(tmp_path / "t2") in notes
    assert open_table(str(tmp_path / "t1")).num_rows == 300
    assert open_table(str(tmp_path / "t2")).num_rows == 300
    assert_no_table(tmp_path / "t3")


def test_a_failing_middle_step_leaves_no_marker_for_later_steps(tmp_path):
    job = three_steps(tmp_path, make_points(100))
    job.steps[1] = job.steps[1].set_udf(returns_list)
    with pytest.raises(StepOutputError, match="builtins.list"):
        job.run_local(engine=None)
    assert open_table(str(tmp_path / "t1")).num_rows == 100
    assert_no_table(tmp_path / "t2")
    assert_no_table(tmp_path / "t3")


def test_inputs_are_checked_before_any_work(tmp_path, table):
    with pytest.raises(StepInputError, match="step 1 .* no input and there is no previous"):
        JobConfig(steps=[fused.map(None, udf=scale, output_table=str(tmp_path / "o"))]).run_local()
    after_udf = JobConfig(
        steps=[
            UdfJobStepConfig(udf=count, input=[1]),
            fused.map(None, udf=scale, output_table=str(tmp_path / "o")),
        ]
    )
    with pytest.raises(StepInputError, match="step 1 writes no table"):
        after_udf.run_local()
    # an existing output in step 2: refused before anything runs, step 1 leaves nothing
    JobConfig(steps=[fused.map(table, udf=scale, output_table=str(tmp_path / "b"))]).run_local()
    job = JobConfig(
        steps=[
            fused.map(table, udf=scale, output_table=str(tmp_path / "a")),
            fused.map(None, udf=scale, output_table=str(tmp_path / "b")),
        ]
    )
    with pytest.raises(TableExistsError):
        job.run_local()
    assert_no_table(tmp_path / "a")
    assert job.run_local(overwrite=True)["steps"][1]["num_rows"] == 400


# --- on the cluster ---------------------------------------------------------------------------


def test_three_steps_remote_one_job_record(on_shared_cluster, tmp_path):
    src = make_points(300, seed=3)
    before = {s.job_id for s in list_jobs(n=1000)}
    resp = three_steps(tmp_path, src).run_remote(k=3.0)
    resp.wait_for_job(timeout=180)
    logs = resp.get_logs()
    assert resp.status == "Done", logs[-8:]
    new = [s for s in list_jobs(n=1000) if s.job_id not in before]
    assert [s.job_id for s in new] == [resp.job_id]  # one job record for the three steps
    assert resp.job_name == "ingest.map:map-1" and resp.output == str(tmp_path / "t3")
    for stage in ("step1.prepare", "step1.write", "step2.map", "step2.write", "step3.map"):
        assert any(f"stage {stage}:" in line for line in logs), stage
    assert any("step 2/3 (double) starts" in line for line in logs)
    assert any("step 1/3 (partition_geospatial) done:" in line for line in logs)
    assert resp.finished_tasks == resp.total_tasks
    result = resp.get_results()
    assert [s["num_rows"] for s in result["steps"]] == [300, 300, 300]
    frame = open_table(str(tmp_path / "t3")).get_dataframe().sort_values("uid")
    assert np.allclose(frame["v"], src["v"] * 9)
    code = f"import fused_celery as f; print(f.api.job_get_status({resp.job_id!r}).status)"
    env = {
        **os.environ,
        "FUSED_CELERY_BROKER_URL": on_shared_cluster,
        "FUSED_CELERY_RESULT_BACKEND": on_shared_cluster,
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["Done"]


def test_remote_failed_step_keeps_earlier_tables_and_says_so(on_shared_cluster, tmp_path):
    resp = three_steps(tmp_path, make_points(300), last_udf=fail_file_1).run_remote()
    resp.wait_for_job(timeout=180)
    assert resp.status == "Failed"
    with pytest.raises(JobFailedError, match="step3.map.*step three breaks"):
        resp.get_results()
    logs = resp.get_logs()
    assert any("job stopped in step 3/3" in line and "stay" in line for line in logs), logs[-5:]
    assert open_table(str(tmp_path / "t1")).num_rows == 300
    assert open_table(str(tmp_path / "t2")).num_rows == 300
    assert_no_table(tmp_path / "t3")


def test_remote_map_step(on_shared_cluster, tmp_path, table, points):
    step = fused.map(table, udf=scale, output_table=str(tmp_path / "out"), chunks_per_task=3)
    resp = step.run_remote()
    resp.wait_for_job(timeout=120)
    assert resp.status == "Done", resp.get_logs()[-5:]
    assert resp.get_results()["num_rows"] == len(points)
    first = read_chunk_metadata(table)[0]
    line = f"chunk {first.file_id}/{first.chunk_id}: scaling {first.num_rows} rows by 2.0"
    assert any(line in entry for entry in resp.get_logs())  # the UDF's output, in the job's log
    assert step.open_output().num_chunks == len(read_chunk_metadata(table))
    frame = step.open_output().get_dataframe().sort_values("uid")
    assert np.allclose(frame["v"], points["v"] * 2)


def test_remote_map_bad_output_and_ignore_chunk_error(on_shared_cluster, tmp_path, table):
    out = tmp_path / "bad"
    resp = fused.map(table, udf=returns_list, output_table=str(out)).run_remote()
    resp.wait_for_job(timeout=120)
    assert resp.status == "Failed"
    with pytest.raises(JobFailedError, match=r"chunk 0/0.*builtins\.list"):
        resp.get_results()
    assert_no_table(out)
    kept = fused.map(
        table, udf=fail_file_1, output_table=str(tmp_path / "kept"), ignore_chunk_error=True
    )
    resp = kept.run_remote().wait_for_job(timeout=120)
    assert resp.status == "Done", resp.get_logs()[-5:]
    result = resp.get_results()
    n_file_1 = sum(c.num_rows for c in read_chunk_metadata(table) if c.file_id == "1")
    assert result["num_rows"] == 400 - n_file_1 and result["failed"]


def test_remote_refusals_before_submit(on_shared_cluster, tmp_path, table):
    before = len(list_jobs(n=1000))
    with pytest.raises(StepInputError, match="is not a table"):
        fused.map(
            str(tmp_path / "nothing"), udf=scale, output_table=str(tmp_path / "o")
        ).run_remote()
    fused.map(table, udf=scale, output_table=str(tmp_path / "o")).run_remote().wait_for_job(
        timeout=120
    )
    with pytest.raises(TableExistsError):
        fused.map(table, udf=scale, output_table=str(tmp_path / "o")).run_remote()
    with pytest.raises(StepInputError, match="no previous step"):
        JobConfig(steps=[fused.map(None, udf=scale, output_table=str(tmp_path / "p"))]).run_remote()
    job = JobConfig(steps=[fused.map(table, udf=scale, output_table=str(tmp_path / "q"))])
    with pytest.raises(ValueError, match="disk_size_gb must be a positive integer"):
        job.run_remote(disk_size_gb=0)
    with pytest.raises(ValueError, match="KEY=value"):
        job.run_remote(additional_env=["not a pair"])
    assert len(list_jobs(n=1000)) == before + 1


@fused.udf
def crs_by_file(gdf, metadata=None):
    return gdf.to_crs(3857) if metadata["file_id"] == "1" else gdf


def test_remote_crs_mismatch_fails_naming_two_chunks(on_shared_cluster, tmp_path, table):
    out = tmp_path / "out"
    resp = fused.map(table, udf=crs_by_file, output_table=str(out), chunks_per_task=1)
    resp = resp.run_remote().wait_for_job(timeout=120)
    assert resp.status == "Failed"
    with pytest.raises(JobFailedError, match=r"chunks 0/0 and 1/0 have different CRSs"):
        resp.get_results()
    assert_no_table(out)


@fused.udf
def slow(gdf):
    import time

    time.sleep(1.0)
    return gdf


def test_remote_cancel_leaves_no_table(on_shared_cluster, tmp_path, table):
    import time

    out = tmp_path / "out"
    resp = fused.map(table, udf=slow, output_table=str(out), chunks_per_task=1).run_remote()
    deadline = time.monotonic() + 60
    while resp.get_status().finished_tasks < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert resp.status == "Running"
    resp.cancel(wait=True, timeout=60)
    assert resp.status == "Canceled", resp.get_logs()[-5:]
    assert_no_table(out)
