"""Overwrite and failure safety of table writers (issue "Nothing lost, nothing leaked", 1).

``overwrite=True`` replaces only a table fused-celery committed (its ``_sample`` carries the
``fused-celery:writer`` key) or an empty/absent folder; anything else (a user's folder, a table of
another tool, the filesystem root, a home directory, a parent of the current directory, a bucket
root) is refused before any work, with nothing written. A failed or cancelled run's
:meth:`TableWriter.discard` leaves the location exactly as it was: folders the run created are
gone, an existing table or folder is untouched. Local disk and S3 (moto on loopback).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from table_samples import make_chunk, make_files

from fused_celery import storage
from fused_celery.errors import (
    TableExistsError,
    UnsafeLocationError,
    UnsafeOverwriteError,
)
from fused_celery.table.format import KEY_WRITER
from fused_celery.table.read import open_table
from fused_celery.table.write import TableWriter, write_table

pytest_plugins = ["moto_server"]


def snapshot(url: str) -> dict[str, bytes]:
    """Every file under ``url`` with its bytes (``{}`` when nothing is there)."""
    return {name: storage.read_bytes(storage.join(url, name))
            for name in storage.list_files(url, recursive=True)}  # fmt: skip


def user_folder(path: Path) -> dict[str, bytes]:
    """A user's data folder: top-level Parquet files, a ``_staging`` folder of theirs, a note."""
    path.mkdir(parents=True, exist_ok=True)
    make_chunk(0, 0, 5, 0, 0).to_parquet(path / "mine.parquet")
    (path / "0.parquet").write_bytes(b"PAR1 user bytes")
    (path / "_staging").mkdir(exist_ok=True)
    (path / "_staging" / "draft.txt").write_text("keep me")
    (path / "notes.md").write_text("my notes")
    return snapshot(str(path))


def foreign_table(url: str) -> dict[str, bytes]:
    """A table as another tool (e.g. the reference SDK) writes it: the same layout and ``fused:*``
    keys in ``_sample``, but no fused-celery writer key."""
    write_table(url, make_files(5))
    return make_foreign(url)


def make_foreign(url: str) -> dict[str, bytes]:
    """Strip the fused-celery writer key from the ``_sample`` of table ``url``."""
    sample_url = storage.join(url, "_sample")
    table = pq.read_table(io.BytesIO(storage.read_bytes(sample_url)))
    kv = dict(table.schema.metadata)
    assert KEY_WRITER in kv  # ours, before it is made foreign
    del kv[KEY_WRITER]
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(kv), sink)
    storage.write_bytes(sample_url, sink.getvalue())
    return snapshot(url)


# --- overwrite=True refuses what is not ours -----------------------------------------------------


def test_overwrite_refuses_a_user_folder_and_touches_nothing(tmp_path):
    before = user_folder(tmp_path / "data")
    with pytest.raises(UnsafeOverwriteError, match="not a table written by fused-celery") as info:
        TableWriter(str(tmp_path / "data"), overwrite=True)
    assert isinstance(info.value, TableExistsError)
    assert "mine.parquet" in str(info.value) and "another URL" in str(info.value)
    assert snapshot(str(tmp_path / "data")) == before  # no marker, nothing deleted


def test_overwrite_false_refuses_a_user_folder_that_has_a_staging_folder(tmp_path):
    # A "_staging" folder alone does not make a folder ours: commit would delete its *.parquet.
    before = user_folder(tmp_path / "data")
    with pytest.raises(TableExistsError, match="not a fused table"):
        TableWriter(str(tmp_path / "data"))
    assert snapshot(str(tmp_path / "data")) == before


def test_overwrite_refuses_a_table_written_by_another_tool(root):
    url = storage.join(root, "sdk_table")
    before = foreign_table(url)
    with pytest.raises(UnsafeOverwriteError, match="fused-celery:writer"):
        TableWriter(url, overwrite=True)
    with pytest.raises(TableExistsError, match="another tool"):
        TableWriter(url)
    assert snapshot(url) == before


def test_commit_refuses_when_the_table_became_foreign_meanwhile(tmp_path):
    url = str(tmp_path / "t")
    write_table(url, make_files(5))
    writer = TableWriter(url, overwrite=True, run_id="late")
    meta = writer.write_file("0", [make_chunk(0, 0, 3, 100, 1)])
    before = make_foreign(url)  # rewritten by another tool after the checks
    with pytest.raises(UnsafeOverwriteError):
        writer.commit(meta)
    assert snapshot(url) == before  # the foreign table untouched (our staging still there)
    writer.discard()
    assert not os.path.exists(os.path.join(url, "_staging"))


def test_commit_deletes_no_foreign_file_once_the_folder_is_no_longer_marked(tmp_path):
    url = tmp_path / "t"
    writer = TableWriter(str(url), run_id="r")
    meta = writer.write_file("0", [make_chunk(0, 0, 3, 0, 0)])
    (url / "_staging" / "_writing").unlink()  # someone else cleaned up meanwhile...
    (url / "theirs.parquet").write_bytes(b"PAR1 theirs")  # ...and put a file there
    with pytest.raises(UnsafeOverwriteError, match="theirs"):
        writer.commit(meta)
    assert (url / "theirs.parquet").read_bytes() == b"PAR1 theirs"
    assert not (url / "_sample").exists() and not (url / "0.parquet").exists()


def test_overwrite_replaces_our_table_an_empty_folder_and_an_absent_one(root, tmp_path):
    ours = storage.join(root, "ours")
    write_table(ours, make_files(5))
    assert write_table(ours, {"0": [make_chunk(0, 0, 3, 0, 0)]}, overwrite=True).num_rows == 3
    absent = storage.join(root, "absent", "deeper")
    assert write_table(absent, make_files(5), overwrite=True).num_rows == 20
    (tmp_path / "empty").mkdir()
    assert write_table(str(tmp_path / "empty"), make_files(5), overwrite=True).num_rows == 20


# --- locations that are never a table ------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [True, False])
def test_filesystem_root_home_and_parents_of_cwd_are_refused(
    tmp_path, monkeypatch, overwrite: bool
):
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    work = home / "projects" / "demo"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    (tmp_path / "link_to_home").symlink_to(home)
    for target, reason in [
        ("/", "filesystem root"),
        ("~", "home directory"),
        ("~/", "home directory"),
        (str(tmp_path / "link_to_home"), "home directory"),  # a symlink, resolved
        ("..", "parent of the current directory"),
        ("../..", "home directory"),
        (str(work / "sub" / ".." / ".."), "parent of the current directory"),
        ("file:///", "filesystem root"),
    ]:
        before = sorted(p.name for p in home.rglob("*"))
        with pytest.raises(UnsafeLocationError, match=reason) as info:
            TableWriter(target, overwrite=overwrite)
        assert "choose" in str(info.value)
        assert sorted(p.name for p in home.rglob("*")) == before, target
    # the current directory itself is not a parent: an empty one can hold a table
    assert TableWriter(".", overwrite=overwrite).url == str(work)


def test_other_users_home_directories_are_refused(tmp_path):
    import pwd

    homes = [p.pw_dir for p in pwd.getpwall() if p.pw_dir and os.path.isdir(p.pw_dir)]
    assert homes, "no home directory in the password database"
    with pytest.raises(UnsafeLocationError, match="home directory"):
        TableWriter(homes[0], overwrite=True)


@pytest.mark.parametrize("suffix", ["", "/"])
@pytest.mark.parametrize("overwrite", [True, False])
def test_bucket_root_is_refused(s3_bucket, suffix: str, overwrite: bool):
    storage.write_bytes(f"{s3_bucket}/someone/else.parquet", b"PAR1")
    with pytest.raises(UnsafeLocationError, match="root of bucket") as info:
        TableWriter(s3_bucket + suffix, overwrite=overwrite)
    assert "s3://" in str(info.value) and "choose" in str(info.value)
    assert storage.list_files(s3_bucket, recursive=True) == ["someone/else.parquet"]


def test_delete_prefix_refuses_protected_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "keep").write_text("x")
    with pytest.raises(storage.StorageError, match="home directory"):
        storage.delete_prefix("~")
    assert (tmp_path / "keep").exists()


# --- discard: a failed or cancelled run leaves the location as it was ----------------------------


def test_discard_of_a_first_run_leaves_no_folder_behind(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    url = str(base / "new" / "nested" / "table")  # base/new does not exist yet
    writer = TableWriter(url, run_id="job1")
    writer.write_file("0", [make_chunk(0, 0, 4, 0, 0)])
    assert (base / "new" / "nested" / "table" / "_staging").is_dir()
    writer.discard()
    assert list(base.iterdir()) == []  # not even an empty folder or _staging/


def test_discard_in_another_process_knows_what_the_run_created(tmp_path):
    url = str(tmp_path / "a" / "t")
    writer = TableWriter(url, run_id="job1")
    clone = TableWriter.from_dict(json.loads(json.dumps(writer.to_dict())))  # e.g. a worker
    clone.write_file("0", [make_chunk(0, 0, 4, 0, 0)])
    clone.discard()
    assert list(tmp_path.iterdir()) == []


def test_discard_keeps_an_existing_empty_folder(tmp_path):
    (tmp_path / "t").mkdir()
    writer = TableWriter(str(tmp_path / "t"), overwrite=True)
    writer.write_file("0", [make_chunk(0, 0, 4, 0, 0)])
    writer.discard()
    assert (tmp_path / "t").is_dir() and list((tmp_path / "t").iterdir()) == []


def test_discard_keeps_the_old_table_exactly(root):
    url = storage.join(root, "t")
    write_table(url, make_files(5))
    before = snapshot(url)
    writer = TableWriter(url, overwrite=True, run_id="job2")
    writer.write_file("0", [make_chunk(50, 50, 5, 1000, 9)])
    writer.discard()
    assert snapshot(url) == before
    assert open_table(url).num_rows == 20
    if not url.startswith("s3://"):
        assert sorted(os.listdir(url)) == ["0.parquet", "1.parquet", "_sample"]  # no _staging/


def test_discard_on_s3_leaves_no_object(s3_bucket):
    url = f"{s3_bucket}/tables/new"
    writer = TableWriter(url, run_id="job1")
    writer.write_file("0", [make_chunk(0, 0, 4, 0, 0)])
    assert storage.list_files(url, recursive=True)
    writer.discard()
    assert storage.list_files(s3_bucket, recursive=True) == []


def test_discard_keeps_an_unfinished_run_it_resumed(tmp_path):
    url = str(tmp_path / "t")
    crashed = TableWriter(url, run_id="job1")
    crashed.write_file("0", [make_chunk(0, 0, 4, 0, 0)])  # then the process died
    before = snapshot(url)
    second = TableWriter(url, run_id="job2")  # resumes: the folder is an unfinished table of ours
    second.write_file("1", [make_chunk(5, 5, 4, 10, 1)])
    second.discard()
    assert snapshot(url) == before  # job1's staging and the marker, byte for byte


def test_abort_is_discard(tmp_path):
    writer = TableWriter(str(tmp_path / "t"))
    writer.abort()
    assert not (tmp_path / "t").exists()
