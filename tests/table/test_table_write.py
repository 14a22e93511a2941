"""Table writers (``fused_celery.table.write``): the commit protocol (overwrite, staging,
reruns, interrupted commits, a killed writer), schemas and CRSs across chunks and files; local
disk and S3 (moto on loopback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import shapely
from table_samples import make_chunk, make_files

from fused_celery import storage
from fused_celery.errors import IncompleteTableError, TableExistsError
from fused_celery.table.facts import compute_chunk_metadata
from fused_celery.table.read import get_chunk_from_table, get_chunks_metadata, open_table, read_bbox
from fused_celery.table.write import TableWriter, write_table

pytest_plugins = ["moto_server"]


# --- commit protocol -----------------------------------------------------------------------------


def test_overwrite_false_fails_before_any_work(root):
    url = storage.join(root, "t")
    write_table(url, make_files(10))
    before = storage.list_files(url, recursive=True)
    with pytest.raises(TableExistsError, match="overwrite=True"):
        TableWriter(url)
    assert storage.list_files(url, recursive=True) == before  # nothing staged


def test_overwrite_false_refuses_a_folder_that_is_not_a_table(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.parquet").write_bytes(b"user data")
    with pytest.raises(TableExistsError, match="not a fused table"):
        TableWriter(str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "data.parquet").read_bytes() == b"user data"


def test_overwrite_replaces_the_table_only_at_commit(root):
    url = storage.join(root, "t")
    write_table(url, make_files(10))  # files 0 and 1
    writer = TableWriter(url, overwrite=True, run_id="job2")
    meta = writer.write_file("0", [make_chunk(50, 50, 5, 1000, 9)])
    old = open_table(url)  # still the old table, whole
    assert (old.num_files, old.num_rows) == (2, 40)
    assert len(get_chunk_from_table(url, "0", 1)) == 10
    new = writer.commit(meta)
    assert (new.num_files, new.num_chunks, new.num_rows) == (1, 1, 5)
    assert sorted(storage.list_files(url, recursive=True)) == ["0.parquet", "_sample"]
    assert sorted(get_chunk_from_table(url, "0", 0)["id"]) == list(range(1000, 1005))


def test_a_table_without_sample_is_incomplete_and_a_rerun_completes_it(root):
    url = storage.join(root, "t")
    files = make_files(10)
    writer = TableWriter(url, run_id="job1")
    for fid, chunks in files.items():
        writer.write_file(fid, chunks)
    # The writer "dies" here: no commit.
    for read in (
        lambda: open_table(url),
        lambda: get_chunks_metadata(url),
        lambda: get_chunk_from_table(url, "0", 0),
        lambda: read_bbox(url, (0, 0, 1, 1)),
    ):
        with pytest.raises(IncompleteTableError, match="no _sample") as info:
            read()
        assert "rerun the job" in str(info.value)
    # A rerun (new writer, overwrite=False) completes it without duplicates.
    table = write_table(url, files, run_id="job2")
    ids = get_chunk_from_table(url, None, None)["id"].tolist()
    assert table.num_rows == 40 and sorted(ids) == list(range(40))
    assert "_staging" not in {p.split("/")[0] for p in storage.list_files(url, recursive=True)}


def test_commit_interrupted_before_sample_is_resumed(tmp_path, monkeypatch):
    url = str(tmp_path / "t")
    write_table(url, make_files(10))  # an old table, files 0 and 1
    writer = TableWriter(url, overwrite=True)
    meta = writer.write_file("5", [make_chunk(0, 0, 3, 500, 1)])
    real_write = storage.write_bytes

    def crash_on_sample(target, data):
        if target.endswith("_sample"):
            raise OSError("simulated crash before _sample")
        return real_write(target, data)

    monkeypatch.setattr(storage, "write_bytes", crash_on_sample)
    with pytest.raises(OSError, match="simulated"):
        writer.commit(meta)
    monkeypatch.setattr(storage, "write_bytes", real_write)
    with pytest.raises(IncompleteTableError):
        open_table(url)  # the old table is gone, the new one not committed: not a table
    table = writer.commit(meta)  # the redelivered finalizer completes it
    assert (table.files, table.num_rows) == (["5"], 3)
    assert TableWriter(url, overwrite=True).commit(meta).num_rows == 3  # idempotent
    assert sorted(storage.list_files(url, recursive=True)) == ["5.parquet", "_sample"]


def test_commit_refuses_files_that_were_never_written(tmp_path):
    writer = TableWriter(str(tmp_path / "t"))
    meta = writer.write_file("0", [make_chunk(0, 0, 3, 0, 0)])
    ghost = compute_chunk_metadata("9", 0, np.array([shapely.Point(0, 0)]))
    with pytest.raises(IncompleteTableError, match="'9'"):
        writer.commit([*meta, ghost])
    with pytest.raises(ValueError, match="chunk_ids"):
        writer.commit([*meta, *meta])


def test_commit_chunks_deletes_the_scratch_folder_and_returns_the_committed_chunks(root):
    url = storage.join(root, "t")
    writer = TableWriter(url, run_id="job1")
    metas = [*writer.write_file("1", [make_chunk(5, 5, 2, 100, 1)])]
    metas += writer.write_file("0", [make_chunk(0, 0, 3, 0, 0), make_chunk(1, 1, 4, 10, 0)])
    scratch = storage.join(writer.staging_url, "_work")
    for name in ("prepared/0.arrow", "scattered/0.arrow", "plan.json"):
        storage.write_bytes(storage.join(scratch, name), b"work file")
    got = writer.commit_chunks(metas, scratch=scratch)
    assert [(c.file_id, c.chunk_id, c.num_rows) for c in got] == [
        ("0", 0, 3),
        ("0", 1, 4),
        ("1", 0, 2),
    ]
    assert sorted(storage.list_files(url, recursive=True)) == ["0.parquet", "1.parquet", "_sample"]
    table = open_table(url)
    assert (table.num_files, table.num_chunks, table.num_rows) == (2, 3, 9)
    assert table.chunk_metadata == got


def test_commit_refuses_a_scratch_folder_outside_its_staging_area(tmp_path):
    keep = tmp_path / "user"
    keep.mkdir()
    (keep / "data.txt").write_text("mine")
    writer = TableWriter(str(tmp_path / "t"))
    meta = writer.write_file("0", [make_chunk(0, 0, 3, 0, 0)])
    for outside in (str(keep), writer.staging_url, str(tmp_path / "t")):
        with pytest.raises(ValueError, match="not in this run's staging area"):
            writer.commit_chunks(meta, scratch=outside)
    assert (keep / "data.txt").read_text() == "mine"
    assert writer.commit(meta).num_rows == 3  # nothing was touched: the commit still works


def test_the_commit_threads_are_made_again_in_a_forked_child(tmp_path):
    code = textwrap.dedent(
        """
        import os, sys, threading, time
        from fused_celery.table import write
        def slow(x):
            time.sleep(0.05)
            return -x
        # every thread of the parent's executor started (and idle again)
        n = 2 * write.IO_THREADS
        assert write._parallel(slow, range(n)) == [-x for x in range(n)]
        pid = os.fork()
        if pid == 0:  # the child inherits the executor object but none of its threads
            got = []
            t = threading.Thread(target=lambda: got.append(write._parallel(slow, [1, 2, 3])))
            t.start()
            t.join(10)
            os._exit(0 if got == [[-1, -2, -3]] else 1)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


def test_empty_chunks_are_skipped_and_an_empty_table_commits(tmp_path):
    chunk = make_chunk(0, 0, 4, 0, 0)
    table = write_table(str(tmp_path / "a"), {"0": [chunk.iloc[:0], chunk, chunk.iloc[:0]]})
    assert [(c.chunk_id, c.num_rows) for c in table.chunk_metadata] == [(0, 4)]
    empty = write_table(str(tmp_path / "b"), {"0": [chunk.iloc[:0]]})
    assert (empty.num_rows, empty.num_files) == (0, 0)
    assert empty.column_names == ["id", "name", "value", "geometry"]
    assert len(read_bbox(str(tmp_path / "b"), (0, 0, 1, 1))) == 0


def test_writer_travels_as_json_between_processes(tmp_path):
    writer = TableWriter(str(tmp_path / "t"), run_id="job-7")
    clone = TableWriter.from_dict(json.loads(json.dumps(writer.to_dict())))
    meta = clone.write_file(3, [make_chunk(0, 0, 3, 0, 0)])
    assert writer.commit([m.model_dump() for m in meta]).files == ["3"]


# --- crash: a writer killed between data files and _sample ---------------------------------------


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests_dir!r})
    from table_samples import make_files
    from fused_celery.table.write import TableWriter

    url, mode = sys.argv[1], sys.argv[2]
    writer = TableWriter(url, run_id=mode)
    meta = []
    for fid, chunks in make_files(25).items():
        meta += writer.write_file(fid, chunks)
    print("WRITTEN", flush=True)
    if mode == "hang":
        time.sleep(120)
    writer.commit(meta)
    print("COMMITTED", flush=True)
    """
)


def test_writer_killed_before_sample_leaves_no_table_and_a_rerun_completes(root, tmp_path):
    url = storage.join(root, "killed")
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT.format(tests_dir=str(Path(__file__).parent)))
    proc = subprocess.Popen(
        [sys.executable, str(script), url, "hang"],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert proc.stdout.readline().strip() == "WRITTEN"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    staged = storage.list_files(url, recursive=True)
    assert any(p.endswith("0.parquet") for p in staged) and "_sample" not in staged
    with pytest.raises(IncompleteTableError):
        open_table(url)
    with pytest.raises(IncompleteTableError):
        get_chunk_from_table(url, "0", 0)
    rerun = subprocess.run(
        [sys.executable, str(script), url, "rerun"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert rerun.returncode == 0, rerun.stderr
    table = open_table(url)
    ids = get_chunk_from_table(url, None, None)["id"].tolist()
    assert table.num_rows == 100 and sorted(ids) == list(range(100))
    assert sorted(storage.list_files(url, recursive=True)) == ["0.parquet", "1.parquet", "_sample"]


# --- schemas and CRSs ----------------------------------------------------------------------------


def test_chunks_with_different_columns_and_types_share_one_file_schema(tmp_path):
    a = make_chunk(0, 0, 3, 0, 0)
    a["value"] = [1, 2, 3]  # int64 here, float64 in b
    b = make_chunk(1, 1, 2, 3, 1).assign(extra=["x", "y"])
    url = str(tmp_path / "t")
    table = write_table(url, {"0": [a, b]})
    assert table.column_names == ["id", "name", "value", "geometry", "extra"]
    first = get_chunk_from_table(url, "0", 0)
    assert first["value"].tolist() == [1.0, 2.0, 3.0] and first["extra"].isna().all()
    assert get_chunk_from_table(url, "0", 1)["extra"].tolist() == ["x", "y"]


def test_files_of_one_table_must_share_a_crs(tmp_path):
    chunk = make_chunk(0, 0, 3, 0, 0)
    with pytest.raises(ValueError, match="different CRSs"):
        write_table(str(tmp_path / "t"), {"0": [chunk], "1": [chunk.to_crs(3857)]})
    with pytest.raises(IncompleteTableError):
        open_table(str(tmp_path / "t"))
