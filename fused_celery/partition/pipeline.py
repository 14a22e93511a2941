"""An ingest on the cluster: the stages of :mod:`.stages` as Celery chords, tracked by a job record.

``submit_ingest`` (client) checks the output, writes an in-memory input to storage, creates the
job record (:class:`~fused_celery.state.job_record.JobRecord`) and sends one ``start`` task; from
then on the job needs no client::

    start ──► chord(prepare × slices) ──► plan ──► chord(scatter × slices) ──► route
          ──► chord(write × files) ──► commit            (+ a watchdog every few seconds)

Each callback launches the next chord once (``JobRecord.start_stage`` is the guard, so a
redelivered callback does not launch a stage twice). Header tasks never raise: they return
``{"key", "ok": value}``, ``{"key", "error": message}`` or ``{"key", "skipped": True}``, values
that depend only on their inputs, so a task redelivered after its worker died returns the same
encoded value and the Redis chord counts it once.

Cancellation is the job's durable flag (``JobRecord.request_cancel``), never a revoke: a revoked
chord member would leave its chord hanging. Members check the flag before working; the next
callback discards staging and ends the job ``Canceled``. The watchdog ends a job ``Failed`` when it
makes no progress (no task finished, no heartbeat) for ``options.resolved_job_stall_timeout``
seconds — a member killed by the hard time limit, a chord that lost a member — and finishes a
cancel that no callback picked up. Failed, cancelled and stalled jobs leave no table (staging is
removed; a committed table from an earlier run is untouched).

``ignore_chunk_error=True``: failed slices or files are left out and listed in the job's result
(``failed``) instead of failing the job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from celery import chord

from fused_celery.celery_app import app
from fused_celery.errors import FusedError, JobNotFoundError
from fused_celery.options import DEFAULT_QUEUE, options
from fused_celery.state.job_record import JobRecord

if TYPE_CHECKING:
    from fused_celery.jobs.response import RunResponse
    from fused_celery.partition.config import GeospatialPartitionJobStepConfig

logger = logging.getLogger(__name__)

PREFIX = "fused_celery.ingest."
START, PREPARE, PLAN = PREFIX + "start", PREFIX + "prepare", PREFIX + "plan"
SCATTER, ROUTE, WRITE = PREFIX + "scatter", PREFIX + "route", PREFIX + "write"
COMMIT, WATCHDOG = PREFIX + "commit", PREFIX + "watchdog"
KIND = "partition_geospatial"
ERROR_CHARS = 2000


# --- helpers ----------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """One line naming an error: the message of our own errors, ``Class: message`` otherwise."""
    text = str(exc) if isinstance(exc, FusedError) else f"{type(exc).__name__}: {exc}"
    return text[:ERROR_CHARS]


@contextlib.contextmanager
def heartbeat(record: JobRecord) -> Iterator[None]:
    """Touch the job's progress time every few seconds while the block runs, so the watchdog
    tells a long task from a dead one."""
    period = max(1.0, min(30.0, options.resolved_job_stall_timeout / 4))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(period):
            with contextlib.suppress(Exception):
                record.touch()

    thread = threading.Thread(target=beat, name="fc-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def _open(job_id: str) -> JobRecord | None:
    try:
        return JobRecord.open(job_id)
    except JobNotFoundError:
        logger.warning("job %s: no record (expired or deleted); task skipped", job_id)
        return None


def _member(job_id: str, stage: str, key: str, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run one chord member: skip when the job is cancelled or over, record the outcome."""
    record = _open(job_id)
    if record is None:
        return {"key": key, "skipped": True}
    snap = record.snapshot(errors=False)
    if snap.cancel_requested or snap.terminal:
        return {"key": key, "skipped": True}
    task_key = f"{stage}:{key}"
    try:
        with heartbeat(record):
            value = fn()
    except Exception as exc:  # every failure becomes a deterministic value
        message = describe(exc)
        record.task_failed(task_key, message)  # logged there, at ERROR
        return {"key": key, "error": message}
    record.task_done(task_key)
    return {"key": key, "ok": value}


def _sig(name: str, args: tuple[Any, ...], queue: str) -> Any:
    return app.signature(name, args=args, queue=queue, immutable=False)


def _end(record: JobRecord, ctx: dict[str, Any], status: str, reason: str) -> None:
    """Discard staging and end the job ``status`` (Failed or Canceled) with ``reason``."""
    from fused_celery.partition.stages import discard

    try:
        discard(ctx)
    except Exception as exc:  # still end the job; say what was left
        reason = f"{reason} (and staging could not be removed: {describe(exc)})"
    record.finish(status, reason=reason)  # the record logs the end with its reason


def _check(
    record: JobRecord | None, ctx: dict[str, Any], stage: str, results: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """The ``(ok, failed)`` members of a finished stage, or None when the job is over (cancelled,
    failed, terminal: the job has been ended here if needed)."""
    if record is None:
        return None
    snap = record.snapshot(errors=False)
    if snap.terminal:
        return None
    if snap.cancel_requested:
        _end(record, ctx, "Canceled", f"cancelled during {stage}")
        return None
    ok = [r for r in results if "ok" in r]
    failed = [r for r in results if "error" in r]
    ignore = bool(ctx["config"].get("ignore_chunk_error"))
    if failed and (not ignore or not ok):
        first = failed[0]
        _end(
            record,
            ctx,
            "Failed",
            f"{stage}: {len(failed)} of {len(results)} task(s) failed; {stage} {first['key']}: "
            f"{first['error']}",
        )
        return None
    return ok, failed


def _guarded(record: JobRecord, ctx: dict[str, Any], stage: str, fn: Callable[[], None]) -> None:
    """Run a callback's own work; an exception fails the job (with staging removed)."""
    try:
        with heartbeat(record):
            fn()
    except Exception as exc:
        logger.exception("job %s: %s failed", record.job_id, stage)
        _end(record, ctx, "Failed", f"{stage}: {describe(exc)}")


def _failed_list(ctx: dict[str, Any], stage: str, failed: list[dict[str, Any]]) -> None:
    """Remember members left out under ``ignore_chunk_error`` (for the job's result)."""
    ctx.setdefault("failed", []).extend(
        {"stage": stage, "key": r["key"], "error": r["error"]} for r in failed
    )


# --- tasks ------------------------------------------------------------------------------------


@app.task(name=START, acks_late=True, ignore_result=True)
def start(ctx: dict[str, Any], queue: str) -> None:
    """List the input's slices and launch the prepare chord."""
    from fused_celery.partition.config import GeospatialPartitionJobStepConfig
    from fused_celery.partition.stages import list_input_slices

    record = _open(ctx["job_id"])
    if record is None or record.snapshot(errors=False).terminal:
        return
    if record.cancel_requested:
        _end(record, ctx, "Canceled", "cancelled before it started")
        return

    def work() -> None:
        config = GeospatialPartitionJobStepConfig.model_validate(ctx["config"])
        slices = list_input_slices(config, slice_rows=ctx["slice_rows"])
        ctx["n_slices"] = len(slices)
        if not record.start_stage("prepare", len(slices)):
            return
        record.log(f"prepare: {len(slices)} slice(s) of {config.input!r}")
        header = [
            _sig(PREPARE, (ctx, s.model_dump(mode="json")), queue).set(
                task_id=f"{ctx['job_id']}-prepare-{s.slice_id}"
            )
            for s in slices
        ]
        chord(header)(_sig(PLAN, (ctx, queue), queue))

    _guarded(record, ctx, "start", work)


@app.task(name=PREPARE, acks_late=True)
def prepare(ctx: dict[str, Any], input_slice: dict[str, Any]) -> dict[str, Any]:
    """Chord member: read and prepare one input slice."""
    from fused_celery.partition.stages import prepare_slice

    key = str(input_slice["slice_id"])
    return _member(ctx["job_id"], "prepare", key, lambda: prepare_slice(ctx, input_slice))


@app.task(name=PLAN, acks_late=True, ignore_result=True)
def plan(results: list[dict[str, Any]], ctx: dict[str, Any], queue: str) -> None:
    """Chord callback: plan from the samples, then launch the scatter chord."""
    from fused_celery.partition.stages import make_plan

    record = _open(ctx["job_id"])
    checked = _check(record, ctx, "prepare", results)
    if record is None or checked is None:
        return
    ok, failed = checked
    _failed_list(ctx, "prepare", failed)

    def work() -> None:
        prepared = [r["ok"] for r in ok]
        summary = make_plan(ctx, prepared)
        ctx["plan"] = summary
        ctx["report"] = _sum_reports(prepared)
        slice_ids = sorted(int(p["slice_id"]) for p in prepared if int(p["rows"]))
        if not record.start_stage("scatter", len(slice_ids)):
            return
        record.log(
            f"plan: {summary['rows']} rows into {summary['num_files']} file(s), "
            f"{summary['planned_chunks']} chunk(s) planned (max per file "
            f"{summary['max_per_file']:.6g}, per chunk {summary['max_per_chunk']:.6g})"
        )
        header = [
            _sig(SCATTER, (ctx, s), queue).set(task_id=f"{ctx['job_id']}-scatter-{s}")
            for s in slice_ids
        ]
        chord(header)(_sig(ROUTE, (ctx, queue), queue))

    _guarded(record, ctx, "plan", work)


@app.task(name=SCATTER, acks_late=True)
def scatter(ctx: dict[str, Any], slice_id: int) -> dict[str, Any]:
    """Chord member: route one prepared slice's rows to their files."""
    from fused_celery.partition.stages import scatter_slice

    return _member(ctx["job_id"], "scatter", str(slice_id), lambda: scatter_slice(ctx, slice_id))


@app.task(name=ROUTE, acks_late=True, ignore_result=True)
def route(results: list[dict[str, Any]], ctx: dict[str, Any], queue: str) -> None:
    """Chord callback: launch the write tasks (a file each, small files grouped)."""
    from fused_celery.partition.stages import write_groups, write_task_rows

    record = _open(ctx["job_id"])
    checked = _check(record, ctx, "scatter", results)
    if record is None or checked is None:
        return
    ok, failed = checked
    _failed_list(ctx, "scatter", failed)

    def work() -> None:
        done = [r["ok"] for r in ok]
        groups = write_groups(done, write_task_rows(done))
        if not record.start_stage("write", len(groups)):
            return
        n_files = sum(len(g) for g in groups)
        record.log(f"write: {n_files} file(s) in {len(groups)} task(s)")
        maxima = (ctx["plan"]["max_per_file"], ctx["plan"]["max_per_chunk"])
        header = [
            _sig(WRITE, (ctx, group, maxima), queue).set(
                task_id=f"{ctx['job_id']}-write-{group[0][0]}"
            )
            for group in groups
        ]
        chord(header)(_sig(COMMIT, (ctx, queue), queue))

    _guarded(record, ctx, "route", work)


@app.task(name=WRITE, acks_late=True)
def write(ctx: dict[str, Any], files: list[list[Any]], maxima: list[float]) -> dict[str, Any]:
    """Chord member: write a group of planned files (refined) to staging."""
    from fused_celery.partition.stages import write_files

    key = f"{files[0][0]}" if len(files) == 1 else f"{files[0][0]}-{files[-1][0]}"
    return _member(
        ctx["job_id"],
        "write",
        key,
        lambda: write_files(ctx, files, (float(maxima[0]), float(maxima[1]))),
    )


@app.task(name=COMMIT, acks_late=True, ignore_result=True)
def commit(results: list[dict[str, Any]], ctx: dict[str, Any], queue: str) -> None:
    """Chord callback: commit the table and end the job ``Done``."""
    from fused_celery.partition import stages

    record = _open(ctx["job_id"])
    checked = _check(record, ctx, "write", results)
    if record is None or checked is None:
        return
    ok, failed = checked
    _failed_list(ctx, "write", failed)

    def work() -> None:
        if not record.start_stage("commit", 1):
            return
        summary = stages.commit(ctx, [r["ok"] for r in ok])
        record.task_done("commit:0")
        result = {**summary, "report": ctx.get("report", {}), "failed": ctx.get("failed", [])}
        if record.finish("Done", result=result):
            record.log(
                f"done: {summary['num_rows']} rows in {summary['num_files']} file(s), "
                f"{summary['num_chunks']} chunk(s) at {summary['output']}"
                + (f"; {len(result['failed'])} task(s) failed and left out" if failed else "")
            )

    _guarded(record, ctx, "commit", work)


@app.task(name=WATCHDOG, acks_late=True, ignore_result=True)
def watchdog(ctx: dict[str, Any], queue: str) -> None:
    """Every ``options.job_watchdog_interval`` s until the job ends: fail a stalled job, finish a
    cancel that no callback picked up."""
    record = _open(ctx["job_id"])
    if record is None:
        return
    snap = record.snapshot(errors=False)
    if snap.terminal:
        return
    now = time.time()
    last = snap.last_progress_at or snap.started_at or snap.created_at or now
    idle = now - last
    interval = float(options.job_watchdog_interval)
    if snap.cancel_requested and idle > 2 * interval:
        _end(record, ctx, "Canceled", "cancelled")
        return
    stall = options.resolved_job_stall_timeout
    if idle > stall:
        _end(
            record,
            ctx,
            "Failed",
            f"stage {snap.stage or 'start'} made no progress for {idle:.0f} s "
            f"({snap.finished_tasks} of {snap.total_tasks} task(s) finished): a task may have "
            f"exceeded task_time_limit ({options.task_time_limit:.0f} s) or no worker serves "
            f"queue {queue!r}",
        )
        return
    _sig(WATCHDOG, (ctx, queue), queue).apply_async(countdown=interval)


def _sum_reports(prepared: list[dict[str, Any]]) -> dict[str, Any]:
    """The prepare reports of all slices added up (``reprojected_from``: the CRSs seen)."""
    total: dict[str, Any] = {}
    crs: set[str] = set()
    for p in prepared:
        for k, v in p["report"].items():
            if k == "reprojected_from":
                if v:
                    crs.add(v)
            else:
                total[k] = total.get(k, 0) + int(v or 0)
    total["reprojected_from"] = sorted(crs)
    return total


# --- client -----------------------------------------------------------------------------------


def submit_ingest(
    config: GeospatialPartitionJobStepConfig,
    output: str,
    *,
    instance_type: str | None = None,
    overwrite: bool | None = None,
    extra: dict[str, Any] | None = None,
) -> RunResponse:
    """Start ``config`` on the cluster, writing table ``output``; returns its RunResponse.

    instance_type: the queue (default None: ``fused``). overwrite: replace an existing table
    (default None: ``config.overwrite``). extra: more fields for the job record (region,
    additional_env, ...). An existing table without overwrite, a missing bucket or an
    unreachable broker is raised here, before anything is submitted.
    """
    import uuid

    from fused_celery.celery_app import get_app
    from fused_celery.engines import check_instance_type
    from fused_celery.jobs.response import RunResponse
    from fused_celery.partition.stages import discard, materialize_frame, run_context
    from fused_celery.state.pool_record import check_reachable
    from fused_celery.table import TableWriter

    if instance_type is not None:
        check_instance_type(instance_type)
    queue = instance_type or DEFAULT_QUEUE
    check_reachable(options.broker_url)
    job_id = uuid.uuid4().hex
    ow = config.overwrite if overwrite is None else bool(overwrite)
    writer = TableWriter(output, overwrite=ow, run_id=job_id)
    slice_rows = options.ingest_slice_rows
    ctx = run_context(
        config, writer, job_id=job_id, n_slices=0, sample_rows=0, slice_rows=slice_rows
    )
    record: JobRecord | None = None
    try:  # nothing half-submitted: on any error here, no record, no staging, no message
        config = materialize_frame(config, ctx["work"], slice_rows=slice_rows)
        ctx = run_context(
            config.model_copy(update={"overwrite": ow, "output": writer.url}),
            writer,
            job_id=job_id,
            n_slices=0,
            sample_rows=options.ingest_sample_rows,
            slice_rows=slice_rows,
        )
        record = JobRecord.create(
            job_id=job_id,
            name=config.name,
            kind=KIND,
            instance_type=instance_type,
            output=writer.url,
            config={**ctx["config"], **(extra or {})},
        )
        record.log(f"submitted: ingest {config.input!r} -> {writer.url} on queue {queue!r}")
        client = get_app(results=False)
        client.send_task(START, args=(ctx, queue), queue=queue, task_id=f"{job_id}-start")
    except BaseException:
        with contextlib.suppress(Exception):
            discard(ctx)
        if record is not None:
            with contextlib.suppress(Exception):
                record.delete()
        raise
    client.send_task(
        WATCHDOG, args=(ctx, queue), queue=queue, countdown=options.job_watchdog_interval
    )
    return RunResponse.from_record(record)
