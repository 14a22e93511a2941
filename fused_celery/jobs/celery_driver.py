"""The Celery driver: any declared :class:`~fused_celery.jobs.stages.StageSequence` as chained
chords, tracked by a job record (:class:`~fused_celery.state.job_record.JobRecord`).

:func:`submit` (client) creates the job record and sends one start task; from then on the job
needs no client::

    start ──► chord(member × items of stage 1) ──► collect ──► chord(member × stage 2) ──► ...
          ──► collect of the last stage (once) ──► Done     (+ a watchdog every few seconds)

Four tasks serve every sequence: :data:`START`, :data:`MEMBER`, :data:`COLLECT` (the chord
callback: the stage's collect, then the next stage's items and chord) and :data:`WATCHDOG`. Each
message carries the sequence's dotted name (found from the run's ``kind`` by :func:`submit`) and
the run as JSON; members also their item and key. Task ids are deterministic:
``<job>-start``, ``<job>-<stage>-<key>``, ``<job>-<stage>-collect``.

A callback launches the next chord once (``JobRecord.start_stage`` is the guard, so a redelivered
callback does not launch a stage twice); the last stage's collect (the commit) runs behind its own
``start_stage`` guard. Members never raise: they return a
:class:`~fused_celery.jobs.stages.MemberOutcome` (``ok`` / ``error`` / ``skipped``) whose JSON
depends only on their inputs, so a task redelivered after its worker died returns the same encoded
value and the Redis chord counts it once.

Every task runs with the job's ``additional_env`` set (``run.options.env``, restored after the
task: :func:`~fused_celery.worker_env.applied_env`).

Cancellation is the job's durable flag (``JobRecord.request_cancel``), never a revoke: a revoked
chord member would leave its chord hanging. Members check the flag before working; the next
callback discards and ends the job ``Canceled``. The watchdog sends again a member whose message
was lost (:func:`_resend_lost`; a dead worker's messages are given back by the workers'
heartbeat sweep, :mod:`fused_celery.engines.celery.liveness`), ends a job ``Failed`` when it
makes no progress (no task finished, no heartbeat) for ``options.resolved_job_stall_timeout``
seconds — a member killed by the hard time limit, a queue no worker serves — and finishes a
cancel that no callback picked up. Failed, cancelled and stalled jobs are discarded (the sequence's
``discard``: for a table, no table is left; a committed one from an earlier run is untouched).

``run.ignore_errors``: failed members are left out and listed in the job's result (``failed``)
instead of failing the job; a stage whose members all failed still fails it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from celery import chord, group

from fused_celery.autoscale.cost import UNKNOWN
from fused_celery.celery_app import app, get_app
from fused_celery.engines.celery.lost import missing_messages
from fused_celery.errors import JobNotFoundError
from fused_celery.jobs.stages import (
    FailedItem,
    MemberOutcome,
    Stage,
    StageRun,
    StageSequence,
    error_text,
    in_stage,
    jsonable,
    load_sequence,
    sequence_target,
)
from fused_celery.options import options
from fused_celery.queues import parse_queue, queue_name
from fused_celery.state import workers
from fused_celery.state.connection import redis_client
from fused_celery.state.job_record import JobRecord
from fused_celery.state.statuses import JOB_CANCELED, JOB_DONE, JOB_FAILED
from fused_celery.task_display import stage_options
from fused_celery.worker_env import applied_env

__all__ = ["COLLECT", "MEMBER", "START", "WATCHDOG", "heartbeat", "submit"]

logger = logging.getLogger(__name__)

PREFIX = "fused_celery.job."
START, MEMBER, COLLECT, WATCHDOG = (PREFIX + n for n in ("start", "member", "collect", "watchdog"))


# --- helpers ----------------------------------------------------------------------------------


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


def _load(
    record: JobRecord, target: str, data: dict[str, Any]
) -> tuple[StageSequence[Any], StageRun] | None:
    """The sequence and the run of a message; a message that cannot be loaded fails the job
    (nothing can be discarded without them)."""
    try:
        seq = load_sequence(target)
        return seq, seq.load_run(data)
    except Exception as exc:
        logger.exception("job %s: cannot load %s", record.job_id, target)
        record.finish(JOB_FAILED, reason=f"cannot load stage sequence {target}: {error_text(exc)}")
        return None


def fail_refused_job(args: list[Any], kwargs: dict[str, Any], reason: str) -> None:
    """Fail the job of a message a worker refused (another message protocol): its run is
    discarded (the output stays as it was) and the job ends ``Failed`` with ``reason``. The
    message's ``(target, data, ...)`` are read only to find the job and its run."""
    target = kwargs.get("target", args[0] if args else None)
    data = kwargs.get("data", args[1] if len(args) > 1 else None)
    if not isinstance(target, str) or not isinstance(data, dict):
        return
    record = _open(str(data.get("job_id")))
    if record is None or record.snapshot(errors=False).terminal:
        return
    try:
        seq = load_sequence(target)
        seq.discard(seq.load_run(data))
    except Exception as exc:  # noqa: BLE001 - still fail the job, saying what was left
        reason = f"{reason} (and discarding the run failed: {error_text(exc)})"
    record.finish(JOB_FAILED, reason=reason)


def _sig(name: str, args: tuple[Any, ...], queue: str) -> Any:
    """A signature of task ``name`` on the app of the current options (on a worker: :data:`app`
    itself; a task body called in another process publishes to that process's broker)."""
    return get_app().signature(name, args=args, queue=queue, immutable=False)


def _end(
    record: JobRecord, seq: StageSequence[Any], run: StageRun, status: str, reason: str
) -> None:
    """Discard the run (logging what the sequence says stays) and end the job ``status``
    (Failed or Canceled) with ``reason``."""
    try:
        line = seq.discard(run)
    except Exception as exc:  # still end the job; say what was left
        reason = f"{reason} (and discarding the run failed: {error_text(exc)})"
    else:
        if line:
            record.log(line, level="WARNING")
    record.finish(status, reason=reason)  # the record logs the end with its reason


def _guarded(
    record: JobRecord, seq: StageSequence[Any], run: StageRun, what: str, fn: Callable[[], None]
) -> None:
    """Run a start's or callback's own work (with the job's ``additional_env``); an exception
    fails the job (the run discarded)."""
    try:
        with heartbeat(record), applied_env(run.options.env):
            fn()
    except Exception as exc:
        logger.exception("job %s: %s failed", record.job_id, what)
        _end(record, seq, run, JOB_FAILED, f"{what}: {error_text(exc)}")


def _group_id(job_id: str, stage: str) -> str:
    """The chord's group id of ``stage`` (deterministic, so the watchdog can re-send a member)."""
    return f"{job_id}-{stage}-group"


def _body(target: str, data: dict[str, Any], stage: str, queue: str) -> Any:
    """The chord callback of ``stage`` (what each header member carries as its ``chord``)."""
    return _sig(COLLECT, (target, data, stage, queue), queue).set(
        task_id=f"{data['job_id']}-{stage}-collect",
        **stage_options(data["kind"], f"{stage}/collect", data["job_id"]),
    )


def _member(target: str, data: dict[str, Any], stage: str, item: Any, key: str, queue: str) -> Any:
    """The signature of the member ``key`` of ``stage``."""
    return _sig(MEMBER, (target, data, stage, item, key), queue).set(
        task_id=f"{data['job_id']}-{stage}-{key}",
        **stage_options(data["kind"], stage, data["job_id"], key=key, item=item),
    )


def _launch(
    record: JobRecord,
    target: str,
    run: StageRun,
    stage: Stage[Any],
    items: Sequence[Any],
    queue: str,
) -> None:
    """Start ``stage`` (once: the record's guard) as a chord of one member per item; keep what
    it was launched with in the record (:meth:`JobRecord.put_launch`), for :func:`_resend_lost`."""
    keys = [stage.key_of(i, item) for i, item in enumerate(items)]
    if len(set(keys)) != len(keys):
        raise ValueError(f"stage {stage.name!r} has items with the same key: {keys[:20]}")
    if not record.start_stage(stage.name, len(items)):
        return
    if stage.units is not None:
        record.set_stage_units(stage.name, sum(stage.units(i) for i in items), stage.unit)
    if stage.describe is not None:
        record.log(stage.describe(run, items))
    data = run.model_dump(mode="json")
    job = run.job_id
    shown = stage_options(run.kind, f"{stage.name}/collect", job)
    body = _body(target, data, stage.name, queue)
    header = [_member(target, data, stage.name, item, key, queue) for item, key in zip(items, keys)]
    if header:
        record.put_launch(
            stage.name, {"data": data, "members": [[k, jsonable(i)] for k, i in zip(keys, items)]}
        )
        chord(group(header, task_id=_group_id(job, stage.name)))(body)
    else:  # nothing to fan out: the callback at once, with no results
        _sig(COLLECT, ([], target, data, stage.name, queue), queue).apply_async(
            task_id=f"{job}-{stage.name}-collect", **shown
        )


def _resend_lost(record: JobRecord, target: str, stage: str, queue: str) -> list[str]:
    """Send again what ``stage`` waits for and no worker holds nor queue has: its members, or,
    once every member finished, its chord callback (the collect).

    A message can vanish without a trace: kombu pops it (BRPOP) and records it as
    unacknowledged a moment later, and a worker killed in between, or a Redis that lost its last
    second, loses it. A callback can also never be sent: the worker that finished the last
    member claims the callback for a few seconds before publishing it, and if it dies then, the
    member's redelivery may come while the claim still holds. The watchdog calls this while the
    job makes no progress. A member that is not finished, or the callback of a stage whose
    members all finished, whose message is in neither the queue nor kombu's unacknowledged hash
    (where a dead worker's messages stay until :mod:`fused_celery.engines.celery.liveness`
    gives them back) is a suspect; a suspect again at the next check is sent again: a member
    with the same task id, group and index, so the chord counts it once (members are
    idempotent); a callback with the members' stored results (its work is guarded by
    ``start_stage``, so a second one does nothing). Returns the task ids sent.
    """
    launch = record.launch(stage)
    if launch is None:
        return []
    data, members = launch["data"], launch["members"]
    done = record.finished_keys()
    job = record.job_id
    pending = {
        f"{job}-{stage}-{key}": (i, key, item)
        for i, (key, item) in enumerate(members)
        if f"{stage}:{key}" not in done
    }
    collect_id = f"{job}-{stage}-collect"
    wanted = set(pending) or {collect_id}
    missing = missing_messages(redis_client(options.broker_url or ""), queue, wanted) or set()
    before = set(json.loads(record.get_field("lost_suspects") or "{}").get(stage, []))
    again = sorted(missing & before)
    record.set_fields(lost_suspects=json.dumps({stage: sorted(missing - before)}))
    if not again:
        return []
    if again == [collect_id]:
        results, backend = [], get_app().backend
        for key, _ in members:
            meta = backend.get_task_meta(f"{job}-{stage}-{key}")
            if meta.get("status") != "SUCCESS":
                return []  # a result expired or never stored: the stall timeout decides
            results.append(meta["result"])
        _sig(COLLECT, (results, target, data, stage, queue), queue).apply_async(task_id=collect_id)
        record.log(f"stage {stage}: sent its callback again (it was lost)", level="WARNING")
        return again
    body = _body(target, data, stage, queue)
    gid = _group_id(job, stage)
    for task_id in again:
        i, key, item = pending[task_id]
        _member(target, data, stage, item, key, queue).set(
            group_id=gid, group_index=i, chord=body
        ).apply_async()
    record.log(
        f"stage {stage}: sent again {len(again)} member(s) whose message was lost: "
        + ", ".join(pending[t][1] for t in again[:10]),
        level="WARNING",
    )
    return again


def _check(
    record: JobRecord,
    seq: StageSequence[Any],
    run: StageRun,
    stage: Stage[Any],
    results: list[dict[str, Any]],
) -> tuple[list[Any], list[FailedItem]] | None:
    """The ok values and failed items of a finished stage, or None when the job is over
    (terminal, cancelled or failed here: then it has been ended)."""
    snap = record.snapshot(errors=False)
    if snap.terminal:
        return None
    if snap.cancel_requested:
        _end(record, seq, run, JOB_CANCELED, f"cancelled during {stage.name}")
        return None
    outcomes = [MemberOutcome.model_validate(r) for r in results]
    ok = [o.value for o in outcomes if o.status == "ok"]
    failed = [
        FailedItem(stage=stage.name, key=o.key, error=o.error or "")
        for o in outcomes
        if o.status == "error"
    ]
    if failed and (not run.ignore_errors or not ok):
        first = failed[0]
        _end(
            record,
            seq,
            run,
            JOB_FAILED,
            f"{stage.name}: {len(failed)} of {len(outcomes)} task(s) failed; {stage.name} "
            f"{first.key}: {first.error}",
        )
        return None
    return ok, failed


def _done(record: JobRecord, seq: StageSequence[Any], run: StageRun) -> None:
    """End the job ``Done`` with the sequence's result (plus ``failed``: the members left out)."""
    result, line = seq.result(run)
    result = {**result, "failed": [f.model_dump(mode="json") for f in run.failed]}
    if record.finish(JOB_DONE, result=result):
        left_out = f"; {len(run.failed)} task(s) failed and left out" if run.failed else ""
        record.log(line + left_out)


# --- tasks ------------------------------------------------------------------------------------


@app.task(name=START, acks_late=True, ignore_result=True)
def start_job(target: str, data: dict[str, Any], queue: str) -> None:
    """Launch the first stage of the sequence ``target`` for run ``data`` on ``queue``."""
    record = _open(str(data.get("job_id")))
    if record is None or record.snapshot(errors=False).terminal:
        return
    loaded = _load(record, target, data)
    if loaded is None:
        return
    seq, run = loaded
    if record.cancel_requested:
        _end(record, seq, run, JOB_CANCELED, "cancelled before it started")
        return

    def work() -> None:
        first = seq.stages[0]
        started, items = first.items(run)
        _launch(record, target, started, first, list(items), queue)

    _guarded(record, seq, run, "start", work)


_worker_infos: dict[str, tuple[str, int]] = {}


def _add_cost(record: JobRecord, seconds: float) -> None:
    """Add this member's run time / its worker's slots to the job's cost, on the worker's
    instance type (its description in Redis, read once per process; else the queue's type)."""
    request = run_member.request
    host = request.hostname or ""
    found = _worker_infos.get(host)
    try:
        if found is None:
            info = workers.describe(record.client, [host]).get(host)
            if info is not None:
                found = _worker_infos[host] = (info.instance_type or UNKNOWN, info.concurrency)
            else:
                queue = (request.delivery_info or {}).get("routing_key") or ""
                try:
                    found = (parse_queue(queue).instance_type or UNKNOWN, 1)
                except ValueError:
                    found = (UNKNOWN, 1)
        record.add_cost(found[0], seconds / max(1, found[1]))
    except Exception as exc:  # noqa: BLE001 - cost is reporting, never a reason to fail
        logger.warning("job %s: cost not recorded: %s", record.job_id, exc)


@app.task(name=MEMBER, acks_late=True)
def run_member(
    target: str, data: dict[str, Any], stage: str, item: Any, key: str
) -> dict[str, Any]:
    """Chord member: ``stage``'s member function on ``item``. Never raises: returns a
    :class:`~fused_celery.jobs.stages.MemberOutcome` as JSON (skipped when the job is over or
    cancelled)."""
    skipped = MemberOutcome(key=key, status="skipped").model_dump(mode="json")
    record = _open(str(data.get("job_id")))
    if record is None:
        return skipped
    snap = record.snapshot(errors=False)
    if snap.cancel_requested or snap.terminal:
        return skipped
    task_key = f"{stage}:{key}"
    started = time.time()
    try:
        seq = load_sequence(target)
        run = seq.load_run(data)
        current = seq.stage(stage)
        with heartbeat(record), applied_env(run.options.env), in_stage(stage):
            value = jsonable(current.member(run, item))
    except Exception as exc:  # every failure becomes a deterministic value
        message = error_text(exc)
        _add_cost(record, time.time() - started)
        record.task_failed(task_key, message)  # logged there, at ERROR
        return MemberOutcome(key=key, status="error", error=message).model_dump(mode="json")
    _add_cost(record, time.time() - started)
    record.task_done(task_key, units=current.units(item) if current.units else 0)
    return MemberOutcome(key=key, status="ok", value=value).model_dump(mode="json")


@app.task(name=COLLECT, acks_late=True, ignore_result=True)
def collect_stage(
    results: list[dict[str, Any]], target: str, data: dict[str, Any], stage: str, queue: str
) -> None:
    """Chord callback of ``stage``: its collect, then the next stage's chord (or, after the
    last stage, the collect once and the job ``Done``)."""
    record = _open(str(data.get("job_id")))
    if record is None:
        return
    loaded = _load(record, target, data)
    if loaded is None:
        return
    seq, run = loaded
    current = seq.stage(stage)
    checked = _check(record, seq, run, current, results)
    if checked is None:
        return
    ok, failed = checked
    run = run.model_copy(update={"failed": (*run.failed, *failed)})
    following = seq.next_stage(stage)

    def work() -> None:
        if following is None:  # the commit: once
            if not record.start_stage(current.collector, 1):
                return
            final = current.collect(run, ok, failed)
            record.task_done(f"{current.collector}:0")
            _done(record, seq, final)
            return
        collected = current.collect(run, ok, failed)
        started, items = following.items(collected)
        _launch(record, target, started, following, list(items), queue)

    _guarded(record, seq, run, current.collector, work)


@app.task(name=WATCHDOG, acks_late=True, ignore_result=True)
def watchdog(target: str, data: dict[str, Any], queue: str) -> None:
    """Every ``options.job_watchdog_interval`` s until the job ends: fail a stalled job, finish a
    cancel that no callback picked up."""
    record = _open(str(data.get("job_id")))
    if record is None:
        return
    snap = record.snapshot(errors=False)
    if snap.terminal:
        return
    loaded = _load(record, target, data)
    if loaded is None:
        return
    seq, run = loaded
    now = time.time()
    last = snap.last_progress_at or snap.started_at or snap.created_at or now
    idle = now - last
    interval = float(options.job_watchdog_interval)
    if snap.cancel_requested and idle > 2 * interval:
        _end(record, seq, run, JOB_CANCELED, "cancelled")
        return
    stall = options.resolved_job_stall_timeout
    if idle > stall:
        _end(
            record,
            seq,
            run,
            JOB_FAILED,
            f"stage {snap.stage or 'start'} made no progress for {idle:.0f} s "
            f"({snap.finished_tasks} of {snap.total_tasks} task(s) finished): a task may have "
            f"exceeded task_time_limit ({options.task_time_limit:.0f} s) or no worker serves "
            f"queue {queue!r}",
        )
        return
    if idle > interval and snap.stage and not snap.cancel_requested:
        try:
            _resend_lost(record, target, snap.stage, queue)
        except Exception:  # noqa: BLE001 - the watchdog goes on; the stall timeout still holds
            logger.exception("job %s: looking for lost members failed", record.job_id)
    _sig(WATCHDOG, (target, data, queue), queue).apply_async(
        countdown=interval, **stage_options(run.kind, "watchdog", run.job_id)
    )


# --- client -----------------------------------------------------------------------------------


def submit(
    run: StageRun,
    *,
    queue: str,
    name: str | None = None,
    instance_type: str | None = None,
    output: str | None = None,
    config: dict[str, Any] | None = None,
    message: str | None = None,
    target: str | None = None,
) -> JobRecord:
    """Create the job record of ``run`` and send its start task and watchdog to ``queue``;
    returns the record. The queue of an instance type becomes the one of the ``region`` and
    ``image_name`` in ``config`` (:func:`~fused_celery.queues.queue_name`); a queue no worker
    and no autoscaled group serves, or a ``disk_size_gb`` over its group's, is refused here
    (:func:`~fused_celery.state.workers.check_queue`).

    name / instance_type / output / config: the record's fields (defaults None, None, None, {}).
    message: a first log line (default None). target: the sequence's ``"module:NAME"`` (default
    None: the one registered for ``run.kind``; a composed job passes its own). On any error
    nothing is left half-submitted: the record is deleted, the run discarded and the error raised.
    """
    config = dict(config or {})
    if instance_type and queue == instance_type:  # the job's region / image pick its queue
        queue = queue_name(instance_type, config.get("region"), config.get("image_name"))
    workers.check_queue(queue, config.get("disk_size_gb"))
    target = target or sequence_target(run.kind)
    seq = load_sequence(target)
    run = run.model_copy(update={"remote": True})
    data = run.model_dump(mode="json")
    record: JobRecord | None = None
    try:
        record = JobRecord.create(
            job_id=run.job_id,
            name=name,
            kind=run.kind,
            instance_type=instance_type,
            output=output,
            config=dict(config or {}),
        )
        if message:
            record.log(message)
        client = get_app(results=False)
        client.send_task(
            START,
            args=(target, data, queue),
            queue=queue,
            task_id=f"{run.job_id}-start",
            **stage_options(run.kind, "start", run.job_id),
        )
    except BaseException:
        with contextlib.suppress(Exception):
            seq.discard(run)
        if record is not None:
            with contextlib.suppress(Exception):
                record.delete()
        raise
    client.send_task(
        WATCHDOG,
        args=(target, data, queue),
        queue=queue,
        countdown=options.job_watchdog_interval,
        **stage_options(run.kind, "watchdog", run.job_id),
    )
    return record
