"""The join steps on a real 2-worker cluster: results equal geopandas' ``sjoin``, the job's log,
``run_remote``'s options, and failures (job ``Failed`` with the reason, no partial table)."""

from __future__ import annotations

import pytest
from join_tables import make_polygons, pairs, sjoin_pairs
from steps_tables import ingest_table, make_points

import fused_celery as fused
from fused_celery.errors import JobFailedError, StepInputError
from fused_celery.jobs.config import JobConfig
from fused_celery.table import open_table

pytestmark = pytest.mark.slow


@fused.udf
def tag_right(left, right, metadata=None):
    print(f"left {len(left)} right {len(right)}")
    out = left.copy()
    out["n_right"] = len(right)
    return out


@fused.udf
def returns_number(left, right):
    return 3


def test_remote_join_and_singlefile_equal_sjoin(on_shared_cluster, tmp_path):
    points, polygons = make_points(), make_polygons()
    left = ingest_table(points, str(tmp_path / "left"))
    right = ingest_table(polygons, str(tmp_path / "right"), 30, 10)
    step = fused.join(left, right, how="left", output_table=str(tmp_path / "o"))
    resp = step.run_remote(
        region="us-east-1", disk_size_gb=20,  # the shared workers serve the default queue
        additional_env=["JOIN_TEST=1"], image_name="img", overwrite=False,
    )  # fmt: skip
    resp.wait_for_job(timeout=180)
    logs = resp.get_logs()
    assert resp.status == "Done", logs[-8:]
    assert any("join: left join of" in line for line in logs), logs
    frame = step.open_output().get_dataframe()
    assert pairs(frame) == sjoin_pairs(points, polygons)
    assert sorted(frame["uid"].unique()) == list(range(len(points)))
    path = tmp_path / "r.parquet"
    polygons.to_parquet(path)
    single = fused.join_singlefile(left, str(path), udf=tag_right, output_table=str(tmp_path / "s"))
    resp = single.run_remote().wait_for_job(timeout=180)
    assert resp.status == "Done", resp.get_logs()[-8:]
    assert (single.open_output().get_dataframe()["n_right"] == len(polygons)).all()
    assert any(f"right {len(polygons)}" in line for line in resp.get_logs())


def test_remote_failures_leave_no_table(on_shared_cluster, tmp_path):
    left = ingest_table(make_points(), str(tmp_path / "left"))
    right = ingest_table(make_polygons(), str(tmp_path / "right"), 30, 10)
    out = tmp_path / "o"
    resp = fused.join(left, right, udf=returns_number, output_table=str(out)).run_remote()
    resp.wait_for_job(timeout=180)
    assert resp.status == "Failed"
    with pytest.raises(JobFailedError, match=r"chunk 0/0.*builtins\.int"):
        resp.get_results()
    assert not out.exists() or not any(out.rglob("*"))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    resp = fused.join_singlefile(left, str(bad), output_table=str(out)).run_remote()
    resp.wait_for_job(timeout=180)
    assert resp.status == "Failed"
    with pytest.raises(JobFailedError, match="cannot read the right file"):
        resp.get_results()
    assert not out.exists() or not any(out.rglob("*"))
    with pytest.raises(StepInputError, match="not a table"):  # refused before submitting
        fused.join(left, str(tmp_path / "nothing"), output_table=str(out)).run_remote()


def test_remote_ingest_ingest_join_is_one_job(on_shared_cluster, tmp_path):
    points, polygons = make_points(300), make_polygons(40)
    points.to_parquet(tmp_path / "p.parquet")
    polygons.to_parquet(tmp_path / "q.parquet")
    job = JobConfig(
        steps=[
            fused.ingest(str(tmp_path / "p.parquet"), output=str(tmp_path / "tp")),
            fused.ingest(str(tmp_path / "q.parquet"), output=str(tmp_path / "tq")),
            fused.join(None, None, output_table=str(tmp_path / "tj")),
        ]
    )
    resp = job.run_remote().wait_for_job(timeout=240)
    logs = resp.get_logs()
    assert resp.status == "Done", logs[-8:]
    assert any("stage step3.join:" in line for line in logs), logs
    joined = open_table(str(tmp_path / "tj")).get_dataframe()
    assert pairs(joined) == sjoin_pairs(points, polygons)
