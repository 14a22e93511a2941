"""A corpus of bad inputs (issue "Nothing lost, nothing leaked", the suite): the map API,
ingest, tables, options and the command line. Each case must raise a typed error of
:mod:`fused_celery.errors` whose message names the problem (and the fix), and leave the folder
it ran against exactly as it was. No cluster: the map cases run on the local engine (or fail
before reaching a broker), the CLI cases fail before starting anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import fused_celery as fused
from fused_celery import errors
from fused_celery.options import Options, options


@fused.udf
def add(x: int, y: int = 1):
    return x + y


@fused.udf
def needs_two(a, b):
    return a + b


class Opaque:
    """A value the codec cannot encode."""


@dataclass(frozen=True)
class Case:
    """One bad input: ``call(work)`` must raise ``error`` with every one of ``words`` (case
    insensitive) in its message."""

    id: str
    call: Callable[[Path], Any]
    error: type[BaseException]
    words: tuple[str, ...]


def _gen():
    yield 1


def _map(*args: Any, **kw: Any) -> Callable[[Path], Any]:
    return lambda work: add.map(*args, **kw)


def _ingest(input: Any, output: str | None = "out", **kw: Any) -> Callable[[Path], Any]:
    def run(work: Path) -> Any:
        source = str(work / input) if isinstance(input, str) and input else input
        step = fused.ingest(source, **kw)
        return step.run_local(str(work / output) if output else None)

    return run


def _cache(**settings: Any) -> Callable[[Path], Any]:
    def run(work: Path) -> Any:
        @fused.cache(**settings)
        def cached(x):
            return x

        return cached(1)

    return run


def _table(fn: str, name: str, *args: Any, **kw: Any) -> Callable[[Path], Any]:
    def run(work: Path) -> Any:
        target = name if "://" in name else str(work / name)
        return getattr(fused, fn)(target, *args, **kw)

    return run


def _env(name: str, value: str) -> Callable[[Path], Any]:
    def run(work: Path) -> Any:
        os.environ[name] = value
        try:
            return Options()
        finally:
            del os.environ[name]

    return run


def _assign(field: str, value: Any) -> Callable[[Path], Any]:
    return lambda work: setattr(options, field, value)


CallError = errors.CallArgumentError
StepError = errors.StepConfigError

MAP_CASES = [
    Case("map-generator", _map(_gen()), CallError, ("generator", "list(")),
    Case("map-string", _map("1,2,3"), CallError, ("string", "list")),
    Case("map-int", _map(5), CallError, ("arg_list must be", "int")),
    Case("map-dict", _map({"x": 1}), CallError, ("arg_list must be", "dict")),
    Case("map-empty", _map([]), CallError, ("empty", "at least one")),
    Case("map-mixed", _map([1, {"x": 2}]), CallError, ("mixes", "one form")),
    Case("map-unknown-arg", _map([{"z": 1}]), CallError, ("unexpected", "'z'", "takes")),
    Case(
        "map-missing-arg",
        lambda work: needs_two.map([{"a": 1}]),
        CallError,
        ("missing required", "'b'"),
    ),
    Case("map-arg-and-constant", _map([{"x": 1, "y": 2}], y=3), CallError, ("both", "'y'")),
    Case("map-engine-typo", _map([1], engine="locl"), errors.InstanceTypeError, ("locl", "local")),
    Case(
        "map-engine-case",
        _map([1], engine="Local"),
        errors.InstanceTypeError,
        ("'Local'", "remote"),
    ),
    Case(
        "map-instance-type",
        _map([1], instance_type="t2.micro"),
        errors.InstanceTypeError,
        ("t2.micro", "m5.large"),
    ),
    Case(
        "map-instance-type-local",
        _map([1], engine="local", instance_type="m5.large"),
        CallError,
        ("cannot be combined", "local"),
    ),
    Case("map-max-workers-0", _map([1], max_workers=0), CallError, ("max_workers", "positive")),
    Case("map-max-workers-neg", _map([1], max_workers=-2), CallError, ("max_workers", "-2")),
    Case("map-max-workers-str", _map([1], max_workers="2"), CallError, ("max_workers", "'2'")),
    Case("map-max-workers-float", _map([1], max_workers=1.5), CallError, ("max_workers", "1.5")),
    Case("map-max-workers-bool", _map([1], max_workers=True), CallError, ("max_workers", "true")),
    Case(
        "map-processes-0",
        _map([1], n_processes_per_worker=0),
        CallError,
        ("n_processes_per_worker", "positive"),
    ),
    Case(
        "map-processes-str",
        _map([1], n_processes_per_worker="4"),
        CallError,
        ("n_processes_per_worker", "'4'"),
    ),
    Case(
        "map-processes-conflict",
        _map([1], n_processes_per_worker=2, worker_concurrency=3),
        CallError,
        ("same option", "give one"),
    ),
    Case("map-retry-neg", _map([1], max_retry=-1), CallError, ("max_retry", ">= 0")),
    Case("map-retry-str", _map([1], max_retry="2"), CallError, ("max_retry", "'2'")),
    Case(
        "map-cache-age-words",
        _map([1], cache_max_age="ten minutes"),
        CallError,
        ("cache_max_age", "'10m'"),
    ),
    Case("map-cache-age-neg", _map([1], cache_max_age=-5), CallError, ("cache_max_age", ">= 0")),
    Case("map-cache-age-bool", _map([1], cache_max_age=True), CallError, ("cache_max_age", "30s")),
    Case(
        "map-unencodable-arg",
        _map([{"x": Opaque()}]),
        errors.UdfArgumentError,
        ("argument 'x'", "opaque"),
    ),
    Case(
        "map-unencodable-constant",
        _map([1], y=Opaque()),
        errors.UdfArgumentError,
        ("constant keyword argument 'y'", "opaque"),
    ),
    Case(
        "call-unexpected-kwarg",
        lambda work: add(1, z=2, engine="local"),
        CallError,
        ("unexpected", "'z'"),
    ),
    Case(
        "call-too-many-positional",
        lambda work: add(1, 2, 3, engine="local"),
        CallError,
        ("positional", "got 3"),
    ),
    Case("run-not-a-udf", lambda work: fused.run(len, 1), CallError, ("@fused.udf", "builtin")),
    Case(
        "map-remote-no-broker",
        _map([1], engine="remote"),
        errors.BrokerUnavailableError,
        ("no broker", "FUSED_CELERY_BROKER_URL"),
    ),
    Case(
        "attach-no-broker",
        lambda work: fused.JobPool.attach("0123456789abcdef"),
        errors.BrokerUnavailableError,
        ("broker", "FUSED_CELERY_BROKER_URL"),
    ),
    Case("cache-age-words", _cache(cache_max_age="soon"), CallError, ("cache_max_age", "'10m'")),
    Case("cache-storage", _cache(cache_storage="disk"), CallError, ("cache_storage", "'local'")),
    Case(
        "cache-folder-up", _cache(cache_folder_path="../x"), CallError, ("cache_folder_path", "..")
    ),
]

INGEST_CASES = [
    Case("ingest-missing-file", _ingest("nope.parquet"), errors.InputNotFoundError, ("nope",)),
    Case(
        "ingest-unsupported-format",
        _ingest("notes.xyz"),
        errors.UnsupportedInputError,
        ("notes.xyz", "parquet"),
    ),
    Case("ingest-input-int", _ingest(3), StepError, ("input = 3", "path")),
    Case("ingest-input-empty", _ingest(""), StepError, ("input", "empty")),
    Case("ingest-input-empty-list", _ingest([]), StepError, ("input", "one or more")),
    Case(
        "ingest-method",
        _ingest("points.csv", partitioning_method="hex"),
        StepError,
        ("partitioning_method = 'hex'", "'rows'"),
    ),
    Case(
        "ingest-target-chunks-0",
        _ingest("points.csv", target_num_chunks=0),
        StepError,
        ("target_num_chunks = 0", "greater than or equal to 1"),
    ),
    Case(
        "ingest-max-per-chunk-neg",
        _ingest("points.csv", partitioning_maximum_per_chunk=-1),
        StepError,
        ("partitioning_maximum_per_chunk", "> 0"),
    ),
    Case(
        "ingest-max-per-file-inf",
        _ingest("points.csv", partitioning_maximum_per_file=float("inf")),
        StepError,
        ("partitioning_maximum_per_file", "finite"),
    ),
    Case(
        "ingest-width-ratio-0",
        _ingest("points.csv", partitioning_max_width_ratio=0),
        StepError,
        ("partitioning_max_width_ratio", "> 0"),
    ),
    Case(
        "ingest-lonlat-one-col",
        _ingest("points.csv", lonlat_cols=("lon",)),
        StepError,
        ("lonlat_cols",),
    ),
    Case(
        "ingest-lonlat-missing-cols",
        _ingest("points.csv", lonlat_cols=("lng", "lt")),
        errors.IngestInputError,
        ("lng", "lon"),
    ),
    Case("ingest-no-geometry", _ingest("plain.csv"), errors.IngestInputError, ("lonlat_cols",)),
    Case("ingest-empty-csv", _ingest("empty.csv"), errors.IngestInputError, ("empty.csv",)),
    Case(
        "ingest-subdivide",
        _ingest("points.csv", subdivide_start=1.0, subdivide_stop=2.0),
        StepError,
        ("subdivide_start", "subdivide_stop"),
    ),
    Case(
        "ingest-load-and-remove",
        _ingest("points.csv", load_columns=["a"], remove_cols=["a"]),
        StepError,
        ("load_columns", "remove_cols"),
    ),
    Case("ingest-unknown-option", _ingest("points.csv", chunks=4), StepError, ("chunks = 4",)),
    Case(
        "ingest-overwrite-str",
        _ingest("points.csv", overwrite="yes"),
        StepError,
        ("overwrite = 'yes'", "boolean"),
    ),
    Case("ingest-no-output", _ingest("points.csv", None), StepError, ("no output", "set_output")),
    Case(
        "ingest-to-root",
        lambda work: fused.ingest(str(work / "points.csv")).run_local("/"),
        errors.UnsafeLocationError,
        ("root",),
    ),
    Case(
        "ingest-to-home",
        lambda work: fused.ingest(str(work / "points.csv")).run_local("~"),
        errors.UnsafeLocationError,
        ("home",),
    ),
    Case(
        "ingest-overwrite-user-folder",
        _ingest("points.csv", "mine", overwrite=True),
        errors.UnsafeOverwriteError,
        ("mine", "notes.txt"),
    ),
    Case(
        "ingest-existing-table",
        _ingest("points.csv", "table"),
        errors.TableExistsError,
        ("overwrite",),
    ),
    Case(
        "ingest-bad-instance-type",
        lambda work: fused.ingest(str(work / "points.csv")).run_remote(
            str(work / "out"), instance_type="t2.micro"
        ),
        errors.InstanceTypeError,
        ("t2.micro", "m5.large"),
    ),
]

TABLE_CASES = [
    Case("table-missing", _table("open_table", "nothing"), errors.TableNotFoundError, ("nothing",)),
    Case(
        "table-incomplete",
        _table("open_table", "incomplete"),
        errors.IncompleteTableError,
        ("_sample", "rerun"),
    ),
    Case(
        "table-corrupt-sample",
        _table("open_table", "corrupt"),
        errors.StorageError,
        ("_sample",),
    ),
    Case(
        "table-foreign-sample",
        _table("open_table", "foreign"),
        errors.TableFormatError,
        ("_sample", "fused"),
    ),
    Case(
        "table-metadata-missing",
        _table("get_chunks_metadata", "nothing"),
        errors.TableNotFoundError,
        ("nothing",),
    ),
    Case(
        "table-bad-scheme",
        _table("open_table", "ftp://host/table"),
        errors.UnsupportedURLError,
        ("ftp", "s3://"),
    ),
    Case(
        "chunk-bad-file",
        _table("get_chunk_from_table", "table", "7", 0),
        errors.ChunkNotFoundError,
        ("'7'", "0"),
    ),
    Case(
        "chunk-bad-chunk",
        _table("get_chunk_from_table", "table", "0", 9),
        errors.ChunkNotFoundError,
        ("9",),
    ),
    Case(
        "chunk-file-id-escape",
        _table("get_chunk_from_table", "table", "../x", 0),
        errors.ChunkNotFoundError,
        ("'../x'", "'0'"),
    ),
    Case(
        "chunk-corrupt-file",
        _table("get_chunk_from_table", "truncated", "0", 0),
        errors.CorruptFileError,
        ("0.parquet",),
    ),
    Case(
        "chunk-missing-column",
        _table("get_chunk_from_table", "table", "0", 0, columns=["nope"]),
        errors.ColumnNotFoundError,
        ("nope", "geometry"),
    ),
]

OPTION_CASES = [
    Case(
        "env-visibility-abc",
        _env("FUSED_CELERY_VISIBILITY_TIMEOUT", "abc"),
        errors.OptionsError,
        ("FUSED_CELERY_VISIBILITY_TIMEOUT", "'abc'", "integer"),
    ),
    Case(
        "env-visibility-0",
        _env("FUSED_CELERY_VISIBILITY_TIMEOUT", "0"),
        errors.OptionsError,
        ("FUSED_CELERY_VISIBILITY_TIMEOUT", "positive"),
    ),
    Case(
        "env-engine",
        _env("FUSED_CELERY_DEFAULT_ENGINE", "gpu"),
        errors.OptionsError,
        ("FUSED_CELERY_DEFAULT_ENGINE", "'local'"),
    ),
    Case(
        "env-tqdm",
        _env("FUSED_CELERY_SHOW__ENABLE_TQDM", "maybe"),
        errors.OptionsError,
        ("FUSED_CELERY_SHOW__ENABLE_TQDM", "boolean"),
    ),
    Case(
        "env-slice-rows-0",
        _env("FUSED_CELERY_INGEST_SLICE_ROWS", "0"),
        errors.OptionsError,
        ("FUSED_CELERY_INGEST_SLICE_ROWS", "greater than"),
    ),
    Case(
        "env-time-limit",
        _env("FUSED_CELERY_TASK_TIME_LIMIT", "fast"),
        errors.OptionsError,
        ("FUSED_CELERY_TASK_TIME_LIMIT", "number"),
    ),
    Case(
        "env-preload-not-json",
        _env("FUSED_CELERY_WORKER_PRELOAD", "pandas,shapely"),
        errors.OptionsError,
        ("FUSED_CELERY_WORKER_PRELOAD", "json"),
    ),
    Case(
        "env-large-argument-bytes",
        _env("FUSED_CELERY_LARGE_ARGUMENT_BYTES", "-1"),
        errors.OptionsError,
        ("FUSED_CELERY_LARGE_ARGUMENT_BYTES",),
    ),
    Case(
        "env-poll-interval",
        _env("FUSED_CELERY_POLL_INTERVAL", "often"),
        errors.OptionsError,
        ("FUSED_CELERY_POLL_INTERVAL", "'often'"),
    ),
    Case(
        "set-option",
        _assign("max_argument_bytes", "big"),
        errors.OptionsError,
        ("max_argument_bytes", "'big'"),
    ),
    Case(
        "set-show-option",
        lambda work: setattr(options.show, "enable_tqdm", "maybe"),
        errors.OptionsError,
        ("enable_tqdm", "boolean"),
    ),
]

CASES = MAP_CASES + INGEST_CASES + TABLE_CASES + OPTION_CASES


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_dir()
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with inputs, a committed table and tables broken in every way."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    from fused_celery.table.write import write_table

    root = tmp_path_factory.mktemp("corpus")
    pd.DataFrame({"lon": [0.0, 1.0, 2.0], "lat": [0.0, 1.0, 2.0], "v": [1, 2, 3]}).to_csv(
        root / "points.csv", index=False
    )
    pd.DataFrame({"a": [1, 2], "b": [3, 4]}).to_csv(root / "plain.csv", index=False)
    (root / "empty.csv").write_text("lon,lat\n")
    (root / "notes.xyz").write_text("not geodata")
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("a user's file")
    gdf = gpd.GeoDataFrame(
        {"v": [1, 2, 3]}, geometry=shapely.points([0, 1, 2], [0, 1, 2]), crs="EPSG:4326"
    )
    write_table(str(root / "table"), gdf)
    for name in ("incomplete", "corrupt", "foreign", "truncated"):
        shutil.copytree(root / "table", root / name)
    (root / "incomplete" / "_sample").unlink()
    (root / "corrupt" / "_sample").write_bytes(b"PAR1 garbage")
    pd.DataFrame({"x": [1]}).to_parquet(root / "foreign" / "_sample")
    data = root / "truncated" / "0.parquet"
    data.write_bytes(data.read_bytes()[:100])
    return root


@pytest.fixture(autouse=True)
def _local(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "broker_url", None)
    monkeypatch.setattr(options, "result_backend", None)
    monkeypatch.setattr(options, "default_engine", None)
    monkeypatch.setattr(options, "cache_dir", str(work.parent / "cache"))
    monkeypatch.setattr(options, "storage_root", str(work.parent / "storage"))
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    monkeypatch.chdir(work)


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) + len(CLI_CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_a_typed_error_and_writes_nothing(case: Case, work: Path) -> None:
    before = _tree(work)
    with pytest.raises(case.error) as info:
        case.call(work)
    err = info.value
    assert isinstance(err, errors.FusedError), f"{type(err).__name__} is not a typed error"
    message = str(err)
    for word in case.words:
        assert word.lower() in message.lower(), f"{word!r} not in: {message}"
    assert _tree(work) == before


# --- the command line -----------------------------------------------------------------------

CLI_CASES = [
    ("no-command", [], {}, ("command",)),
    ("unknown-command", ["start"], {}, ("'start'", "up")),
    ("unknown-flag", ["worker", "--turbo"], {}, ("--turbo",)),
    ("concurrency-not-int", ["worker", "--concurrency", "many"], {}, ("--concurrency", "'many'")),
    ("instance-type", ["worker", "--instance-type", "t2.micro"], {}, ("t2.micro", "m5.large")),
    ("unknown-queue", ["worker", "--queues", "gpu"], {}, ("'gpu'", "fused")),
    ("demo-entries-0", ["demo", "--entries", "0"], {}, ("--entries", "at least 1")),
    ("port-not-int", ["flower", "--port", "http"], {}, ("--port", "'http'")),
    (
        "broker-not-redis",
        ["worker"],
        {"FUSED_CELERY_BROKER_URL": "http://127.0.0.1:1/0"},
        ("http://127.0.0.1:1/0", "redis://"),
    ),
    (
        "broker-bad-option",
        ["worker"],
        {"FUSED_CELERY_VISIBILITY_TIMEOUT": "soon"},
        ("FUSED_CELERY_VISIBILITY_TIMEOUT", "'soon'"),
    ),
    (
        "broker-password-masked",
        ["worker", "--wait-for-broker", "0"],
        {"FUSED_CELERY_BROKER_URL": "redis://:s3cret-pw@127.0.0.1:1/0"},
        ("no redis answers", "***"),
    ),
    (
        "signing-in-part",
        ["worker"],
        {"FUSED_CELERY_SECURITY_KEY": "/nonexistent/key.pem"},
        ("security_certificate", "FUSED_CELERY_SECURITY_CERTIFICATE"),
    ),
]


@pytest.mark.parametrize(
    ("args", "env", "words"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_bad_cli_input_exits_2_with_one_line(
    args: list[str], env: dict[str, str], words: tuple[str, ...], work: Path, clean_env
) -> None:
    before = _tree(work)
    run = subprocess.run(
        [sys.executable, "-m", "fused_celery.cli", *args],
        cwd=work,
        env={**clean_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert "Traceback" not in out, out
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in: {lines[0]}"
    assert "s3cret-pw" not in out
    assert _tree(work) == before
