"""Progress and logs of a job on real workers: ``wait_for_job``'s tqdm bar counts each step's
chunks, and ``tail_logs`` says which step, file and chunk each UDF output line came from."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

import fused_celery as fused
from fused_celery.jobs.config import JobConfig
from fused_celery.state.job_record import JobRecord
from fused_celery.table import read_chunk_metadata


@fused.udf
def slow_scale(gdf, metadata=None, delay: float = 0.2, gate: str = ""):
    """Prints two lines, then waits for the file ``gate`` (when given, at most 120 s) and
    ``delay`` s; doubles ``v``."""
    import os
    import time

    print(f"file {metadata['file_id']} chunk {metadata['chunk_id']}: {len(gdf)} rows")
    print("second line")
    deadline = time.monotonic() + 120
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    out = gdf.copy()
    out["v"] = out["v"] * 2
    return out


def two_maps(table: str, tmp_path, gates: tuple[str, str] = ("", "")) -> JobConfig:
    first = fused.map(table, output_table=str(tmp_path / "a"), chunks_per_task=1)
    second = fused.map(None, output_table=str(tmp_path / "b"), chunks_per_task=2)
    return JobConfig(
        steps=[
            first.set_udf(slow_scale, parameters={"gate": gates[0]}),
            second.set_udf(slow_scale, parameters={"gate": gates[1]}),
        ]
    )


@pytest.mark.slow
def test_wait_for_job_bar_counts_chunks_per_step(on_shared_cluster, tmp_path, table, capsys):
    """Each step's map waits for a gate file that the test creates only once the bar of
    ``wait_for_job`` (in a thread) has shown that step's chunks: no race with its polls."""
    n = len(read_chunk_metadata(table))
    gates = (str(tmp_path / "gate1"), str(tmp_path / "gate2"))
    resp = two_maps(table, tmp_path, gates).run_remote(delay=0.0)
    waiter = threading.Thread(
        target=resp.wait_for_job, kwargs={"poll_interval_seconds": 0.05, "timeout": 300}
    )
    waiter.start()
    seen = ""
    for step, gate in zip(("step1.map", "step2.map"), gates):
        deadline = time.monotonic() + 240
        pattern = rf"{re.escape(step)}: .*\d+/{n} chunks"
        while not re.search(pattern, seen) and time.monotonic() < deadline:
            time.sleep(0.05)
            seen += capsys.readouterr().err
        assert re.search(pattern, seen), seen[-2000:]
        Path(gate).touch()
    waiter.join(timeout=300)
    assert resp.get_status().status == "Done", resp.get_logs()[-5:]
    progress = JobRecord.open(resp.job_id).snapshot(errors=False).progress
    assert {s: (p.done, p.total, p.unit) for s, p in progress.items()} == {
        "step1.map": (n, n, "chunk"),
        "step2.map": (n, n, "chunk"),
    }


@pytest.mark.slow
def test_tail_logs_names_step_file_and_chunk(on_shared_cluster, tmp_path, table, capsys):
    resp = two_maps(table, tmp_path).run_remote(delay=0.0)
    resp.tail_logs(refresh_seconds=0.1, timeout=180)
    assert resp.status == "Done"
    out = capsys.readouterr().out
    for c in read_chunk_metadata(table):
        for step in ("step1.map", "step2.map"):
            where = f"[{step}] chunk {c.file_id}/{c.chunk_id}: "
            assert f"{where}file {c.file_id} chunk {c.chunk_id}: {c.num_rows} rows" in out, where
            assert f"{where}second line" in out
