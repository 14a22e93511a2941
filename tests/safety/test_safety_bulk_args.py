"""Bulk data out of Redis (issue "Nothing lost, nothing leaked", 2): constant keyword arguments
are stored once per pool; arguments over ``large_argument_bytes`` go to storage by reference;
arguments over ``max_argument_bytes`` are refused before anything is submitted; a pool's blobs
go with ``JobPool.delete()`` and, once its record expired, with the workers' sweep."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import redis

import fused_celery as fused
from fused_celery import blobs
from fused_celery.errors import ArgumentTooLargeError, PoolNotFoundError
from fused_celery.options import options
from fused_celery.state import blob_sweep, keys


@fused.udf
def digest(data, salt: int = 0):
    import hashlib

    payload = data if isinstance(data, bytes) else data.encode()
    return hashlib.sha256(payload).hexdigest() + f":{salt}"


@fused.udf
def with_constant(i: int, big: str = ""):
    return len(big) + i


@fused.udf
def big_result(i: int, pad: bytes = b""):
    return bytes(5000) + bytes([i]) + pad[:1]


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "storage"
    monkeypatch.setattr(options, "storage_root", str(path))
    monkeypatch.setattr(options, "cache_dir", str(tmp_path / "cache"))
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    return path


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def _workers(celery_workers, root: Path, **env: str):
    return celery_workers(n=1, concurrency=2, env={"FUSED_CELERY_STORAGE_ROOT": str(root), **env})


@pytest.mark.slow
def test_a_1mb_constant_for_100_entries_grows_redis_by_less_than_2mb(
    fused_options, celery_workers, root: Path
) -> None:
    _workers(celery_workers, root)
    client = redis.Redis.from_url(options.broker_url)
    big = "x" * 1_000_000
    warm = with_constant.map([0], engine="remote", cache=False, big="y")
    assert warm.results() == [1]
    before = client.info("memory")["used_memory"]
    pool = with_constant.map(list(range(100)), engine="remote", cache=False, big=big)
    assert pool.results() == [1_000_000 + i for i in range(100)]
    grown = client.info("memory")["used_memory"] - before
    print(f"Redis grew by {grown / 1e6:.2f} MB for 100 entries sharing a 1 MB constant")
    assert grown < 2_000_000
    assert len(_files(root / "args" / pool.id)) == 1  # the constant, once


@pytest.mark.slow
def test_a_200kb_argument_goes_by_reference_and_arrives_intact(
    fused_options, celery_workers, root: Path
) -> None:
    _workers(celery_workers, root)
    values = [os.urandom(200_000), os.urandom(200_000)]
    expected = [hashlib.sha256(v).hexdigest() + ":0" for v in values]
    pool = digest.map([{"data": v} for v in values], engine="remote", cache=False)
    assert pool.results() == expected
    client = redis.Redis.from_url(options.broker_url)
    stored = client.lrange(keys.pool_key(pool.id, "args"), 0, -1)
    assert all(len(s) < 1000 and b'"blob"' in s for s in stored)
    assert len(_files(root / "args" / pool.id)) == 2
    # a 200 KB constant too, and the local engine gets the same values
    pool = digest.map([{"data": values[0]}], engine="remote", cache=False, salt=1)
    assert pool.results() == [expected[0][:-1] + "1"]
    local = digest.map([{"data": v} for v in values], engine="local", cache=False)
    assert local.results() == expected


@pytest.mark.parametrize("constant", [False, True], ids=["argument", "constant"])
def test_an_argument_over_the_hard_limit_is_refused_and_nothing_is_submitted(
    fused_options, root: Path, monkeypatch: pytest.MonkeyPatch, constant: bool
) -> None:
    monkeypatch.setattr(options, "max_argument_bytes", 150_000)
    client = redis.Redis.from_url(options.broker_url)
    data = "z" * 200_000
    with pytest.raises(ArgumentTooLargeError) as info:
        if constant:
            digest.map([{"salt": 1}, {"salt": 2}], engine="remote", data=data)
        else:
            digest.map([{"data": "small"}, {"data": data}], engine="remote")
    message = str(info.value)
    assert "'data'" in message and "200,008 bytes" in message and "150,000" in message
    assert "max_argument_bytes" in message and "FUSED_CELERY_MAX_ARGUMENT_BYTES" in message
    assert ("constant" in message) == constant and ("entry 1" in message) != constant
    assert client.keys("*") == []  # no record, no message
    assert not root.exists() or _files(root) == []


@pytest.mark.slow
def test_delete_removes_the_record_and_every_blob_of_the_pool(
    fused_options, celery_workers, root: Path
) -> None:
    _workers(celery_workers, root, FUSED_CELERY_LARGE_RESULT_BYTES="1000")
    pad = os.urandom(100_000)
    pool = big_result.map([0, 1], engine="remote", cache=False, pad=pad)
    assert [len(r) for r in pool.results()] == [5002, 5002]
    other = big_result.map([2], engine="remote", cache=False, pad=pad)
    other.wait()
    assert _files(root / "results" / pool.id) and _files(root / "args" / pool.id)
    pool.delete()
    assert not (root / "results" / pool.id).exists() and not (root / "args" / pool.id).exists()
    with pytest.raises(PoolNotFoundError):
        fused.JobPool.attach(pool.id)
    assert _files(root / "results" / other.id) and _files(root / "args" / other.id)
    assert len(other.results()[0]) == 5002


def _blob(root: Path, kind: str, pool_id: str, name: str, age: float) -> Path:
    path = root / kind / pool_id / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"payload")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_the_sweep_deletes_only_blobs_of_expired_pools(
    redis_url: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(options, "result_expires", 3600)
    client = redis.Redis.from_url(redis_url)
    live, expired, recent = "a" * 16, "b" * 16, "c" * 16
    client.hset(keys.pool_key(live, "meta"), "n", "1")
    sha = "d" * 64
    keep = [
        _blob(root, "results", live, "0-a1.bin", 7200),  # record still there
        _blob(root, "args", live, f"{sha}.bin", 7200),
        _blob(root, "results", recent, "0-a1.bin", 60),  # no record, but younger than the TTL
        _blob(root, "results", expired, "notes.txt", 7200),  # not a name this project writes
        _blob(root, "results", "not-a-pool-id", "0-a1.bin", 7200),  # not a pool folder
        _blob(root, "tables", expired, "0-a1.bin", 7200),  # not a blob folder
    ]
    gone = [
        _blob(root, "results", expired, "0-a1.bin", 7200),
        _blob(root, "results", expired, "3-a2.bin", 7200),
        _blob(root, "args", expired, f"{sha}.bin", 7200),
    ]
    deleted = blob_sweep.sweep_once(redis_url, str(root))
    assert sorted(deleted or []) == sorted(str(p) for p in gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    assert not (root / "args" / expired).exists()  # its emptied folder too
    assert 0 < client.ttl(keys.BLOB_SWEEP_GUARD) <= blob_sweep.SWEEP_SECONDS
    again = _blob(root, "results", expired, "5-a1.bin", 7200)
    assert blob_sweep.sweep_once(redis_url, str(root)) is None  # at most once a minute
    assert again.exists()


@pytest.mark.slow
def test_workers_sweep_expired_pools_blobs(fused_options, celery_workers, root: Path) -> None:
    orphan = _blob(root, "results", "e" * 16, "0-a1.bin", options.result_expires + 60)
    _workers(celery_workers, root)
    assert digest.map(["a"], engine="remote", cache=False).results()[0].endswith(":0")
    deadline = time.monotonic() + 30
    while orphan.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not orphan.exists()


def test_blobs_of_arguments_are_named_by_content(tmp_path: Path) -> None:
    folder = str(tmp_path / "args" / ("f" * 16))
    envelope = {"bytes": "AAEC"}
    ref = blobs.store_argument(envelope, folder)
    assert ref == blobs.store_argument(dict(envelope), folder)
    assert blobs.resolve_kwargs({"x": ref, "y": {"j": 1}}, folder) == {"x": envelope, "y": {"j": 1}}
    (tmp_path / "args" / ("f" * 16) / f"{ref['blob']['sha256']}.bin").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="corrupt"):
        blobs.resolve_kwargs({"x": ref}, folder)
