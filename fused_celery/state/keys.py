"""Every Redis key of a remote pool's record: names, types, contents and lifetimes, in one place.

A pool submitted to the Celery engine is a handful of keys under ``fc:pool:<pool_id>:`` (written
``P:`` below). Workers and clients (the submitting process, or any process that attaches later)
read and write only these keys. Celery stores no ``celery-task-meta-<task id>`` results for the
pool's tasks (``ignore_result``): a batched task runs several entries, each with its own state,
all of which are here.

================ =======  =========================================================================
key              type     holds
================ =======  =========================================================================
``P:meta``       hash     ``udf`` (JSON), ``n``, ``batch_size``, ``threads``, ``max_workers``,
                          ``lanes``, ``max_retry``, ``queue``, ``cache`` (0/1), ``cache_max_age``,
                          ``cache_digest``, ``created``, ``retried``, ``version`` (record format),
                          ``constants`` (canonical JSON of the encoded constant kwargs, stored
                          once; "" for none), ``args_folder`` (where arguments stored by
                          reference are; "" for none)
``P:args``       list     canonical JSON of each entry's codec-encoded kwargs, by position
                          (constants left out; large ones as ``{"blob": ...}`` references)
``P:state``      hash     position -> ``"<status>|<attempt>|<started>|<finished>"`` (attempt: the
                          entry's current attempt, 1-based; times in epoch seconds or empty)
``P:outcome``    hash     position -> JSON ``{ok, value | ref, error}`` of the final attempt
``P:logs``       hash     position -> captured stdout/stderr (capped at ``max_log_bytes``)
``P:hosts``      hash     position -> hostname of the worker that ran it (``cache``: a cache hit)
``P:tasks``      hash     position -> Celery task id of the entry's latest attempt
``P:history``    hash     ``"<pos>:<attempt>"`` -> JSON of an attempt that was retried or
                          superseded (status, error, logs tail, times, host)
``P:deliveries`` hash     ``"<pos>:<attempt>"`` -> times a worker began that attempt (redelivery
                          after a lost worker; an attempt begun too often is failed)
``P:cancelled``  set      cancelled positions (durable: revoke lists live in worker memory)
``P:begun``      set      Celery task ids that a worker began (drops duplicate publishes)
``P:lanes``      hash     ``max_workers`` lanes: lane -> work item in flight (``end`` when idle),
                          ``"<lane>:prev"`` -> the item whose worker dispatched it
``P:backlog``    list     work items the lanes take next, in order: ``b<k>`` (batch k) or
                          ``r<tag>.<k>`` (a retry item)
``P:items``      hash     retry item -> JSON list of its positions
``P:counts``     hash     status -> number of entries (kept in step with ``state`` by the scripts)
``P:version``    string   counter, incremented on every state change
``P:events``     channel  PUBLISHed (the new version) when entries finish, are cancelled or retried;
                          a worker's finish in a small pool (``events.SMALL_POOL_ENTRIES``)
                          publishes JSON ``{v, c, s, o, l}`` instead: the version and the
                          ``counts``, ``state``, ``outcome`` and ``logs`` hashes, when that fits
                          in ``events.EVENT_PAYLOAD_MAX_BYTES``
``fc:tomb:<id>`` string   creation time; outlives the record by ``TOMBSTONE_GRACE`` so that
                          reading an expired pool can say "expired"
``fc:pools``     zset     pool id -> creation time (listing; trimmed to ``result_expires``)
``fc:cache:<h>`` hash     ``o`` (outcome JSON), ``l`` (logs), ``t`` (time) of a successful call,
                          kept ``cache_max_age`` seconds; an error is never cached
================ =======  =========================================================================

Lifetimes: every ``fc:pool:<id>:*`` key is created at submit with a TTL of
``options.result_expires`` (hashes and sets get a placeholder member :data:`PLACEHOLDER` so that
the key, and its TTL, exist from the start; later writes never create a key, because every worker
write runs in a Lua script that first checks the record still exists). ``JobPool.retry()`` renews
the TTL. Large results and arguments live in storage (``options.storage_root``, see
:mod:`fused_celery.blobs`), referenced from ``outcome``, ``args`` and ``meta`` (``constants``,
``args_folder``); ``JobPool.delete()`` deletes them with the record, and once a record has
expired workers delete them (:mod:`fused_celery.state.blob_sweep`, at most once a minute per
cluster: ``fc:sweep:blobs`` is the guard, a string with a 60 s TTL).

Jobs
----

A job (a multi-stage pipeline such as an ingest, :mod:`fused_celery.state.job_record`) is a few keys
under ``fc:job:<job_id>:`` (written ``J:`` below). Clients and workers write them only through
the Lua scripts of :class:`~fused_celery.state.job_record.JobRecord`, each of which first checks
that ``J:meta`` still exists (so a late write never recreates part of an expired job).

================ =======  =========================================================================
key              type     holds
================ =======  =========================================================================
``J:meta``       hash     ``job_id``, ``name``, ``kind``, ``instance_type``, ``output``, ``config``
                          (JSON), ``status`` (``Pending|Running|Done|Failed|Canceled``), ``stage``
                          (latest stage started), ``total_tasks``, ``created_at``, ``started_at``,
                          ``finished_at``, ``last_progress_at`` (epoch seconds), ``reason``,
                          ``result`` (JSON), ``cancel_requested`` (``1`` once asked), ``log_seq``
                          (lines ever logged), ``version``; ``cost_s:<instance type>`` (the
                          tasks' instance-seconds, ``JobRecord.add_cost``); plus small fields set
                          by the pipeline (``JobRecord.set_fields``, e.g. a stage deadline)
``J:stages``     hash     stage name -> its number of tasks (makes ``start_stage`` idempotent)
``J:done``       set      keys of finished tasks, done or failed (``finished_tasks`` = SCARD)
``J:failed``     set      keys of failed tasks (``failed_tasks`` = SCARD)
``J:errors``     hash     task key -> error text (each capped at ``MAX_ERROR_CHARS``; at most
                          ``MAX_ERRORS`` tasks kept)
``J:logs``       list     JSON ``{seq, ts_ms, level, message}`` per line, oldest first; the newest
                          ``MAX_LOG_LINES`` are kept
``J:members``    hash     stage name -> JSON ``{"data": run, "members": [[key, item], ...]}`` of
                          the stage's chord as launched, so that the watchdog can send again a
                          member whose message was lost (``JobRecord.put_launch``)
``J:events``     channel  PUBLISHed (the status) when the job becomes terminal
``fc:jobs``      zset     job id -> creation time (``get_jobs``; the newest ``MAX_INDEXED_JOBS``
                          are kept, ids whose record expired are dropped when met)
================ =======  =========================================================================

Lifetimes: every ``fc:job:<id>:*`` key expires ``options.result_expires`` seconds after the job's
latest write (each write script renews the TTL of all of them); ``fc:jobs`` has no TTL. The job's
output table lives in storage and is not deleted with the record.

Workers and the autoscaler
--------------------------

==========================  ======  =============================================================
key                         type    holds
==========================  ======  =============================================================
``fc:consumers:<queue>``    zset    worker hostname -> time of its latest heartbeat (every few
                                    seconds while it consumes ``queue``; removed at shutdown)
``fc:workerinfo:<host>``    string  JSON ``{queues, concurrency, instance_type, started}`` of a
                                    worker (for per-job cost), kept ``result_expires`` seconds
``fc:worker:<hostname>``    set     kombu delivery tags of the messages the worker holds, with a
                                    heartbeat TTL (:mod:`~fused_celery.engines.celery.liveness`)
``fc:workers``              set     hostnames of workers that heartbeat their messages
``fc:autoscale:leader``     string  the acting autoscaler's id, with a TTL (the leader lock)
``fc:autoscale:group:<q>``  hash    what the autoscaler remembers of queue ``q``'s group:
                                    ``current``, ``last_change``, ``idle_since``
``fc:autoscale:local:<q>``  hash    the local actuator's workers of queue ``q``: hostname -> pid
``fc:autoscale:served``     hash    queue -> JSON ``{max_size, disk_size_gb, until}``: groups
                                    the autoscaler can start workers for (read at submit)
==========================  ======  =============================================================

Workers write their heartbeats (:mod:`fused_celery.state.workers`) off the task path; the
autoscaler (:mod:`fused_celery.autoscale.loop`) owns the ``fc:autoscale:*`` keys.
"""

from __future__ import annotations

from fused_celery.options import options

PREFIX = "fc"

#: Member/field written into every hash and set at submit so the key (and its TTL) exists.
PLACEHOLDER = "_"

#: Seconds a tombstone outlives the pool record (30 days).
TOMBSTONE_GRACE = 30 * 24 * 3600

#: Bumped when the layout changes incompatibly; stored in ``meta.version``.
RECORD_VERSION = 1

#: Parts of a pool record (the scripts of :mod:`fused_celery.state.scripts` name them).
PARTS: tuple[str, ...] = (
    "meta",
    "args",
    "state",
    "outcome",
    "logs",
    "hosts",
    "tasks",
    "history",
    "deliveries",
    "cancelled",
    "begun",
    "lanes",
    "backlog",
    "items",
    "counts",
    "version",
)

#: Parts that are hashes/sets created with :data:`PLACEHOLDER` (the rest are written in full).
PLACEHOLDER_HASHES: tuple[str, ...] = (
    "outcome",
    "logs",
    "hosts",
    "history",
    "deliveries",
    "lanes",
    "items",
)
PLACEHOLDER_SETS: tuple[str, ...] = ("cancelled", "begun")

POOLS_INDEX = f"{PREFIX}:pools"

#: Held (``SET NX EX``) by the worker sweeping expired pools' blobs; its TTL spaces sweeps.
BLOB_SWEEP_GUARD = f"{PREFIX}:sweep:blobs"


def pool_key(pool_id: str, part: str) -> str:
    """The Redis key of ``part`` (one of :data:`PARTS`) of pool ``pool_id``."""
    return f"{PREFIX}:pool:{pool_id}:{part}"


def pool_keys(pool_id: str) -> dict[str, str]:
    """All record keys of pool ``pool_id``, by part name."""
    return {part: pool_key(pool_id, part) for part in PARTS}


def events_channel(pool_id: str) -> str:
    """The pub/sub channel announcing state changes of pool ``pool_id``."""
    return f"{PREFIX}:pool:{pool_id}:events"


def tombstone_key(pool_id: str) -> str:
    """The key that remembers pool ``pool_id`` existed, after its record expired."""
    return f"{PREFIX}:tomb:{pool_id}"


CACHE_PREFIX = f"{PREFIX}:cache:"


def cache_key(digest: str) -> str:
    """The Redis key of a cached result (``digest``: sha1 of the UDF digest and the arguments)."""
    return CACHE_PREFIX + digest


def history_field(position: int, attempt: int) -> str:
    """Field of ``history`` / ``deliveries`` for one attempt of one entry."""
    return f"{position}:{attempt}"


def record_ttl() -> int:
    """Seconds a pool record lives: ``options.result_expires``."""
    return int(options.result_expires)


def tombstone_ttl() -> int:
    """Seconds a tombstone lives: ``result_expires + TOMBSTONE_GRACE``."""
    return int(options.result_expires) + TOMBSTONE_GRACE


# --------------------------------------------------------------------------- jobs

#: Index of jobs by creation time (``fused_celery.api.get_jobs``).
JOBS_INDEX = f"{PREFIX}:jobs"

#: Parts of a job record (the job scripts of :mod:`fused_celery.state.scripts` name them).
JOB_PARTS: tuple[str, ...] = ("meta", "stages", "done", "failed", "errors", "logs", "members")


def job_key(job_id: str, part: str) -> str:
    """The Redis key of ``part`` (one of :data:`JOB_PARTS`) of job ``job_id``."""
    return f"{PREFIX}:job:{job_id}:{part}"


def job_events_channel(job_id: str) -> str:
    """The pub/sub channel on which job ``job_id``'s record announces its terminal status (so
    that a waiter wakes at once instead of at its next poll)."""
    return f"{PREFIX}:job:{job_id}:events"


def job_keys(job_id: str) -> dict[str, str]:
    """All record keys of job ``job_id``, by part name (in :data:`JOB_PARTS` order)."""
    return {part: job_key(job_id, part) for part in JOB_PARTS}


# --------------------------------------------------------------------------- workers, autoscaler

AUTOSCALE_LEADER = f"{PREFIX}:autoscale:leader"
AUTOSCALE_SERVED = f"{PREFIX}:autoscale:served"


def consumers_key(queue: str) -> str:
    """The zset of live consumers of ``queue`` (hostname -> latest heartbeat, epoch seconds)."""
    return f"{PREFIX}:consumers:{queue}"


def worker_info_key(hostname: str) -> str:
    """The description of worker ``hostname`` (JSON: its queues and slots, for the autoscaler;
    apart from :func:`worker_key`, the liveness heartbeat's set of held messages)."""
    return f"{PREFIX}:workerinfo:{hostname}"


def autoscale_group_key(queue: str) -> str:
    """What the autoscaler remembers of ``queue``'s group (a hash)."""
    return f"{PREFIX}:autoscale:group:{queue}"


def autoscale_local_key(queue: str) -> str:
    """The local actuator's workers of ``queue`` (a hash: hostname -> pid)."""
    return f"{PREFIX}:autoscale:local:{queue}"


# --------------------------------------------------------------------------- workers

#: Workers that heartbeat: a set of hostnames (a hostname whose heartbeat expired is removed by
#: the sweep that finds it gone). ``fc:worker:<hostname>`` (:func:`worker_key`), a set, holds
#: the kombu delivery tags of the messages that worker holds (plus :data:`PLACEHOLDER`), with a
#: TTL of ``options.worker_heartbeat_timeout``, rewritten while the worker lives (see
#: :mod:`fused_celery.engines.celery.liveness`). Both live in the broker's Redis.
WORKERS_INDEX = f"{PREFIX}:workers"


def worker_key(hostname: str) -> str:
    """The heartbeat key of worker ``hostname`` (its node name, ``name@host``)."""
    return f"{PREFIX}:worker:{hostname}"
