"""The autoscaler's loop: observe, decide, act, log; once per ``options.autoscale_interval``.

A cycle (:meth:`Autoscaler.cycle`):

1. takes or renews the leader lock (``keys.AUTOSCALE_LEADER``, TTL ``autoscale_leader_ttl``): only
   the leader acts, so several autoscalers (on several hosts) are safe; the others stand by;
2. observes the groups (the actuator), the backlog of their queues (one Redis call,
   :func:`~fused_celery.autoscale.metrics.read_backlog`) and, when any group has workers, which
   workers run entries (one Celery broadcast);
3. decides each group's capacity (:func:`~fused_celery.autoscale.policy.decide`) from what it
   observed and what it remembered in Redis (``keys.autoscale_group_key``), acts unless dry-run,
   and remembers the new state: killed and restarted, it resumes from there;
4. records the queues it serves (``keys.AUTOSCALE_SERVED``: a submit to such a queue is accepted
   while it has no worker yet, and its launch template's disk size is checked), publishes the
   backlog (CloudWatch, on AWS) and writes one JSON line per group and decision.

A dry run takes no lock, changes nothing (not even Redis) and logs what it would do.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TextIO

import redis

from fused_celery.autoscale.actuators import Actuator, Ec2Actuator, Group
from fused_celery.autoscale.metrics import WorkerActivity, read_backlog, worker_activity
from fused_celery.autoscale.policy import GroupSettings, GroupState, decide
from fused_celery.options import AutoscaleGroupOptions, options
from fused_celery.queues import parse_queue
from fused_celery.state import keys, scripts, workers

logger = logging.getLogger(__name__)


def group_options(queue: str) -> AutoscaleGroupOptions:
    """The settings of ``queue``: ``options.autoscale_groups[queue]``, else of its instance
    type, else ``options.autoscale_defaults``."""
    found = options.autoscale_groups.get(queue)
    if found is None:
        try:
            instance_type = parse_queue(queue).instance_type
        except ValueError:
            instance_type = None
        found = options.autoscale_groups.get(instance_type or "")
    return found or options.autoscale_defaults


def settings_for(group: Group) -> GroupSettings:
    """The policy settings of ``group``: its options, within the group's own bounds."""
    opts = group_options(group.queue)
    max_size = min(opts.max_size, group.max_size)
    return GroupSettings(
        min_size=min(max(opts.min_size, group.min_size), max_size),
        max_size=max_size,
        slots=opts.slots or group.slots,
        target_backlog_per_slot=opts.target_backlog_per_slot,
        scale_out_step=opts.scale_out_step,
        scale_in_cooldown=opts.scale_in_cooldown,
        idle_before_zero=opts.idle_before_zero,
    )


def _load_state(raw: dict[str, str], current: int) -> GroupState:
    def num(name: str) -> float | None:
        value = raw.get(name)
        return float(value) if value not in (None, "") else None

    return GroupState(current=current, last_change=num("last_change"), idle_since=num("idle_since"))


class Autoscaler:
    """The loop over ``actuator``'s groups.

    actuator: what to act on. broker_url: the Redis of the broker and pool records (default
    ``options.broker_url``). dry_run: decide and log only (default False). out: where decision
    lines go (default stdout). owner: this loop's id in the leader lock (default host, pid and
    a random part). clock: wall-clock seconds (default ``time.time``).
    """

    def __init__(
        self,
        actuator: Actuator,
        *,
        broker_url: str | None = None,
        dry_run: bool = False,
        out: TextIO | None = None,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        url = broker_url or options.broker_url
        if not url:
            raise ValueError("the autoscaler needs a broker: set FUSED_CELERY_BROKER_URL")
        self.actuator = actuator
        self.broker_url = url
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30)
        self.dry_run = dry_run
        self.out = out or sys.stdout
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self._memory: dict[str, dict[str, str]] = {}  # dry run: state kept here, not in Redis
        self._last_cycle: float | None = None

    # ------------------------------------------------------------------ pieces

    def is_leader(self) -> bool:
        """Take or renew the leader lock; True when this loop holds it."""
        ttl_ms = int(options.autoscale_leader_ttl * 1000)
        got = scripts.autoscale_leader(
            self.client,
            keys={"lock": keys.AUTOSCALE_LEADER},
            args={"owner": self.owner, "ttl_ms": ttl_ms},
        )
        return int(got) == 1

    def release(self) -> None:
        """Give the leader lock up if this loop holds it (clean exit)."""
        if self.client.get(keys.AUTOSCALE_LEADER) == self.owner:
            self.client.delete(keys.AUTOSCALE_LEADER)

    def _states(self, groups: list[Group]) -> list[dict[str, str]]:
        if self.dry_run:
            return [self._memory.get(g.queue, {}) for g in groups]
        pipe = self.client.pipeline(transaction=False)
        for g in groups:
            pipe.hgetall(keys.autoscale_group_key(g.queue))
        return pipe.execute()

    def _remember(self, rows: list[tuple[str, GroupState, float]]) -> None:
        encoded = {
            queue: {
                "current": str(state.current),
                "last_change": "" if state.last_change is None else repr(state.last_change),
                "idle_since": "" if state.idle_since is None else repr(state.idle_since),
                "idle_instance_seconds": repr(idle),
            }
            for queue, state, idle in rows
        }
        if self.dry_run:
            self._memory.update(encoded)
            return
        pipe = self.client.pipeline(transaction=False)
        for queue, fields in encoded.items():
            pipe.hset(keys.autoscale_group_key(queue), mapping=fields)
        pipe.execute()

    def _emit(self, line: dict[str, Any]) -> None:
        self.out.write(json.dumps(line, sort_keys=True) + "\n")
        self.out.flush()

    # ------------------------------------------------------------------ a cycle

    def cycle(self) -> list[dict[str, Any]]:
        """One cycle (see the module docstring); returns the decision lines it logged."""
        now = self.clock()
        elapsed = 0.0 if self._last_cycle is None else max(0.0, now - self._last_cycle)
        self._last_cycle = now
        if not self.dry_run and not self.is_leader():
            line = {"ts": now, "event": "standby", "owner": self.owner,
                    "leader": self.client.get(keys.AUTOSCALE_LEADER)}  # fmt: skip
            self._emit(line)
            return [line]
        groups = self.actuator.groups()
        backlog = read_backlog(self.client, [g.queue for g in groups], now=now)
        activity = WorkerActivity()
        if any(g.current or g.draining for g in groups):
            try:
                activity = worker_activity(self.broker_url)
            except Exception as exc:  # noqa: BLE001 - decide without it (floor: in-flight)
                logger.warning("autoscale: workers did not answer inspect: %s", exc)
        states = self._states(groups)
        lines, remembered, figures = [], [], {}
        for group, raw in zip(groups, states):
            seen = backlog[group.queue]
            busy = activity.busy_on(group.queue)
            settings = settings_for(group)
            decision = decide(
                seen.backlog(len(busy)), _load_state(raw, group.current), settings, now
            )
            idle_workers = max(0, group.current - len(busy))
            idle_seconds = float(raw.get("idle_instance_seconds") or 0) + idle_workers * elapsed
            acted = False
            if not self.dry_run:
                if decision.desired != group.current:
                    self.actuator.set_capacity(group, decision.desired, busy)
                    acted = True
                else:
                    self.actuator.protect(group, busy)
            remembered.append((group.queue, decision.state, idle_seconds))
            figures[group.queue] = {
                "Ready": seen.ready,
                "InFlight": seen.in_flight,
                "PoolSlots": seen.pool_slots,
                "DesiredCapacity": decision.desired,
            }
            line = {
                "ts": now,
                "event": "decision",
                "queue": group.queue,
                "group": group.name,
                "current": group.current,
                "desired": decision.desired,
                "target": decision.target,
                "floor": decision.floor,
                "reason": decision.reason,
                "acted": acted,
                "dry_run": self.dry_run,
                "busy_workers": len(busy),
                "draining": group.draining,
                "idle_instance_seconds": round(idle_workers * elapsed, 3),
                "idle_instance_seconds_total": round(idle_seconds, 3),
                "settings": asdict(settings),
                **asdict(seen),
            }
            lines.append(line)
            self._emit(line)
        self._remember(remembered)
        if not self.dry_run:
            until = now + 3 * options.autoscale_interval + options.autoscale_leader_ttl
            workers.publish_served(
                self.client,
                [
                    workers.ServedQueue(g.queue, settings_for(g).max_size, g.disk_size_gb, until)
                    for g in groups
                ],
            )
            if self.actuator.on_aws and figures:
                try:
                    self.actuator.publish_backlog(figures)
                except Exception as exc:  # noqa: BLE001 - metrics must not stop scaling
                    logger.warning("autoscale: CloudWatch metrics not published: %s", exc)
            if isinstance(self.actuator, Ec2Actuator):
                live = workers.live_consumers(
                    self.client, [g.queue for g in groups], options.autoscale_consumer_ttl
                )
                for group in groups:
                    if group.draining:
                        self.actuator.complete_drained(group, live.get(group.queue, []))
        return lines

    def run(self, stop: threading.Event, *, cycles: int | None = None) -> None:
        """Run cycles every ``options.autoscale_interval`` s until ``stop`` is set (or
        ``cycles`` ran); a failing cycle is logged and the next one tries again."""
        done = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.cycle()
            except Exception as exc:  # noqa: BLE001 - the loop outlives a bad cycle
                logger.exception("autoscale: cycle failed")
                self._emit({"ts": self.clock(), "event": "error", "error": repr(exc)})
            done += 1
            if cycles is not None and done >= cycles:
                return
            pause = options.autoscale_interval - (time.monotonic() - started)
            stop.wait(max(0.0, pause) if math.isfinite(pause) else 0.0)
