"""A worker's presence and its drain: heartbeats in Redis while it consumes, a graceful exit
when its instance is going away.

Connected to Celery's worker signals when the worker imports the task modules:

- ``worker_ready``: the worker's heartbeat for each queue it consumes
  (:func:`fused_celery.state.workers.heartbeat`: first before the worker answers a ping, then
  from a daemon thread every ``autoscale_consumer_ttl / 3`` s, off the task path) and, when
  ``options.drain_watch`` allows, polls the instance metadata service
  (:class:`~fused_celery.autoscale.drain.DrainWatcher`). On a spot interruption notice or a
  terminating lifecycle state the worker sends itself SIGTERM: Celery's warm shutdown stops
  consuming, lets running entries finish (with ``acks_late`` a message reserved but not started
  goes back to the queue when the connection closes; one whose worker dies anyway is delivered
  again, and the record drops duplicates).
- ``worker_shutting_down``: the heartbeats stop (the worker no longer counts as a consumer).
- ``worker_shutdown`` (after running entries finished): the worker leaves the consumers, and
  when it drained for a notice, completes its instance's termination lifecycle action.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from celery import signals

from fused_celery.options import DEFAULT_QUEUE, options

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {}


def _instance_type(queues: list[str]) -> str | None:
    from fused_celery.queues import parse_queue

    for queue in queues:
        if queue == DEFAULT_QUEUE:
            continue
        try:
            return parse_queue(queue).instance_type
        except ValueError:
            continue
    return None


def _beat(info: Any, stop: threading.Event) -> None:
    from fused_celery.state import workers
    from fused_celery.state.connection import redis_client

    period = max(0.2, options.autoscale_consumer_ttl / 3)
    while not stop.wait(period):
        try:
            if options.resolved_result_backend:
                workers.heartbeat(redis_client(options.resolved_result_backend), info)
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried
            logger.warning("fused-celery: heartbeat failed: %s", exc)


def _on_notice(notice: Any) -> None:
    logger.warning("fused-celery: %s; draining (warm shutdown)", notice.detail)
    _state["notice"] = notice
    os.kill(os.getpid(), signal.SIGTERM)


def _watch_metadata() -> None:
    from fused_celery.autoscale.drain import DrainWatcher, MetadataClient

    if options.drain_watch is False:
        return
    client = MetadataClient(
        options.drain_metadata_url, timeout=1.0 if options.drain_watch is None else 2.0
    )
    if options.drain_watch is None and not client.available():
        return
    _state["metadata"] = client
    _state["watcher"] = DrainWatcher(client, options.drain_poll_interval, _on_notice).start()


@signals.worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    from fused_celery.state import workers
    from fused_celery.state.connection import redis_client
    from fused_celery.state.workers import WorkerInfo

    try:
        queues = sorted({q.name for q in sender.task_consumer.queues})
        concurrency = int(getattr(sender.controller, "concurrency", None) or 1)
        info = WorkerInfo(
            sender.hostname, tuple(queues), concurrency, _instance_type(queues), time.time()
        )
    except Exception as exc:  # noqa: BLE001 - presence must never stop a worker
        logger.warning("fused-celery: no heartbeat for this worker: %s", exc)
        return
    try:  # the first heartbeat before the worker answers anything (its loop starts after this)
        if options.resolved_result_backend:
            workers.heartbeat(redis_client(options.resolved_result_backend), info)
    except Exception as exc:  # noqa: BLE001 - the thread tries again
        logger.warning("fused-celery: heartbeat failed: %s", exc)
    stop = threading.Event()
    _state.update(info=info, stop=stop)
    threading.Thread(target=_beat, args=(info, stop), name="fused-heartbeat", daemon=True).start()
    threading.Thread(target=_watch_metadata, name="fused-drain-start", daemon=True).start()


@signals.worker_shutting_down.connect
def _shutting_down(**_: Any) -> None:
    stop = _state.get("stop")
    if stop is not None:
        stop.set()  # (a signal handler: only set flags here)
    watcher = _state.get("watcher")
    if watcher is not None:
        watcher.stop()


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    from fused_celery.state import workers
    from fused_celery.state.connection import redis_client

    info = _state.get("info")
    try:
        if info is not None and options.resolved_result_backend:
            workers.leave(redis_client(options.resolved_result_backend), info.hostname, info.queues)
    except Exception as exc:  # noqa: BLE001
        logger.warning("fused-celery: could not leave the consumers: %s", exc)
    client = _state.get("metadata")
    if client is None or _state.get("notice") is None:
        return
    try:
        from fused_celery.autoscale.drain import complete_lifecycle_action

        instance_id = client.instance_id()
        if instance_id and complete_lifecycle_action(instance_id, options.drain_lifecycle_hook):
            logger.warning("fused-celery: drained; lifecycle action of %s completed", instance_id)
    except Exception as exc:  # noqa: BLE001 - the group's heartbeat timeout completes it anyway
        logger.warning("fused-celery: could not complete the lifecycle action: %s", exc)
