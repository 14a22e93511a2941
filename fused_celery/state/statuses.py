"""Every status a pool entry or a job can have, declared once.

Python code imports the names below (``fused_celery.engines.base`` re-exports the entry
statuses under its old names ``PENDING``, ``STATUSES``, ``FINISHED``, ...). The Lua scripts of
:mod:`fused_celery.state.scripts` never spell a status: the registry generates, from this module,
a prologue that every script starts with (:func:`fused_celery.state.scripts.status_prologue`)::

    local ENTRY = {pending = 'pending', running = 'running', ...}    -- ENTRY.pending
    local ENTRY_STATUSES = {'pending', 'running', ...}               -- in declaration order
    local ENTRY_FINISHED = {success = true, error = true, ...}       -- ENTRY_FINISHED[st]
    local JOB = {Pending = 'Pending', Running = 'Running', ...}      -- JOB.Done
    local JOB_TERMINAL = {Done = true, Failed = true, Canceled = true}

so a status name is written here and nowhere else (``tests/state/test_statuses.py`` checks that
no ``.lua`` file quotes one).

Entry statuses (``P:state`` values, ``P:counts`` fields)::

    pending -> running -> success | error | timeout
    pending -> cancelled
    error | timeout -> pending        (retry: automatic up to max_retry, or JobPool.retry())

Job statuses (``J:meta.status``): ``Pending`` (created, no stage started) -> ``Running`` (first
stage started) -> one of ``Done``, ``Failed``, ``Canceled`` (terminal, first one wins).
"""

from __future__ import annotations

# --------------------------------------------------------------------------- pool entries

PENDING = "pending"
RUNNING = "running"
SUCCESS = "success"
ERROR = "error"
TIMEOUT = "timeout"
CANCELLED = "cancelled"

#: Every entry status, in the order shown (``counts``, progress bars).
ENTRY_STATUSES: tuple[str, ...] = (PENDING, RUNNING, SUCCESS, ERROR, TIMEOUT, CANCELLED)
#: An entry in one of these is done (its attempt will not change unless retried).
ENTRY_FINISHED: frozenset[str] = frozenset({SUCCESS, ERROR, TIMEOUT, CANCELLED})
#: Finished without a value (retried automatically up to ``max_retry``).
ENTRY_FAILED: frozenset[str] = frozenset({ERROR, TIMEOUT})
#: Finished with an outcome (value or error) stored in ``P:outcome``.
ENTRY_WITH_OUTCOME: frozenset[str] = frozenset({SUCCESS, ERROR, TIMEOUT})

# --------------------------------------------------------------------------- jobs

JOB_PENDING = "Pending"
JOB_RUNNING = "Running"
JOB_DONE = "Done"
JOB_FAILED = "Failed"
JOB_CANCELED = "Canceled"

#: Every job status, in lifecycle order.
JOB_STATUSES: tuple[str, ...] = (JOB_PENDING, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELED)
#: A job in one of these has finished (``JobRecord.finish``: the first one wins).
JOB_TERMINAL: frozenset[str] = frozenset({JOB_DONE, JOB_FAILED, JOB_CANCELED})
