"""Storage by URL: parsing, local disk and S3 (moto on loopback), atomic writes, bad URLs."""

from __future__ import annotations

import os

import pytest

from fused_celery import storage
from fused_celery.errors import BucketNotFoundError, StorageError, UnsupportedURLError
from fused_celery.options import options

pytest_plugins = ["moto_server"]


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path) -> str:
    """A writable folder URL: a temp dir, or a prefix in a fresh moto bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"


# --- parsing -----------------------------------------------------------------------------------


def test_parse_local_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.parse("rel/x").url == str(tmp_path / "rel" / "x")
    assert storage.parse(f"file://{tmp_path}/a/").url == str(tmp_path / "a")
    loc = storage.parse(str(tmp_path / "a" / ".." / "b"))
    assert (loc.scheme, loc.path, loc.bucket) == ("file", str(tmp_path / "b"), None)
    assert storage.parse("~/x").url == os.path.expanduser("~/x")


def test_parse_s3():
    loc = storage.parse("s3://bucket/some/prefix/")
    assert (loc.scheme, loc.bucket, loc.path, loc.url) == (
        "s3",
        "bucket",
        "bucket/some/prefix",
        "s3://bucket/some/prefix",
    )
    assert storage.join("s3://bucket/p", "a", "b.parquet") == "s3://bucket/p/a/b.parquet"


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("gs://bucket/x", "unsupported URL scheme 'gs'"),
        ("http://example.com/x", "unsupported URL scheme 'http'"),
        ("hdfs:///x", "unsupported URL scheme 'hdfs'"),
        ("s3://", "has no bucket"),
        ("s3://bucket/a/../b", "'..'"),
        ("file://host/x", "names a host"),
        ("", "empty storage URL"),
    ],
)
def test_bad_urls_are_rejected_with_the_fix(url, fragment):
    with pytest.raises(UnsupportedURLError) as info:
        storage.parse(url)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_scheme_fails_in_every_operation():
    for op in (storage.exists, storage.read_bytes, storage.list_files, storage.delete_prefix):
        with pytest.raises(UnsupportedURLError, match="s3://bucket/prefix"):
            op("gcs://b/x")


# --- operations on both backends ---------------------------------------------------------------


def test_write_read_list_exists_delete(root):
    a, b = storage.join(root, "a.bin"), storage.join(root, "sub", "b.bin")
    assert not storage.exists(root)
    assert storage.list_files(root) == []
    storage.write_bytes(a, b"hello")
    storage.write_bytes(b, b"world")
    storage.write_bytes(a, b"hello again")  # replaces
    assert storage.read_bytes(a) == b"hello again"
    assert storage.exists(root) and storage.is_file(a) and not storage.is_file(root)
    assert storage.list_files(root) == ["a.bin"]
    assert storage.list_files(root, recursive=True) == ["a.bin", "sub/b.bin"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "missing"))
    storage.move(b, storage.join(root, "c.bin"))
    assert storage.list_files(root, recursive=True) == ["a.bin", "c.bin"]
    storage.delete_file(a)
    storage.delete_file(a)  # missing_ok
    with pytest.raises(FileNotFoundError):
        storage.delete_file(a, missing_ok=False)
    storage.delete_prefix(root)
    assert not storage.exists(root)
    assert storage.list_files(root, recursive=True) == []
    storage.delete_prefix(root)  # nothing to delete is fine


def test_copy_within_and_across_filesystems(root, tmp_path):
    src, dst = storage.join(root, "a.bin"), storage.join(root, "sub", "copy.bin")
    storage.write_bytes(src, b"first")
    storage.write_bytes(dst, b"old")
    storage.copy(src, dst)  # replaces, the source stays
    assert storage.read_bytes(dst) == b"first" and storage.read_bytes(src) == b"first"
    if not root.startswith("s3://"):  # a hard link: no bytes copied
        assert os.stat(src).st_ino == os.stat(dst).st_ino
    storage.write_bytes(src, b"second")  # writes replace files: the copy keeps its bytes
    assert storage.read_bytes(dst) == b"first"
    other = str(tmp_path / "elsewhere" / "b.bin")  # local to S3 and local to local
    storage.write_bytes(other, os.urandom(3 << 20))
    storage.copy(other, storage.join(root, "big.bin"))
    assert storage.read_bytes(storage.join(root, "big.bin")) == storage.read_bytes(other)
    assert storage.list_files(root, recursive=True) == ["a.bin", "big.bin", "sub/copy.bin"]
    with pytest.raises(FileNotFoundError):
        storage.copy(storage.join(root, "missing"), storage.join(root, "x"))
    assert "x" not in storage.list_files(root)


def test_atomic_output_leaves_nothing_when_the_writer_fails(root):
    url = storage.join(root, "x.bin")
    storage.write_bytes(url, b"old")
    with pytest.raises(RuntimeError), storage.atomic_output(url) as out:
        out.write(b"half of the new")
        raise RuntimeError("writer crashed")
    assert storage.read_bytes(url) == b"old"
    assert storage.list_files(root) == ["x.bin"]
    if not root.startswith("s3://"):
        assert os.listdir(root) == ["x.bin"]  # the temporary file is gone too


def test_open_input_file_reads_with_or_without_a_memory_map(root):
    url = storage.join(root, "m.bin")
    storage.write_bytes(url, b"0123456789", durable=False)
    for mapped in (False, True):
        with storage.open_input_file(url, memory_map=mapped) as f:
            assert f.size() == 10 and f.read_at(4, 3) == b"3456"
    with pytest.raises(FileNotFoundError):
        storage.open_input_file(storage.join(root, "missing"), memory_map=True)


def test_local_listing_skips_unfinished_temporary_files(tmp_path):
    (tmp_path / ".x.parquet.tmp-abc").write_bytes(b"partial")
    (tmp_path / "y.parquet").write_bytes(b"whole")
    assert storage.list_files(str(tmp_path)) == ["y.parquet"]


def test_delete_prefix_refuses_roots(s3_bucket):
    with pytest.raises(StorageError, match="whole bucket"):
        storage.delete_prefix(s3_bucket)
    with pytest.raises(StorageError, match="filesystem root"):
        storage.delete_prefix("/")


# --- S3 specifics --------------------------------------------------------------------------------


def test_missing_bucket_is_named_with_the_fix(s3_options):
    url = "s3://no-such-bucket-fused/x/y.bin"
    assert not storage.bucket_exists(url)
    for call in (
        lambda: storage.write_bytes(url, b"x"),
        lambda: storage.read_bytes(url),
        lambda: storage.list_files("s3://no-such-bucket-fused/x"),
        lambda: storage.check_bucket(url),
    ):
        with pytest.raises(BucketNotFoundError) as info:
            call()
        message = str(info.value)
        assert "'no-such-bucket-fused' does not exist" in message
        assert options.s3_endpoint_url in message and "create it" in message


def test_s3_write_is_visible_only_when_whole(s3_bucket):
    url = f"{s3_bucket}/obj.bin"
    with pytest.raises(ValueError), storage.atomic_output(url) as out:
        out.write(b"x" * 1000)
        raise ValueError("boom")
    assert not storage.exists(url)
    payload = os.urandom(12 * 1024 * 1024)  # over the 10 MiB part size: multipart upload
    storage.write_bytes(url, payload)
    assert storage.read_bytes(url) == payload


def test_options_select_the_s3_endpoint(s3_bucket, moto_server):
    fs, path = storage.resolve(f"{s3_bucket}/k")
    assert path == s3_bucket[len("s3://") :] + "/k"
    assert type(fs).__name__ == "S3FileSystem"
    storage.write_bytes(f"{s3_bucket}/k", b"v")
    # A client built independently against the same endpoint sees the object.
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    body = client.get_object(Bucket=s3_bucket[len("s3://") :], Key="k")["Body"].read()
    assert body == b"v"
