"""The engine interface: what a :class:`~fused_celery.pool.JobPool` needs from whatever runs it.

An engine runs the entries of one pool. ``JobPool`` talks to it only through :class:`Engine`, so
the local process pool and the Celery cluster are interchangeable.

Entry lifecycle (``EntryState.status``)::

    pending -> running -> success | error | timeout
    pending -> cancelled
    error | timeout -> pending        (retry: automatic up to max_retry, or JobPool.retry())
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fused_celery.autoscale.cost import CostRow
from fused_celery.execute import Outcome
from fused_celery.state import statuses

# The entry statuses, declared in fused_celery.state.statuses; re-exported under their old names.
PENDING = statuses.PENDING
RUNNING = statuses.RUNNING
SUCCESS = statuses.SUCCESS
ERROR = statuses.ERROR
TIMEOUT = statuses.TIMEOUT
CANCELLED = statuses.CANCELLED
STATUSES: tuple[str, ...] = statuses.ENTRY_STATUSES
FINISHED: frozenset[str] = statuses.ENTRY_FINISHED
FAILED: frozenset[str] = statuses.ENTRY_FAILED


@dataclass
class EntryState:
    """What is known about one entry right now.

    status: one of :data:`STATUSES`. attempt: attempts started so far (0: never ran).
    started / finished: epoch seconds of the latest attempt's run (None until known).
    """

    status: str = PENDING
    attempt: int = 0
    started: float | None = None
    finished: float | None = None


@dataclass
class PoolSpec:
    """Everything needed to run (or reattach to) a pool.

    pool_id: unique id. udf: the UDF's JSON form. args: decoded keyword arguments per entry
    (display, ``arg_df``). encoded: codec-encoded keyword arguments per entry (the wire form),
    constants included. constants: the encoded constant keyword arguments (``udf.map(...,
    **kwargs)``; their keys are in every entry of ``encoded``; default none).
    max_workers: cap on entries running at once (None: engine default). batch_size: entries per
    worker invocation (``n_processes_per_worker``, default 1). max_retry: automatic retries of a
    failed entry (default 2). cache / cache_max_age: reuse results of identical calls for this many
    seconds. queue: Celery queue (``<instance_type>[@<region>][:<image_name>]``, see
    :mod:`fused_celery.queues`) or None. disk_size_gb: disk the entries need (None: any; checked
    at submit against the queue's group when known). created_at: epoch seconds.
    """

    udf: dict[str, Any]
    args: list[dict[str, Any]]
    encoded: list[dict[str, Any]]
    constants: dict[str, Any] = field(default_factory=dict)
    max_workers: int | None = None
    batch_size: int = 1
    max_retry: int = 2
    cache: bool = True
    cache_max_age: int | None = None
    queue: str | None = None
    disk_size_gb: int | None = None
    pool_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    created_at: float = field(default_factory=time.time)

    @property
    def n(self) -> int:
        """Number of entries."""
        return len(self.encoded)


class Engine(ABC):
    """Runs the entries of one pool. Implementations: ``local`` (processes) and ``celery``."""

    name: str = "engine"

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self.retried_at: float | None = None

    @property
    def pool_id(self) -> str:
        """The pool's id."""
        return self.spec.pool_id

    @abstractmethod
    def submit(self) -> None:
        """Start running every entry."""

    @abstractmethod
    def states(self) -> list[EntryState]:
        """A snapshot of every entry's state, in argument order."""

    @abstractmethod
    def outcomes(self, positions: Sequence[int]) -> dict[int, Outcome]:
        """Outcomes of the latest attempt of finished entries among ``positions``.

        Entries whose outcome is not available (not finished, cancelled) are left out.
        """

    @abstractmethod
    def wait_for_change(self, timeout: float) -> None:
        """Block until some entry may have changed state, or ``timeout`` seconds passed."""

    @abstractmethod
    def cancel(self) -> tuple[int, int]:
        """Cancel entries that are not running yet.

        Returns ``(cancelled, running)``: how many were cancelled now and how many were running.
        """

    @abstractmethod
    def retry(self, positions: Sequence[int]) -> None:
        """Run the given failed entries again, as new attempts of the same entries."""

    def delete(self) -> None:
        """Cancel what has not started and drop the pool's stored state (default: cancel and
        release the workers)."""
        self.cancel()
        self.shutdown(wait=False)

    def shutdown(self, wait: bool = True) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources (default: nothing to release).

        wait: block until running entries finish (default True).
        """

    def cost_rows(self) -> list[CostRow]:
        """Each finished run of an entry as a :class:`~fused_celery.autoscale.cost.CostRow`
        (default: latest attempts, on no known instance type, one slot each)."""
        return [
            CostRow(None, s.finished - s.started)
            for s in self.states()
            if s.started is not None and s.finished is not None
        ]

    def counts(self) -> Counter[str]:
        """Number of entries per status."""
        return Counter(state.status for state in self.states())


class Notifier:
    """A condition that engines pulse when states change, for :meth:`Engine.wait_for_change`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._version = 0

    def pulse(self) -> None:
        """Wake every waiter."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        """Wait for the next pulse, at most ``timeout`` seconds."""
        with self._cond:
            seen = self._version
            self._cond.wait_for(lambda: self._version != seen, timeout=timeout)
