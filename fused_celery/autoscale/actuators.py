"""Actuators: what the autoscaler changes. One interface, two implementations.

- :class:`Ec2Actuator`: the EC2 Auto Scaling groups that ``fused-celery deploy`` created, found by
  their tags (``fused-celery:managed`` = ``true``, ``fused-celery:queue`` = the queue). It sets
  a group's desired capacity, protects the instances whose worker runs entries from scale-in
  (and lifts that protection when they are idle), completes the termination lifecycle action
  (hook ``options.drain_lifecycle_hook``) of instances whose worker has drained and left, and
  publishes the backlog as CloudWatch metrics. boto3's standard chain gives credentials and
  endpoints (``AWS_ENDPOINT_URL`` included).
- :class:`LocalActuator`: ``fused-celery worker`` processes on this machine, one set per queue.
  Scale-in stops idle workers first; a stopped worker shuts down warm (it finishes its running
  entries, reserved messages go back to the queue). Workers are started in their own session
  and recorded in Redis (hostname -> pid), so a restarted autoscaler adopts the workers its
  predecessor started: it resumes from what it observes.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from fused_celery.cluster.processes import ManagedProcess, pid_alive
from fused_celery.options import INSTANCE_VCPUS, options
from fused_celery.queues import parse_queue
from fused_celery.state import keys

logger = logging.getLogger(__name__)

MANAGED_TAG = "fused-celery:managed"
QUEUE_TAG = "fused-celery:queue"


@dataclass(frozen=True)
class Group:
    """One queue's workers as observed: ``queue``, ``name`` (the group's), ``current`` capacity
    (workers wanted or running now), ``min_size`` / ``max_size`` (the group's bounds), ``slots``
    (processes per worker), ``disk_size_gb`` (None: unknown), ``hosts`` (worker hostnames or
    instance ids, for logs), ``draining`` (workers leaving)."""

    queue: str
    name: str
    current: int
    min_size: int
    max_size: int
    slots: int
    disk_size_gb: int | None = None
    hosts: tuple[str, ...] = ()
    draining: int = 0


class Actuator(ABC):
    """What the autoscaler acts on."""

    #: True when the workers are EC2 instances (then backlog metrics go to CloudWatch).
    on_aws: bool = False

    @abstractmethod
    def groups(self) -> list[Group]:
        """Every group this actuator manages, as observed now."""

    @abstractmethod
    def set_capacity(self, group: Group, desired: int, busy_hosts: Sequence[str]) -> None:
        """Make ``group``'s capacity ``desired``; ``busy_hosts`` (worker hostnames running
        entries) are not chosen for scale-in."""

    def protect(self, group: Group, busy_hosts: Sequence[str]) -> None:  # noqa: B027
        """Protect ``busy_hosts``' workers of ``group`` from scale-in, unprotect the others."""

    def publish_backlog(self, rows: Mapping[str, Mapping[str, float]]) -> None:  # noqa: B027
        """Publish each queue's backlog figures (``rows``: queue -> name -> value)."""

    def close(self) -> None:  # noqa: B027
        """Release what the actuator holds (on a clean exit of the loop)."""


def hostname_host(hostname: str) -> str:
    """The machine part of a Celery node name ``name@host`` (first DNS label)."""
    return hostname.rsplit("@", 1)[-1].split(".", 1)[0]


# --------------------------------------------------------------------------------- EC2


class Ec2Actuator(Actuator):
    """The EC2 Auto Scaling groups tagged for fused-celery (see the module docstring).

    autoscaling / ec2 / cloudwatch: boto3 clients (default: made from boto3's standard chain).
    """

    on_aws = True

    def __init__(self, *, autoscaling: Any = None, ec2: Any = None, cloudwatch: Any = None):
        import boto3

        self.autoscaling = autoscaling or boto3.client("autoscaling")
        self.ec2 = ec2 or boto3.client("ec2")
        self._cloudwatch = cloudwatch
        self._disks: dict[tuple[str, str], int | None] = {}
        self._raw: dict[str, dict[str, Any]] = {}

    @property
    def cloudwatch(self) -> Any:
        if self._cloudwatch is None:
            import boto3

            self._cloudwatch = boto3.client("cloudwatch")
        return self._cloudwatch

    def _disk(self, group: dict[str, Any]) -> int | None:
        spec = group.get("LaunchTemplate") or (
            (group.get("MixedInstancesPolicy") or {})
            .get("LaunchTemplate", {})
            .get("LaunchTemplateSpecification")
        )
        if not spec:
            return None
        ident = spec.get("LaunchTemplateId") or spec.get("LaunchTemplateName") or ""
        version = str(spec.get("Version") or "$Default")
        if (ident, version) not in self._disks:
            by = "LaunchTemplateId" if spec.get("LaunchTemplateId") else "LaunchTemplateName"
            found = self.ec2.describe_launch_template_versions(
                **{by: ident}, Versions=[version]
            ).get("LaunchTemplateVersions", [])
            sizes = [
                (m.get("Ebs") or {}).get("VolumeSize")
                for v in found
                for m in (v.get("LaunchTemplateData") or {}).get("BlockDeviceMappings") or []
            ]
            sizes = [int(s) for s in sizes if s]
            self._disks[(ident, version)] = max(sizes) if sizes else None
        return self._disks[(ident, version)]

    def groups(self) -> list[Group]:
        found: list[Group] = []
        paginator = self.autoscaling.get_paginator("describe_auto_scaling_groups")
        pages = paginator.paginate(Filters=[{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}])
        self._raw = {}
        for page in pages:
            for g in page.get("AutoScalingGroups", []):
                tags = {t["Key"]: t["Value"] for t in g.get("Tags", [])}
                queue = tags.get(QUEUE_TAG)
                if tags.get(MANAGED_TAG) != "true" or not queue:
                    continue
                try:
                    instance_type = parse_queue(queue).instance_type
                except ValueError:
                    logger.warning("group %s: tag %s=%r is no queue", g["AutoScalingGroupName"],
                                   QUEUE_TAG, queue)  # fmt: skip
                    continue
                self._raw[queue] = g
                instances = g.get("Instances", [])
                leaving = [i for i in instances if i["LifecycleState"].startswith("Terminating")]
                found.append(
                    Group(
                        queue=queue,
                        name=g["AutoScalingGroupName"],
                        current=int(g["DesiredCapacity"]),
                        min_size=int(g["MinSize"]),
                        max_size=int(g["MaxSize"]),
                        slots=INSTANCE_VCPUS.get(instance_type or "", 1),
                        disk_size_gb=self._disk(g),
                        hosts=tuple(i["InstanceId"] for i in instances),
                        draining=len(leaving),
                    )
                )
        return found

    def set_capacity(self, group: Group, desired: int, busy_hosts: Sequence[str]) -> None:
        if busy_hosts:
            self.protect(group, busy_hosts)
        self.autoscaling.set_desired_capacity(
            AutoScalingGroupName=group.name, DesiredCapacity=int(desired), HonorCooldown=False
        )

    def _instance_hosts(self, instance_ids: Sequence[str]) -> dict[str, str]:
        """Instance id -> first DNS label of its private name (what a worker's node name holds)."""
        if not instance_ids:
            return {}
        out: dict[str, str] = {}
        for page in self.ec2.get_paginator("describe_instances").paginate(
            InstanceIds=list(instance_ids)
        ):
            for reservation in page.get("Reservations", []):
                for inst in reservation.get("Instances", []):
                    name = inst.get("PrivateDnsName") or ""
                    if name:
                        out[inst["InstanceId"]] = name.split(".", 1)[0]
        return out

    def protect(self, group: Group, busy_hosts: Sequence[str]) -> None:
        raw = self._raw.get(group.queue) or {}
        instances = [i for i in raw.get("Instances", []) if i["LifecycleState"] == "InService"]
        if not instances:
            return
        names = self._instance_hosts([i["InstanceId"] for i in instances])
        busy = {hostname_host(h) for h in busy_hosts}
        ids = {i["InstanceId"]: bool(i.get("ProtectedFromScaleIn")) for i in instances}
        protect = [i for i, on in ids.items() if names.get(i) in busy and not on]
        release = [i for i, on in ids.items() if names.get(i) not in busy and on]
        for ids, flag in ((protect, True), (release, False)):
            if ids:
                self.autoscaling.set_instance_protection(
                    InstanceIds=ids, AutoScalingGroupName=group.name, ProtectedFromScaleIn=flag
                )

    def complete_drained(self, group: Group, live_hosts: Sequence[str]) -> list[str]:
        """Complete the lifecycle action of ``group``'s instances waiting to terminate whose
        worker is no longer live (it drained, or died); returns their ids."""
        raw = self._raw.get(group.queue) or {}
        waiting = [i["InstanceId"] for i in raw.get("Instances", [])
                   if i["LifecycleState"] == "Terminating:Wait"]  # fmt: skip
        if not waiting:
            return []
        names = self._instance_hosts(waiting)
        live = {hostname_host(h) for h in live_hosts}
        done = []
        for instance_id in waiting:
            if names.get(instance_id) in live:
                continue
            self.autoscaling.complete_lifecycle_action(
                LifecycleHookName=options.drain_lifecycle_hook,
                AutoScalingGroupName=group.name,
                LifecycleActionResult="CONTINUE",
                InstanceId=instance_id,
            )
            done.append(instance_id)
        return done

    def publish_backlog(self, rows: Mapping[str, Mapping[str, float]]) -> None:
        data = [
            {
                "MetricName": name,
                "Dimensions": [{"Name": "Queue", "Value": queue}],
                "Value": float(value),
                "Unit": "Count",
            }
            for queue, figures in rows.items()
            for name, value in figures.items()
        ]
        for start in range(0, len(data), 1000):
            self.cloudwatch.put_metric_data(
                Namespace=options.autoscale_cloudwatch_namespace,
                MetricData=data[start : start + 1000],
            )


# --------------------------------------------------------------------------------- local


@dataclass
class _LocalWorker:
    hostname: str
    pid: int
    process: ManagedProcess | None = None  # None: adopted from an earlier autoscaler
    stopping: bool = False

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.alive()
        return pid_alive(self.pid)


@dataclass
class LocalActuator(Actuator):
    """``fused-celery worker`` processes for ``queues`` on this machine.

    queues: the queues served. client: the Redis of the registry (the broker). max_size: the
    group bound of each queue (default 4). concurrency: processes per worker (default 1).
    log_dir: the workers' logs (default ``<cluster_dir>/autoscale``). env: extra environment
    for the workers (this process's environment is the base).
    """

    queues: Sequence[str]
    client: redis.Redis
    max_size: int = 4
    concurrency: int = 1
    log_dir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    _workers: dict[str, dict[str, _LocalWorker]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for queue in self.queues:
            parse_queue(queue)
            self._workers[queue] = {}
            for hostname, pid in self.client.hgetall(keys.autoscale_local_key(queue)).items():
                self._workers[queue][hostname] = _LocalWorker(hostname, int(pid))

    def _prune(self, queue: str) -> dict[str, _LocalWorker]:
        workers = self._workers[queue]
        gone = [h for h, w in workers.items() if not w.alive()]
        for hostname in gone:
            worker = workers.pop(hostname)
            if worker.process is not None:
                worker.process.wait(0)  # reap
        if gone:
            self.client.hdel(keys.autoscale_local_key(queue), *gone)
        return workers

    def groups(self) -> list[Group]:
        out = []
        for queue in self.queues:
            workers = self._prune(queue)
            running = [w for w in workers.values() if not w.stopping]
            out.append(
                Group(
                    queue=queue,
                    name=f"local:{queue}",
                    current=len(running),
                    min_size=0,
                    max_size=self.max_size,
                    slots=self.concurrency,
                    hosts=tuple(sorted(w.hostname for w in running)),
                    draining=len(workers) - len(running),
                )
            )
        return out

    def _start(self, queue: str) -> _LocalWorker:
        slug = re.sub(r"[^A-Za-z0-9-]", "-", queue)
        hostname = f"as-{slug}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        log_dir = Path(self.log_dir or os.path.join(options.cluster_dir, "autoscale"))
        command = [
            sys.executable, "-m", "fused_celery.cli", "worker", "--queues", queue,
            "--hostname", hostname, "--concurrency", str(self.concurrency),
        ]  # fmt: skip
        process = ManagedProcess(
            hostname,
            command,
            env={**os.environ, **self.env},
            log_path=log_dir / f"{hostname.split('@')[0]}.log",
            die_with_parent=False,  # a restarted autoscaler adopts it
        ).start()
        assert process.pid is not None
        worker = _LocalWorker(hostname, process.pid, process)
        self.client.hset(keys.autoscale_local_key(queue), hostname, process.pid)
        return worker

    def _stop(self, worker: _LocalWorker) -> None:
        worker.stopping = True
        if worker.process is not None:
            worker.process.signal(signal.SIGTERM)
        else:
            try:
                os.kill(worker.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def set_capacity(self, group: Group, desired: int, busy_hosts: Sequence[str]) -> None:
        workers = self._prune(group.queue)
        running = [w for w in workers.values() if not w.stopping]
        for _ in range(desired - len(running)):
            worker = self._start(group.queue)
            workers[worker.hostname] = worker
        extra = len(running) - desired
        if extra > 0:
            busy = set(busy_hosts)
            order = sorted(running, key=lambda w: (w.hostname in busy, w.hostname))
            for worker in order[:extra]:
                self._stop(worker)

    def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every worker (warm) and wait up to ``timeout`` s for them to exit."""
        for queue in self.queues:
            for worker in self._prune(queue).values():
                self._stop(worker)
        deadline = time.monotonic() + timeout
        for queue in self.queues:
            while self._prune(queue) and time.monotonic() < deadline:
                time.sleep(0.1)

    def close(self) -> None:
        """Stop the workers this actuator runs (a clean exit of the loop); after a crash they
        keep running and the next autoscaler adopts them."""
        self.stop_all()


def local_workers(client: redis.Redis, queue: str) -> dict[str, int]:
    """The local actuator's recorded workers of ``queue``: hostname -> pid."""
    return {h: int(p) for h, p in client.hgetall(keys.autoscale_local_key(queue)).items()}
