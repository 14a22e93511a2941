"""Resumable reruns: a failed or cancelled map job rerun with ``resume=True`` (the same step, or
its job id) redoes only the chunks not yet staged under the storage root; a changed UDF or
parameter never reuses them; the finished table equals a clean run's; staged work expires."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from steps_tables import ingest_table, make_points

import fused_celery as fused
from fused_celery import storage
from fused_celery.errors import StepInputError, UdfRuntimeError
from fused_celery.jobs import staged
from fused_celery.jobs.config import JobConfig
from fused_celery.table import open_table, read_chunk_metadata


@fused.udf
def counted(gdf, metadata=None, log: str = "", fail_flag: str = "", delay: float = 0.0, k=2.0):
    """Scales ``v`` by ``k``; appends ``<file>/<chunk>`` to ``log`` per call; raises on the last
    file while ``fail_flag`` exists; sleeps ``delay`` s."""
    import os
    import time

    with open(log, "a") as f:
        f.write(f"{metadata['file_id']}/{metadata['chunk_id']}\n")
    if fail_flag and os.path.exists(fail_flag) and metadata["file_id"] == "1":
        raise ValueError("failing until the flag goes")
    time.sleep(delay)
    out = gdf.copy()
    out["v"] = out["v"] * k
    return out


def calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def frame_of(url: str):
    return open_table(url).get_dataframe().sort_values("uid").reset_index(drop=True)


def assert_same_table(url: str, clean: str) -> None:
    got, want = frame_of(url), frame_of(clean)
    assert list(got.columns) == list(want.columns)
    assert got.drop(columns="geometry").equals(want.drop(columns="geometry"))
    assert got.geometry.equals(want.geometry)
    strip = [(c.file_id, c.chunk_id, c.num_rows) for c in read_chunk_metadata(url)]
    assert strip == [(c.file_id, c.chunk_id, c.num_rows) for c in read_chunk_metadata(clean)]


@pytest.fixture
def clean(tmp_path, table) -> str:
    """The table of a clean run of :func:`counted` (k=2) over ``table``."""
    url = str(tmp_path / "clean")
    step = fused.map(table, output_table=url).set_udf(
        counted, parameters={"log": str(tmp_path / "clean.log")}
    )
    JobConfig(steps=[step]).run_local(engine=None)
    return url


@pytest.mark.parametrize(
    ("engine", "per_task"),
    [(None, 1), ("local", 1), (None, None), ("local", None)],
    ids=["in-process-parts", "local-parts", "in-process-whole-files", "local-whole-files"],
)
def test_local_resume_redoes_only_what_was_not_staged(tmp_path, table, clean, engine, per_task):
    """Chunk parts (``chunks_per_task=1``) and whole files (the default batching: one task
    writes file 0 whole, then fails on file 1) are both reused."""
    n = len(read_chunk_metadata(table))
    log, flag, out = tmp_path / "calls.log", tmp_path / "flag", str(tmp_path / "out")
    flag.touch()
    step = fused.map(table, output_table=out, chunks_per_task=per_task).set_udf(
        counted, parameters={"log": str(log), "fail_flag": str(flag)}
    )
    with pytest.raises(UdfRuntimeError, match="failing until the flag goes"):
        JobConfig(steps=[step]).run_local(engine=engine)
    assert not Path(out).exists() or not any(Path(out).rglob("*.parquet"))
    first = calls(log)
    flag.unlink()
    log.unlink()
    JobConfig(steps=[step]).run_local(engine=engine, resume=True)
    redone = calls(log)
    file_1 = {f"{c.file_id}/{c.chunk_id}" for c in read_chunk_metadata(table) if c.file_id == "1"}
    staged_before = {c for c in first if c not in file_1}
    assert set(redone) and not set(redone) & staged_before  # only the unstaged chunks ran
    assert len(redone) < n
    assert_same_table(out, clean)
    # once committed, nothing is left staged: a resume of a finished job recomputes everything
    log.unlink()
    JobConfig(steps=[step]).run_local(engine=engine, resume=True, overwrite=True)
    assert len(calls(log)) == n


def test_changed_udf_parameters_or_input_never_reuse_staged_parts(tmp_path, table):
    n = len(read_chunk_metadata(table))
    log, flag, out = tmp_path / "calls.log", tmp_path / "flag", str(tmp_path / "out")
    flag.touch()
    step = fused.map(table, output_table=out, chunks_per_task=1).set_udf(
        counted, parameters={"log": str(log), "fail_flag": str(flag)}
    )
    with pytest.raises(UdfRuntimeError):
        JobConfig(steps=[step]).run_local(engine=None)
    flag.unlink()
    log.unlink()
    changed = step.set_udf(step.udf, parameters={"k": 3.0})
    JobConfig(steps=[changed]).run_local(engine=None, resume=True)
    assert len(calls(log)) == n  # another parameter: every chunk again
    assert open_table(out).get_dataframe()["v"].abs().sum() > 0
    # another input table with the same layout: other keys
    other = ingest_table(make_points(400, seed=9), str(tmp_path / "in2"))
    log.unlink()
    moved = step.set_input(other).set_output(str(tmp_path / "out2"))
    JobConfig(steps=[moved]).run_local(engine=None, resume=True)
    assert len(calls(log)) == len(read_chunk_metadata(other))


def test_staged_work_expires_and_is_swept(tmp_path, monkeypatch):
    from fused_celery.options import options

    monkeypatch.setattr(options, "storage_root", str(tmp_path / "root"))
    key = staged.work_key("test", 1)
    storage.write_bytes(staged.entry_url(key, "part.arrow"), b"x")
    staged.mark_done(key, {"rows": 1})
    assert staged.staged_info(key) == {"rows": 1}
    assert staged.work_key("test", 1) == key != staged.work_key("test", 2)
    assert staged.sweep(force=True) == 0  # young: kept
    monkeypatch.setattr(options, "staged_expires", 0.01)
    time.sleep(0.05)
    assert staged.staged_info(key) is None  # expired: not reused even before the sweep
    assert staged.sweep(force=True) == 1
    assert not storage.list_files(staged.staged_root(), recursive=True)


# --- on the cluster ---------------------------------------------------------------------------


@pytest.mark.slow
def test_remote_cancelled_job_resumed_by_id_runs_fewer_tasks(on_shared_cluster, tmp_path):
    src = make_points(1200, seed=5)
    table = ingest_table(src, str(tmp_path / "in"), per_file=400, per_chunk=50)
    n = len(read_chunk_metadata(table))
    clean = str(tmp_path / "clean")
    base = fused.map(table, output_table=clean, chunks_per_task=1)
    base = base.set_udf(counted, parameters={"log": str(tmp_path / "c.log")})
    JobConfig(steps=[base]).run_local(engine=None)
    log, out = tmp_path / "calls.log", str(tmp_path / "out")
    step = fused.map(table, output_table=out, chunks_per_task=1).set_udf(
        counted, parameters={"log": str(log), "delay": 0.3}
    )
    resp = step.run_remote()
    deadline = time.monotonic() + 120
    while resp.get_status().finished_tasks < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    resp.cancel(wait=True, timeout=120)
    assert resp.status == "Canceled", resp.get_logs()[-5:]
    assert not Path(out).exists() or not any(Path(out).rglob("*.parquet"))
    first = calls(log)
    assert 4 <= len(first) < n
    log.unlink()
    again = resp.resume()
    assert again.job_id != resp.job_id
    assert again.wait_for_job(timeout=180).status == "Done", again.get_logs()[-5:]
    redone = calls(log)
    assert len(redone) <= n - len(set(first)) + 4  # only what the cancelled run did not stage
    map_tasks = [int(m) for m in re.findall(r"stage map: (\d+) tasks", "\n".join(again.get_logs()))]
    assert len(redone) < n and map_tasks == [len(set(redone))]  # one task per chunk not staged
    assert any("reused (resume)" in line for line in again.get_logs())
    assert_same_table(out, clean)
    with pytest.raises(StepInputError, match="only a Failed or Canceled job"):
        again.resume()


@fused.udf
def counted_join(left, right, metadata=None, log: str = "", fail_flag: str = ""):
    """The left rows with their count of right rows; appends ``<file>/<chunk>`` to ``log`` per
    call; raises on left file 1 while ``fail_flag`` exists."""
    import os

    with open(log, "a") as f:
        f.write(f"{metadata['file_id']}/{metadata['chunk_id']}\n")
    if fail_flag and os.path.exists(fail_flag) and metadata["file_id"] == "1":
        raise ValueError("failing until the flag goes")
    out = left.copy()
    out["n_right"] = len(right)
    return out


def test_join_resume_redoes_only_what_was_not_staged(tmp_path, table):
    """A join is resumable like the map step: its staged keys hold both inputs' versions, so a
    rerun reuses the left chunks already joined; a rewritten right input reuses nothing."""
    from join_tables import make_polygons

    right = ingest_table(make_polygons(60), str(tmp_path / "right"), 30, 10)
    n = len(read_chunk_metadata(table))
    log, flag, out = tmp_path / "calls.log", tmp_path / "flag", str(tmp_path / "out")
    clean = str(tmp_path / "clean")
    params = {"log": str(tmp_path / "clean.log")}
    JobConfig(steps=[fused.join(table, right, output_table=clean).set_udf(
        counted_join, parameters=params)]).run_local(engine=None)  # fmt: skip
    flag.touch()
    step = fused.join(table, right, output_table=out, chunks_per_task=1).set_udf(
        counted_join, parameters={"log": str(log), "fail_flag": str(flag)}
    )
    with pytest.raises(UdfRuntimeError, match="failing until the flag goes"):
        JobConfig(steps=[step]).run_local(engine=None)
    first = calls(log)
    flag.unlink()
    log.unlink()
    JobConfig(steps=[step]).run_local(engine=None, resume=True)  # the same step, resumed
    again = calls(log)
    assert 0 < len(again) < n, (first, again)  # the chunks joined before the failure reused
    assert_same_table(out, clean)
    # a rewritten right input: nothing reused
    shutil.rmtree(right)
    ingest_table(make_polygons(60), right, 30, 10)
    log.unlink()
    out2 = str(tmp_path / "out2")
    JobConfig(steps=[step.model_copy(update={"output": out2})]).run_local(engine=None, resume=True)
    assert len(calls(log)) == n
