"""The Redis record of one job (a multi-stage pipeline such as an ingest): status, progress, logs.

This module knows Redis and the job keys of :mod:`fused_celery.state.keys` (``fc:job:<id>:*``), not
Celery: the client that submits a job, the workers that run its stages, and any process that
follows it by id (``fused_celery.api.job_*``) all go through :class:`JobRecord`.

Statuses (:mod:`fused_celery.state.statuses`): ``Pending`` (created, no stage started) ->
``Running`` (first ``start_stage``) -> one of ``Done``, ``Failed``, ``Canceled`` (terminal; the
first :meth:`JobRecord.finish` wins).

Every write is one Lua script (``scripts/job_*.lua``, declared in
:mod:`fused_celery.state.scripts`), so it is atomic and idempotent where redeliveries need it
(``start_stage`` per stage name, ``task_done`` per task key, ``finish`` first-wins). Each script
first checks that the record exists, so a late write never recreates part of an expired job (it
raises :class:`~fused_celery.errors.JobNotFoundError` instead), and renews the TTL
(``options.result_expires``) of every key of the job.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis
from pydantic import BaseModel, Field

from fused_celery.errors import BrokerUnavailableError, JobNotFoundError
from fused_celery.options import options
from fused_celery.state import keys, scripts, statuses
from fused_celery.state.connection import check_reachable, mask_url, redis_client
from fused_celery.state.scripts import Script
from fused_celery.state.statuses import JOB_PENDING

#: Job statuses, and the terminal ones (declared in :mod:`fused_celery.state.statuses`).
JOB_STATUSES = statuses.JOB_STATUSES
TERMINAL = statuses.JOB_TERMINAL

#: Log lines kept per job (older ones are dropped).
MAX_LOG_LINES = 10_000
#: Characters kept of one log message.
MAX_LOG_MESSAGE_CHARS = 8192
#: Characters kept of one task's error text.
MAX_ERROR_CHARS = 4000
#: Tasks whose error text is kept (``failed_tasks`` still counts every failed task).
MAX_ERRORS = 100
#: Characters kept of a job's ``reason``.
MAX_REASON_CHARS = 8000
#: Jobs kept in the ``fc:jobs`` index.
MAX_INDEXED_JOBS = 10_000
#: Stored in ``meta.version``; bumped when the layout changes incompatibly.
JOB_RECORD_VERSION = 1

#: ``meta`` fields ``cost_s:<instance type>`` hold a job's instance-seconds (``add_cost``).
COST_FIELD_PREFIX = "cost_s:"

#: ``meta`` fields written by the record itself (``set_fields`` refuses them).
RESERVED_FIELDS: frozenset[str] = frozenset(
    {
        "job_id",
        "name",
        "kind",
        "instance_type",
        "output",
        "config",
        "status",
        "stage",
        "total_tasks",
        "created_at",
        "started_at",
        "finished_at",
        "last_progress_at",
        "reason",
        "result",
        "cancel_requested",
        "log_seq",
        "version",
    }
)

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")

# --------------------------------------------------------------------------- snapshot


#: Meta field prefixes of a stage's units of work (:meth:`JobRecord.set_stage_units`).
UNITS_TOTAL, UNITS_DONE, UNITS_NAME = "units_total:", "units_done:", "units_name:"


class StageProgress(BaseModel):
    """Units of work (e.g. chunks) of one stage: done, total and their name."""

    done: int = 0
    total: int = 0
    unit: str = "task"


class JobSnapshot(BaseModel):
    """A job's state read in one round trip (times in epoch seconds, None when not reached).

    ``finished_tasks`` counts distinct finished task keys (done or failed), ``failed_tasks`` the
    failed ones; ``errors`` maps task key -> error text (at most ``MAX_ERRORS``; empty when read
    with ``errors=False``); ``progress`` maps a stage that counts units of work (chunks, ...) to
    its :class:`StageProgress`.
    """

    job_id: str
    job_name: str | None = None
    kind: str | None = None
    status: str
    total_tasks: int = 0
    finished_tasks: int = 0
    failed_tasks: int = 0
    stage: str | None = None
    instance_type: str | None = None
    output: str | None = None
    reason: str | None = None
    errors: dict[str, str] = Field(default_factory=dict)
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    last_progress_at: float | None = None
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    progress: dict[str, StageProgress] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """True once the status is ``Done``, ``Failed`` or ``Canceled``."""
        return self.status in TERMINAL


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _snapshot_from(
    job_id: str, meta: dict[str, str], done: int, failed: int, errors: dict[str, str]
) -> JobSnapshot:
    result = meta.get("result")
    return JobSnapshot(
        job_id=job_id,
        job_name=meta.get("name") or None,
        kind=meta.get("kind") or None,
        status=meta.get("status", JOB_PENDING),
        total_tasks=int(meta.get("total_tasks") or 0),
        finished_tasks=int(done),
        failed_tasks=int(failed),
        stage=meta.get("stage") or None,
        instance_type=meta.get("instance_type") or None,
        output=meta.get("output") or None,
        reason=meta.get("reason") or None,
        errors=errors,
        created_at=_float(meta.get("created_at")),
        started_at=_float(meta.get("started_at")),
        finished_at=_float(meta.get("finished_at")),
        last_progress_at=_float(meta.get("last_progress_at")),
        result=json.loads(result) if result else None,
        cancel_requested=meta.get("cancel_requested") == "1",
        progress=_progress(meta),
    )


def _progress(meta: dict[str, str]) -> dict[str, StageProgress]:
    """The stages' units of work, from their ``units_*:<stage>`` meta fields."""
    out = {}
    for field, value in meta.items():
        if field.startswith(UNITS_TOTAL):
            stage = field[len(UNITS_TOTAL) :]
            out[stage] = StageProgress(
                done=int(meta.get(UNITS_DONE + stage) or 0),
                total=int(value or 0),
                unit=meta.get(UNITS_NAME + stage) or "task",
            )
    return out


def _parse_logs(lines: list[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        entry = json.loads(line)
        out.append(
            {
                "seq": int(entry["seq"]),
                "ts_ms": int(entry["ts_ms"]),
                "level": str(entry["level"]),
                "message": str(entry["message"]),
            }
        )
    return out


# --------------------------------------------------------------------------- the record


def _text(value: Any, limit: int) -> str:
    """``str(value)`` cut to ``limit`` characters, encodable as UTF-8 (lone surrogates replaced)."""
    return str(value)[:limit].encode("utf-8", "replace").decode("utf-8")


def _resolve_url(url: str | None) -> str:
    url = url or options.resolved_result_backend
    check_reachable(url, what="result backend")
    return url  # type: ignore[return-value]


class JobRecord:
    """The Redis record of one job (see the module docstring).

    job_id: the job's id. url: Redis URL of the record (default
    ``options.resolved_result_backend``). Use :meth:`create` or :meth:`open`, which check that
    Redis answers; the constructor does not.
    """

    def __init__(self, job_id: str, url: str | None = None) -> None:
        self.job_id = job_id
        self.url: str = url or options.resolved_result_backend or ""
        if not self.url:
            raise BrokerUnavailableError(
                "no result backend URL configured: set fused_celery.options.broker_url or "
                "FUSED_CELERY_BROKER_URL (e.g. redis://127.0.0.1:6379/0)"
            )
        self.client = redis_client(self.url)
        self.keys = keys.job_keys(job_id)
        self._key_list = list(self.keys.values())

    # ------------------------------------------------------------------ create / open

    @classmethod
    def create(
        cls,
        *,
        job_id: str | None = None,
        name: str | None,
        kind: str,
        instance_type: str | None,
        output: str | None,
        config: dict[str, Any],
        url: str | None = None,
    ) -> JobRecord:
        """Create a ``Pending`` job record and add it to the ``fc:jobs`` index.

        job_id: default a fresh uuid4 hex (``[A-Za-z0-9][A-Za-z0-9_.:-]*``, at most 128
        characters). name: the job's name (may be None). kind: e.g. ``"ingest"``.
        instance_type / output: shown by ``RunResponse``. config: JSON-able job configuration.
        url: default ``options.resolved_result_backend``. Raises
        :class:`~fused_celery.errors.BrokerUnavailableError` when Redis does not answer, and
        ``ValueError`` for an invalid or already used ``job_id``.
        """
        job_id = job_id or uuid.uuid4().hex
        if not _JOB_ID.match(job_id):
            raise ValueError(
                f"invalid job id {job_id!r}: use letters, digits and _.:- (at most 128 "
                "characters, starting with a letter or digit)"
            )
        record = cls(job_id, _resolve_url(url))
        now = time.time()
        fields: dict[str, str] = {
            "job_id": job_id,
            "kind": kind,
            "config": json.dumps(config),
            "status": JOB_PENDING,
            "total_tasks": "0",
            "created_at": repr(now),
            "log_seq": "0",
            "version": str(JOB_RECORD_VERSION),
        }
        for field, value in (("name", name), ("instance_type", instance_type), ("output", output)):
            if value is not None:
                fields[field] = str(value)
        created = scripts.job_create(
            record.client,
            keys={"meta": record.keys["meta"], "jobs": keys.JOBS_INDEX},
            args={
                "ttl": keys.record_ttl(),
                "now": repr(now),
                "max_indexed": MAX_INDEXED_JOBS,
                "fields": fields.items(),
            },
        )
        if not created:
            raise ValueError(f"a job with id {job_id!r} already exists; use another job_id")
        return record

    @classmethod
    def open(cls, job_id: str, url: str | None = None) -> JobRecord:
        """The record of an existing job, from any process.

        url: default ``options.resolved_result_backend``. Raises
        :class:`~fused_celery.errors.JobNotFoundError` when there is no such job, and
        :class:`~fused_celery.errors.BrokerUnavailableError` when Redis does not answer.
        """
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise JobNotFoundError(f"no job with id {job_id!r}: not a valid job id")
        record = cls(job_id, _resolve_url(url))
        if not record.client.exists(record.keys["meta"]):
            raise record.not_found()
        return record

    def not_found(self) -> JobNotFoundError:
        """The error for this job's record not being in Redis."""
        return JobNotFoundError(
            f"no job with id {self.job_id!r} in Redis at {mask_url(self.url)}: it expired after "
            f"result_expires={keys.record_ttl()} s (FUSED_CELERY_RESULT_EXPIRES) or never "
            "existed; check the id and FUSED_CELERY_RESULT_BACKEND"
        )

    def exists(self) -> bool:
        """True while the record is in Redis."""
        return bool(self.client.exists(self.keys["meta"]))

    def delete(self) -> None:
        """Remove the record and its index entry (e.g. when submitting the job failed)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*self._key_list)
        pipe.zrem(keys.JOBS_INDEX, self.job_id)
        pipe.execute()

    def _run(self, script: Script, **args: Any) -> int:
        """Run a write script (declared with ttl, now, log_cap, events first; ``args``: the
        rest)."""
        args.update(
            ttl=keys.record_ttl(),
            now=repr(time.time()),
            log_cap=MAX_LOG_LINES,
            events=keys.job_events_channel(self.job_id),
        )
        out = script(self.client, keys=self.keys, args=args)
        if out == -1:
            raise self.not_found()
        return int(out)

    # ------------------------------------------------------------------ writes

    def start_stage(self, stage: str, total: int) -> bool:
        """Begin stage ``stage`` with ``total`` tasks: adds ``total`` to ``total_tasks``, sets
        ``stage``, moves ``Pending`` to ``Running`` (``started_at`` set once), logs
        ``stage <stage>: <total> tasks``. Idempotent per stage name; no-op on a terminal job.
        Returns True when recorded by this call."""
        if total < 0:
            raise ValueError(f"total must be >= 0, not {total}")
        return bool(self._run(scripts.job_start_stage, stage=stage, total=int(total)))

    def task_done(self, task_key: str, units: int = 0) -> bool:
        """Mark task ``task_key`` (``<stage>:<key>``) finished (idempotent); True the first
        time, when its ``units`` of work (default 0) are also added to its stage's progress."""
        stage = task_key.partition(":")[0]
        return bool(
            self._run(
                scripts.job_task_done,
                task_key=task_key,
                units_field=UNITS_DONE + stage if units else "",
                units=int(units),
            )
        )

    def set_stage_units(self, stage: str, total: int, unit: str) -> None:
        """Record that stage ``stage`` has ``total`` units of work called ``unit`` (e.g.
        ``"chunk"``), shown by progress bars (:attr:`JobSnapshot.progress`)."""
        self.set_fields(**{UNITS_TOTAL + stage: int(total), UNITS_NAME + stage: unit})

    def task_failed(self, task_key: str, error: str) -> bool:
        """Mark task ``task_key`` failed with ``error`` (text capped at ``MAX_ERROR_CHARS``): it
        counts as finished; the first failure of a key is logged at ERROR. True the first time."""
        error = _text(error, MAX_ERROR_CHARS)
        first = error.strip().splitlines()[-1:] or [""]
        line = _text(f"task {task_key} failed: {first[0]}", 600)
        return bool(
            self._run(
                scripts.job_task_failed,
                task_key=task_key,
                error=error,
                max_errors=MAX_ERRORS,
                log_line=line,
            )
        )

    def log(self, message: str, level: str = "INFO") -> None:
        """Append a log line (``message`` capped at ``MAX_LOG_MESSAGE_CHARS``; the newest
        ``MAX_LOG_LINES`` lines are kept). level: default ``"INFO"``."""
        self._run(
            scripts.job_log,
            level=str(level).upper(),
            message=_text(message, MAX_LOG_MESSAGE_CHARS),
        )

    def finish(
        self, status: str, *, reason: str | None = None, result: dict[str, Any] | None = None
    ) -> bool:
        """Move the job to terminal ``status`` (``Done``, ``Failed`` or ``Canceled``), setting
        ``finished_at``, ``reason`` (default None) and ``result`` (JSON-able dict, default None).
        Atomic, first wins: False when the job was already terminal."""
        if status not in TERMINAL:
            raise ValueError(f"status must be one of {sorted(TERMINAL)}, not {status!r}")
        reason_text = "" if reason is None else _text(reason, MAX_REASON_CHARS)
        result_text = "" if result is None else json.dumps(result)
        return bool(
            self._run(scripts.job_finish, status=status, reason=reason_text, result=result_text)
        )

    def request_cancel(self) -> bool:
        """Set the durable cancel flag; a ``Pending`` job is finished ``Canceled`` at once (a
        running one is stopped by its pipeline, which checks :attr:`cancel_requested`).
        Returns False when the job was already terminal (then nothing changes)."""
        return bool(self._run(scripts.job_request_cancel))

    def touch(self) -> None:
        """Heartbeat: set ``last_progress_at`` to now."""
        self._run(scripts.job_set_fields, fields=())

    def put_launch(self, stage: str, launch: dict[str, Any]) -> bool:
        """Keep what stage ``stage``'s chord was launched with (JSON-able ``launch``: the run's
        data and the ``[key, item]`` of each member), for :meth:`launch`. False on a terminal
        job (nothing kept)."""
        return bool(self._run(scripts.job_put_launch, stage=stage, value=json.dumps(launch)))

    def launch(self, stage: str) -> dict[str, Any] | None:
        """What :meth:`put_launch` kept for ``stage`` (None when nothing was)."""
        raw = self.client.hget(self.keys["members"], stage)
        return json.loads(raw) if raw else None

    def finished_keys(self) -> set[str]:
        """Keys of the finished tasks (done or failed)."""
        return set(self.client.smembers(self.keys["done"]))

    def set_fields(self, **fields: str | int | float) -> None:
        """Set small extra ``meta`` fields (e.g. ``stage_deadline``); names the record manages
        itself (``RESERVED_FIELDS``) are refused."""
        reserved = sorted(set(fields) & RESERVED_FIELDS)
        if reserved:
            raise ValueError(f"fields {reserved} are managed by JobRecord; use another name")
        if not fields:
            return
        pairs = [(f, repr(v) if isinstance(v, float) else str(v)) for f, v in fields.items()]
        self._run(scripts.job_set_fields, fields=pairs)

    def add_cost(self, instance_type: str, instance_seconds: float) -> None:
        """Add a task's ``instance_seconds`` (run time / its worker's slots) on
        ``instance_type`` to the job's cost (``meta`` field ``cost_s:<instance_type>``)."""
        self._run(
            scripts.job_add_cost,
            field=COST_FIELD_PREFIX + instance_type,
            amount=repr(float(instance_seconds)),
        )

    def cost_seconds(self) -> dict[str, float]:
        """Instance-seconds of the job's tasks by instance type (see :meth:`add_cost`)."""
        meta = self.client.hgetall(self.keys["meta"])
        return {
            f[len(COST_FIELD_PREFIX) :]: float(v)
            for f, v in meta.items()
            if f.startswith(COST_FIELD_PREFIX)
        }

    # ------------------------------------------------------------------ reads

    def get_field(self, name: str) -> str | None:
        """One ``meta`` field (None when absent)."""
        return self.client.hget(self.keys["meta"], name)

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel was asked (one HGET; False if the record is gone)."""
        return self.client.hget(self.keys["meta"], "cancel_requested") == "1"

    def config(self) -> dict[str, Any]:
        """The ``config`` given at creation."""
        raw = self.get_field("config")
        if raw is None:
            raise self.not_found()
        return json.loads(raw)

    def _queue_snapshot(self, pipe: Any, errors: bool) -> None:
        pipe.hgetall(self.keys["meta"])
        pipe.scard(self.keys["done"])
        pipe.scard(self.keys["failed"])
        if errors:
            pipe.hgetall(self.keys["errors"])

    def _build_snapshot(self, replies: list[Any], errors: bool) -> JobSnapshot:
        meta, done, failed = replies[0], replies[1], replies[2]
        if not meta:
            raise self.not_found()
        return _snapshot_from(self.job_id, meta, done, failed, replies[3] if errors else {})

    def snapshot(self, *, errors: bool = True) -> JobSnapshot:
        """The job's state in one round trip. errors: include per-task errors (default True).
        Raises :class:`~fused_celery.errors.JobNotFoundError` when the record is gone."""
        pipe = self.client.pipeline(transaction=True)
        self._queue_snapshot(pipe, errors)
        return self._build_snapshot(pipe.execute(), errors)

    def logs(self, since_ms: int | None = None) -> list[dict[str, Any]]:
        """Kept log lines, oldest first, as ``{seq, ts_ms, level, message}``; since_ms: only
        lines with ``ts_ms >= since_ms`` (default None: all)."""
        entries = _parse_logs(self.client.lrange(self.keys["logs"], 0, -1))
        if since_ms is not None:
            entries = [e for e in entries if e["ts_ms"] >= since_ms]
        return entries

    def logs_after(self, seq: int) -> tuple[int, list[dict[str, Any]]]:
        """``(latest seq, kept lines with seq > seq)`` in one round trip (for tailing)."""
        out = scripts.job_logs_after(self.client, keys=self.keys, args={"seq": seq})
        return int(out[0]), _parse_logs(out[1:])

    def poll(
        self, seq: int, *, errors: bool = False
    ) -> tuple[JobSnapshot, int, list[dict[str, Any]]]:
        """``(snapshot, latest seq, lines after seq)`` in one round trip. errors: as in
        :meth:`snapshot` (default False)."""
        pipe = self.client.pipeline(transaction=True)
        self._queue_snapshot(pipe, errors)
        scripts.job_logs_after(pipe, keys=self.keys, args={"seq": seq})
        replies = pipe.execute()
        snap = self._build_snapshot(replies[:-1], errors)
        out = replies[-1]
        return snap, int(out[0]), _parse_logs(out[1:])

    @contextlib.contextmanager
    def terminal_wait(self) -> Iterator[Callable[[float], None]]:
        """A ``wait(seconds)`` that sleeps up to ``seconds`` but returns as soon as the job
        becomes terminal, from a subscription to its channel (:func:`~.keys.job_events_channel`)
        made before this yields: read a snapshot after entering, then wait, and no end is
        missed. Without a working subscription it sleeps the whole time."""
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(keys.job_events_channel(self.job_id))
            pubsub.get_message(timeout=5.0)  # the confirmation: subscribed from here on
            live = True
        except redis.RedisError:
            live = False

        def wait(seconds: float) -> None:
            end = time.monotonic() + seconds
            while live and (left := end - time.monotonic()) > 0:
                try:
                    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                except redis.RedisError:
                    break
                if message is not None:
                    return
            time.sleep(max(0.0, end - time.monotonic()))

        try:
            yield wait
        finally:
            pubsub.close()

    def __repr__(self) -> str:
        return f"<JobRecord {self.job_id} at {mask_url(self.url)}>"


def list_jobs(n: int = 5, url: str | None = None) -> list[JobSnapshot]:
    """The ``n`` most recently created jobs (default 5), newest first, skipping (and dropping
    from the index) jobs whose record expired. url: default ``options.resolved_result_backend``.
    """
    url = _resolve_url(url)
    client = redis_client(url)
    found: list[JobSnapshot] = []
    seen: set[str] = set()
    start, batch = 0, max(n, 20)
    while len(found) < n:
        ids = client.zrevrange(keys.JOBS_INDEX, start, start + batch - 1)
        if not ids:
            break
        start += len(ids)
        records = [JobRecord(job_id, url) for job_id in ids if job_id not in seen]
        seen.update(ids)
        pipe = client.pipeline(transaction=False)
        for record in records:
            record._queue_snapshot(pipe, True)
        replies = pipe.execute()
        gone = []
        for i, record in enumerate(records):
            part = replies[4 * i : 4 * i + 4]
            if not part[0]:
                gone.append(record.job_id)
            elif len(found) < n:
                found.append(record._build_snapshot(part, True))
        if gone:  # ranks after ours move up by the number removed
            start -= client.zrem(keys.JOBS_INDEX, *gone)
    return found
