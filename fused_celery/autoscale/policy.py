"""The scaling policy: from a queue's backlog and its group's state to a desired capacity.

Pure (no I/O, no clock: ``now`` is a parameter): the loop (:mod:`fused_celery.autoscale.loop`)
reads the backlog (:mod:`fused_celery.autoscale.metrics`), calls :func:`decide` once per group and
cycle, and hands the result to an actuator. Capacities count workers (instances); a worker has
``slots`` slots (Celery processes), each running one message at a time.

The rules, in order:

1. *Work* is what the queue needs in slots: the larger of the messages in the queue (ready plus
   delivered-but-unacknowledged) and the pools' remaining entries, weighted (a message of a pool
   runs ``n_processes_per_worker`` entries at once: see :class:`Backlog`).
2. *Target* = ``ceil(work / (slots * target_backlog_per_slot))`` workers.
3. *Floor*: never below what running work needs: the workers that are busy right now and
   ``ceil(in_flight / slots)``, nor below ``min_size``. *Ceiling*: never above ``max_size``
   (the ceiling wins over the floor).
4. Scale out at once, at most ``scale_out_step`` workers a cycle (0: no limit).
5. Scale in only when the target has been below the current capacity for ``scale_in_cooldown``
   seconds since the last change, and to zero (or ``min_size``) only after the queue has been
   idle (no work at all) for ``idle_before_zero`` seconds. While there is work, scale in never
   goes below one worker.

Because scale-in waits for the cooldown and scale-out goes straight to the target, a steady
backlog gives a capacity that moves in one direction and then stays (no flapping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["Backlog", "Decision", "GroupSettings", "GroupState", "decide"]


@dataclass(frozen=True)
class GroupSettings:
    """How one group (one queue) scales.

    min_size / max_size: capacity bounds in workers (defaults 0 / 10). slots: Celery processes
    per worker (default 1). target_backlog_per_slot: messages a slot may have waiting before
    another worker is wanted (default 1.0: every message starts at once). scale_out_step: at
    most this many workers added per cycle (default 0: no limit). scale_in_cooldown: seconds
    after a change before capacity may shrink (default 60). idle_before_zero: seconds without
    any work before the group goes to ``min_size`` (default 300).
    """

    min_size: int = 0
    max_size: int = 10
    slots: int = 1
    target_backlog_per_slot: float = 1.0
    scale_out_step: int = 0
    scale_in_cooldown: float = 60.0
    idle_before_zero: float = 300.0

    def __post_init__(self) -> None:
        if self.min_size < 0 or self.max_size < self.min_size:
            raise ValueError(
                f"group sizes must satisfy 0 <= min_size <= max_size, got "
                f"min_size={self.min_size}, max_size={self.max_size}"
            )
        if self.slots < 1 or self.target_backlog_per_slot <= 0 or self.scale_out_step < 0:
            raise ValueError(
                "slots must be >= 1, target_backlog_per_slot > 0 and scale_out_step >= 0"
            )


@dataclass(frozen=True)
class Backlog:
    """One queue's work, as read in one cycle.

    ready: messages waiting in the queue. in_flight: messages delivered to a worker and not yet
    acknowledged (running, or reserved by a worker). pool_slots: slots the pools routed to the
    queue still need: per pool ``ceil(remaining entries / n_processes_per_worker)``, at most its
    ``max_workers`` lanes (it may exceed ``ready + in_flight``: a capped pool publishes its
    backlog a lane at a time). busy_workers: workers running a message right now.
    """

    ready: int = 0
    in_flight: int = 0
    pool_slots: int = 0
    busy_workers: int = 0

    @property
    def work(self) -> int:
        """Slots wanted: ``max(ready + in_flight, pool_slots)``."""
        return max(self.ready + self.in_flight, self.pool_slots)


@dataclass(frozen=True)
class GroupState:
    """What the loop remembers of a group between cycles (kept in Redis, so a restarted loop
    resumes). current: the capacity now. last_change: when the capacity last changed (None:
    not since the loop first saw it). idle_since: since when the queue has had no work (None:
    it has work)."""

    current: int = 0
    last_change: float | None = None
    idle_since: float | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`: ``desired`` capacity, the ``state`` to remember, the
    ``target`` and ``floor`` it came from, and a short ``reason``."""

    desired: int
    state: GroupState
    target: int
    floor: int
    reason: str


def floor_of(backlog: Backlog, settings: GroupSettings) -> int:
    """Workers that running work needs: busy workers, ``ceil(in_flight / slots)``, ``min_size``."""
    return max(
        settings.min_size,
        backlog.busy_workers,
        math.ceil(backlog.in_flight / settings.slots),
    )


def decide(backlog: Backlog, state: GroupState, settings: GroupSettings, now: float) -> Decision:
    """The desired capacity of a group (see the module docstring for the rules).

    backlog: the queue's work this cycle. state: what was remembered (its ``current`` is the
    capacity observed now). settings: the group's settings. now: seconds (any clock, the same
    for every call).
    """
    work = backlog.work
    idle_since = None if work > 0 else (state.idle_since if state.idle_since is not None else now)
    target = math.ceil(work / (settings.slots * settings.target_backlog_per_slot))
    floor = floor_of(backlog, settings)
    current = state.current
    reason = "steady"
    desired = current
    if target > current:
        step = settings.scale_out_step
        desired = min(target, current + step) if step else target
        reason = "scale out: backlog"
    elif target < current:
        cooled = state.last_change is None or now - state.last_change >= settings.scale_in_cooldown
        if work == 0:
            if now - idle_since >= settings.idle_before_zero and cooled:
                desired, reason = 0, "scale in: idle"
            else:
                reason = "hold: idle, waiting for idle_before_zero"
        elif cooled:
            desired, reason = max(1, target), "scale in: backlog below capacity"
        else:
            reason = "hold: scale-in cooldown"
    if desired < floor:
        desired, reason = floor, reason + " (floor: running work / min_size)"
    if desired > settings.max_size:
        desired, reason = settings.max_size, reason + " (ceiling: max_size)"
    changed = desired != current
    new_state = replace(
        state,
        current=desired,
        last_change=now if changed else state.last_change,
        idle_since=idle_since,
    )
    return Decision(desired, new_state, target, floor, reason)
