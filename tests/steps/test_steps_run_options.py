"""``run_remote`` / ``run_local`` options applied, not only stored: ``additional_env`` set around
every task and restored (protected names refused at submit), ``validate_imports``,
``ignore_no_udf``, ``ignore_no_output``, and the fleet fields (instance type, region, image)
that route the job's tasks to their queue and ride every task message."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fused_celery as fused
from fused_celery.errors import (
    ProtectedEnvError,
    StepConfigError,
    StepInputError,
    StepUdfError,
    UdfImportError,
)
from fused_celery.jobs.config import JobConfig
from fused_celery.jobs.run_options import RunOptions, run_options
from fused_celery.options import DEFAULT_QUEUE, options
from fused_celery.state.job_record import JobRecord, list_jobs
from fused_celery.steps.udf import UdfJobStepConfig
from fused_celery.table import open_table
from fused_celery.udf_imports import unresolved_imports

VAR = "FC_STEPS_TEST_VAR"


@fused.udf
def env_column(gdf, name: str = "FC_STEPS_TEST_VAR"):
    import os

    out = gdf.copy()
    out["env"] = os.environ.get(name, "<unset>")
    return out


@fused.udf
def env_value(x: int, name: str = "FC_STEPS_TEST_VAR"):
    import os

    return os.environ.get(name, "<unset>")


@fused.udf
def double(gdf):
    out = gdf.copy()
    out["v"] = out["v"] * 2
    return out


@fused.udf
def imports_missing(gdf):
    import fc_no_such_module_xyz  # noqa: F401

    return gdf


def env_values(url: str) -> set[str]:
    return set(open_table(url).get_dataframe()["env"])


# --- on this machine --------------------------------------------------------------------------


@pytest.mark.parametrize("engine", [None, "local"])
def test_additional_env_set_for_the_job_and_restored(tmp_path, table, engine):
    assert VAR not in os.environ
    out = str(tmp_path / "env")
    job = JobConfig(steps=[fused.map(table, udf=env_column, output_table=out)])
    job.run_local(engine=engine, additional_env=[f"{VAR}=a=b c"])
    assert env_values(out) == {"a=b c"}  # the value may hold '=' and spaces
    assert VAR not in os.environ  # restored in this process
    again = str(tmp_path / "again")
    JobConfig(steps=[fused.map(table, udf=env_column, output_table=again)]).run_local(engine=engine)
    assert env_values(again) == {"<unset>"}  # and in the worker processes


@pytest.mark.parametrize(
    "key", ["PATH", "PYTHONPATH", "HOME", "LD_PRELOAD", "AWS_SECRET_ACCESS_KEY",
            "FUSED_CELERY_BROKER_URL", "CELERY_BROKER_URL"],
)  # fmt: skip
def test_protected_env_is_refused_at_submit(tmp_path, table, key):
    step = fused.map(table, udf=double, output_table=str(tmp_path / "o"))
    with pytest.raises(ProtectedEnvError, match=key):
        step.run_remote(additional_env=[f"{key}=x"])
    with pytest.raises(ProtectedEnvError, match=key):
        JobConfig(steps=[step]).run_local(additional_env={key: "x"})
    assert not (tmp_path / "o").exists()


def test_validate_imports_names_the_module(tmp_path, table):
    assert unresolved_imports(
        "import os\nimport numpy.linalg\nfrom . import rel\n"
        "def f():\n    from fc_nope_a.b import c\n    import fc_nope_b\n"
    ) == ["fc_nope_a.b", "fc_nope_b"]
    step = fused.map(table, udf=imports_missing, output_table=str(tmp_path / "o"))
    with pytest.raises(UdfImportError, match="fc_no_such_module_xyz"):
        step.run_remote(validate_imports=True)
    with pytest.raises(UdfImportError, match="imports_missing.*fc_no_such_module_xyz"):
        JobConfig(steps=[step]).run_local(engine=None, validate_imports=True)
    with pytest.raises(UdfImportError, match="fc_no_such_module_xyz"):
        step.run_local(validate_imports=True)  # the sample run too
    assert not (tmp_path / "o").exists()
    ok = fused.map(table, udf=double, output_table=str(tmp_path / "ok"))
    JobConfig(steps=[ok]).run_local(engine=None, validate_imports=True)
    assert open_table(str(tmp_path / "ok")).num_rows == 400


def test_ignore_no_udf_passes_the_input_through(tmp_path, table, points):
    step = fused.map(table, output_table=str(tmp_path / "o"))
    with pytest.raises(StepUdfError, match="ignore_no_udf=True"):
        JobConfig(steps=[step]).run_local(engine=None)
    JobConfig(steps=[step]).run_local(engine=None, ignore_no_udf=True)
    frame = open_table(str(tmp_path / "o")).get_dataframe().sort_values("uid")
    assert np.allclose(frame["v"], points["v"])
    with pytest.raises(StepUdfError, match="has no UDF"):
        UdfJobStepConfig(input=[1]).run_remote()


def test_ignore_no_output_runs_without_a_table(tmp_path, table):
    step = fused.map(table, udf=double)
    with pytest.raises(StepInputError, match="no output table"):
        JobConfig(steps=[step]).run_local(engine=None)
    result = JobConfig(steps=[step]).run_local(engine=None, ignore_no_output=True)
    assert result["output"] is None
    assert result["steps"][0]["output"] is None and result["steps"][0]["num_rows"] == 400
    with pytest.raises(StepConfigError, match="no output table"):
        step.run_remote()


def test_options_checked_and_queue_named():
    found = run_options(
        "m5.large", region="eu-west-1", image_name="img-a", disk_size_gb=30,
        additional_env=["A=1"],
    )  # fmt: skip
    assert found.queue == "m5.large@eu-west-1:img-a"
    assert RunOptions().queue == DEFAULT_QUEUE
    assert found.record_fields() == {
        "region": "eu-west-1", "disk_size_gb": 30, "additional_env": {"A": "1"},
        "image_name": "img-a",
    }  # fmt: skip
    assert run_options(region="eu-west-1", image_name="img").queue == DEFAULT_QUEUE
    with pytest.raises(ValueError, match="not an AWS region"):
        run_options("m5.large", region="Europe")


# --- on the cluster ---------------------------------------------------------------------------


@pytest.mark.slow
def test_remote_additional_env_ignore_no_udf_and_no_output(on_shared_cluster, tmp_path, table):
    out = str(tmp_path / "env")
    resp = fused.map(table, udf=env_column, output_table=out, chunks_per_task=1).run_remote(
        additional_env=[f"{VAR}=remote"]
    )
    assert resp.wait_for_job(timeout=120).status == "Done", resp.get_logs()[-5:]
    assert env_values(out) == {"remote"}
    assert JobRecord.open(resp.job_id).config()["additional_env"] == {VAR: "remote"}
    # the same worker processes, a job without the variable: restored after each task
    plain = UdfJobStepConfig(udf=env_value, input=list(range(8))).run_remote()
    assert plain.wait_for_job(timeout=120).get_results() == ["<unset>"] * 8
    passed = UdfJobStepConfig(input=[1, "a", None]).run_remote(ignore_no_udf=True)
    assert passed.wait_for_job(timeout=120).get_results() == [1, "a", None]
    nothing = fused.map(table, udf=double).run_remote(ignore_no_output=True)
    assert nothing.wait_for_job(timeout=120).status == "Done", nothing.get_logs()[-5:]
    result = nothing.get_results()
    assert result["output"] is None and result["num_rows"] == 400
    assert any("no output table" in line for line in nothing.get_logs())


@pytest.mark.slow
def test_remote_job_routed_to_its_instance_region_and_image_queue(
    celery_workers, fused_options, tmp_path
):
    queue = "m5.large@eu-west-1:img-a"
    (worker,) = celery_workers(n=1, queues=(queue,))
    before = len(list_jobs(n=1000))
    step = UdfJobStepConfig(udf=env_value, input=[1, 2])
    resp = step.run_remote(
        instance_type="m5.large", region="eu-west-1", image_name="img-a", disk_size_gb=20
    )
    assert resp.wait_for_job(timeout=120).status == "Done", resp.get_logs()[-5:]
    assert len(list_jobs(n=1000)) == before + 1
    assert any(f"on queue {queue!r}" in line for line in resp.get_logs())
    record = JobRecord.open(resp.job_id)
    assert resp.instance_type == "m5.large"
    assert (record.config()["region"], record.config()["image_name"]) == ("eu-west-1", "img-a")
    assert record.config()["disk_size_gb"] == 20
    assert options.broker_url and worker.hostname
