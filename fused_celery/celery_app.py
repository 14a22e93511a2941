"""The Celery application of fused-celery, configured from :mod:`fused_celery.options`.

Workers run ``celery -A fused_celery.celery_app worker`` with ``FUSED_CELERY_BROKER_URL`` set;
they find the module-level :data:`app`, which imports the task modules (:data:`TASK_MODULES`) when
the worker
starts. Clients call :func:`get_app`, which rebuilds the app when the options it was built from
changed (tests and notebooks set ``options.broker_url`` at run time).

Settings and why (see ARCHITECTURE.md, "Reliability choices"):

- JSON only (``task_serializer``, ``result_serializer``, ``accept_content``); pickle is refused.
  With message signing configured (``options.security_key`` / ``security_certificate`` /
  ``security_cert_store``), Celery's ``auth`` serializer instead: JSON signed with the key, and
  only messages and results signed by a certificate of the store are accepted (control messages
  too; events stay JSON). A worker that refuses a message logs it and fails its pool entries
  (``worker_consumer``, :mod:`fused_celery.engines.celery.refused`).
- ``task_acks_late`` + ``task_reject_on_worker_lost`` + prefetch
  ``options.worker_prefetch_multiplier`` (default 1): a task whose worker dies is delivered
  again, so every task body is idempotent.
- ``visibility_timeout`` (``options.visibility_timeout``) is set in the three places Celery reads
  it: ``broker_transport_options``, ``result_backend_transport_options`` and the top-level
  ``visibility_timeout`` setting (celery/celery#7651, docs PR #9264). The unacked-restore sweep
  runs at ``visibility_timeout / 10`` (between 1 and 100 s) so a short timeout really is short.
- ``result_expires`` = ``options.result_expires``; soft/hard limits from ``task_soft_time_limit``
  / ``task_time_limit``; ``task_track_started``; events on (``worker_send_task_events``,
  ``task_send_sent_event``) so Flower sees every task (the pool engine's publishing app,
  ``get_app(results=False)``, sends no ``task-sent`` events: Flower lists a task from the
  worker's ``task-received`` event on).
- Default queue :data:`~fused_celery.options.DEFAULT_QUEUE`; instance types are further queues.
- Every task message carries the sender's message protocol in a header
  (:data:`~fused_celery.version.PROTOCOL_HEADER`, set where the message is built,
  :class:`StampingAMQP`: no extra round trip); a worker refuses a fused-celery task whose
  protocol differs from its own (:mod:`fused_celery.engines.celery.refused`).

Importing this module is cheap: Celery and options only (no pandas, no task bodies).
"""

from __future__ import annotations

import glob
import hashlib
import os
import threading
from typing import Any

from celery import Celery, signals
from celery.app.amqp import AMQP

from fused_celery import version
from fused_celery.errors import SigningConfigError
from fused_celery.options import DEFAULT_QUEUE, options

__all__ = [
    "app",
    "get_app",
    "broker_connection_errors",
    "celery_config",
    "control_app",
    "time_limits",
    "RUN_ENTRIES",
    "MISSING_BROKER",
]

#: Name of the task that runs the entries of a pool (see :mod:`fused_celery.engines.celery.tasks`).
RUN_ENTRIES = "fused_celery.run_entries"

#: Modules that define tasks; a worker imports them when it starts.
TASK_MODULES = ["fused_celery.engines.celery.tasks", "fused_celery.jobs.celery_driver"]

#: The worker's consumer: Celery's, plus a report of refused (unsigned, wrongly signed) messages.
WORKER_CONSUMER = "fused_celery.engines.celery.refused:RefusingConsumer"

_SECURITY_FIELDS = ("security_key", "security_certificate", "security_cert_store")


def _restore_sweep(visibility_timeout: int) -> tuple[int, int]:
    """(unacked_restore_interval, unacked_restore_throttle) giving a sweep every vt/10 s."""
    period = max(1, min(100, visibility_timeout // 10))
    interval = max(1, min(10, period))
    throttle = max(1, period // interval)
    return interval, throttle


def celery_config() -> dict[str, Any]:
    """The Celery settings derived from the current ``options`` (a plain dict)."""
    vt = int(options.visibility_timeout)
    interval, throttle = _restore_sweep(vt)
    broker_transport = {
        "visibility_timeout": vt,
        "unacked_restore_interval": interval,
        "unacked_restore_throttle": throttle,
        "socket_connect_timeout": 5,
    }
    return {
        "broker_url": options.broker_url,
        "result_backend": options.resolved_result_backend,
        **serializer_config(),
        "worker_consumer": WORKER_CONSUMER,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": int(options.worker_prefetch_multiplier),
        "broker_transport_options": broker_transport,
        "result_backend_transport_options": {"visibility_timeout": vt},
        "visibility_timeout": vt,
        "result_expires": int(options.result_expires),
        "result_backend_always_retry": True,
        "result_backend_max_retries": 30,
        "task_track_started": True,
        "task_default_queue": DEFAULT_QUEUE,
        "task_soft_time_limit": float(options.task_soft_time_limit),
        "task_time_limit": float(options.task_time_limit),
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "enable_utc": True,
        "timezone": "UTC",
    }


def serializer_config() -> dict[str, Any]:
    """The serializer settings: JSON only, or, with signing configured, the ``auth`` serializer
    for tasks, control messages and results (events stay JSON) and the ``security_*`` settings.

    Raises :class:`SigningConfigError` when signing is configured in part, or a key, certificate
    or certificate store names nothing usable."""
    if not options.signing:
        return {
            "task_serializer": "json",
            "result_serializer": "json",
            "accept_content": ["json"],
            "result_accept_content": ["json"],
        }
    missing = [f for f in _SECURITY_FIELDS if not getattr(options, f)]
    if missing:
        raise SigningConfigError(
            f"message signing needs security_key, security_certificate and security_cert_store; "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set (set "
            f"{', '.join('FUSED_CELERY_' + f.upper() for f in missing)}, or unset the others to "
            "turn signing off)"
        )
    for field in ("security_key", "security_certificate"):
        path = getattr(options, field)
        if not os.path.isfile(path):
            raise SigningConfigError(f"{field} {path!r} is not a file; give the path of a PEM file")
    store = options.security_cert_store
    pattern = os.path.join(store, "*") if os.path.isdir(store) else store
    if not glob.glob(pattern):
        raise SigningConfigError(
            f"security_cert_store {store!r} holds no certificate: give a folder or a glob of the "
            "PEM certificates whose signatures are trusted (this process's certificate included)"
        )
    return {
        "task_serializer": "auth",
        "result_serializer": "auth",
        "accept_content": ["auth"],
        "result_accept_content": ["auth"],
        "event_serializer": "json",
        "security_key": options.security_key,
        "security_certificate": options.security_certificate,
        "security_cert_store": options.security_cert_store,
        "security_digest": options.security_digest,
    }


def _key_password() -> str | None:
    secret = options.security_key_password
    return secret.get_secret_value() if secret is not None else None


def _secret_fingerprint() -> str:
    """Changes when the key's passphrase changes (it is kept out of the Celery config)."""
    return hashlib.sha256((_key_password() or "").encode()).hexdigest()


def time_limits() -> tuple[float, float]:
    """``(soft, hard)`` time limits in seconds for a pool's tasks, from the current options.

    The soft limit (``task_soft_time_limit``) is kept below the hard one (``task_time_limit``)
    so that an entry can be marked ``timeout`` before its process is killed: at most
    ``max(0.9 * hard, hard - 60)``. The engine sends both with every message, so a pool runs
    under the limits of the process that submitted it.
    """
    hard = float(options.task_time_limit)
    soft = min(float(options.task_soft_time_limit), max(0.9 * hard, hard - 60.0))
    return soft, hard


class StampingAMQP(AMQP):
    """Celery's AMQP, putting this process's message protocol and package version into the
    headers of every task message it builds (two dict stores per message: cheaper than a
    ``before_task_publish`` receiver, which costs a signal dispatch per message)."""

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(*args, **kwargs)
        message.headers[version.PROTOCOL_HEADER] = version.PROTOCOL_VERSION
        message.headers[version.VERSION_HEADER] = version.__version__
        return message


def _build(config: dict[str, Any], *, include_tasks: bool) -> Celery:
    celery = Celery(
        "fused_celery",
        include=TASK_MODULES if include_tasks else [],
        set_as_current=include_tasks,
        amqp=StampingAMQP,
    )
    celery.conf.update(config)
    _setup_serializers(celery, config)
    return celery


def _setup_serializers(celery: Celery, config: dict[str, Any]) -> None:
    """Register the signing serializer (process-wide in kombu) when ``config`` signs, else make
    JSON kombu's default again. Decoders other than JSON and ``auth`` stay disabled."""
    from kombu.serialization import registry

    if config.get("task_serializer") != "auth":
        registry._set_default_serializer("json")
        return
    try:
        celery.setup_security(
            allowed_serializers=["application/json", "application/data"],
            key=config["security_key"],
            key_password=_key_password(),
            cert=config["security_certificate"],
            store=config["security_cert_store"],
            digest=config["security_digest"],
            serializer="json",
        )
    except Exception as exc:  # an unreadable key, a wrong passphrase, an expired certificate
        raise SigningConfigError(
            f"message signing cannot be set up from security_key {config['security_key']!r}, "
            f"security_certificate {config['security_certificate']!r} and security_cert_store "
            f"{config['security_cert_store']!r}: {exc}"
        ) from None


#: The application workers run (``celery -A fused_celery.celery_app worker``).
app: Celery = _build(celery_config(), include_tasks=True)

_lock = threading.Lock()
_clients: dict[bool, tuple[dict[str, Any], Celery]] = {
    True: ({**celery_config(), "_key": _secret_fingerprint()}, app)
}


def get_app(*, results: bool = True) -> Celery:
    """The Celery app for the current ``options`` (rebuilt when the broker or a setting changed).

    results: False gives an app without a result backend, for publishing only (default True).
        ``send_task`` on an app with a Redis result backend subscribes to every task's result
        channel (two round trips per task); the pool engine does not read Celery results, so it
        publishes through this one. It sends no ``task-sent`` events either: one more PUBLISH
        per message (not pipelined with the message), while Flower lists a task from its
        ``task-received`` event on and needs no ``task-sent`` one.

    Clients publish by task name, so an app rebuilt here needs no task modules.
    """
    config = celery_config()
    if not results:
        config = {**config, "result_backend": None, "task_send_sent_event": False}
    with _lock:
        found = _clients.get(results)
        key = {**config, "_key": _secret_fingerprint()}
        if found is None or found[0] != key:
            found = _clients[results] = (key, _build(config, include_tasks=False))
        return found[1]


def control_app(broker_url: str) -> Celery:
    """An app on ``broker_url`` for remote control (``ping``, ``revoke``) and nothing else,
    with the project's transport and serializer settings (signed control messages when signing
    is configured: a signing worker refuses unsigned ones). Close it after use."""
    config = {**celery_config(), "broker_url": broker_url, "result_backend": None}
    return _build(config, include_tasks=False)


@signals.celeryd_init.connect
def _require_broker(sender: Any = None, conf: Any = None, **_: Any) -> None:
    """Refuse to start a worker that has no broker URL (Celery would silently try AMQP).

    Exits with status 1 and :data:`MISSING_BROKER` on stderr (Celery logs and swallows ordinary
    exceptions raised by signal receivers, so this raises ``SystemExit``).
    """
    if not options.broker_url:
        raise SystemExit(MISSING_BROKER)


MISSING_BROKER = (
    "fused-celery worker: no broker configured. Set FUSED_CELERY_BROKER_URL, e.g. "
    "FUSED_CELERY_BROKER_URL=redis://127.0.0.1:6379/0 celery -A fused_celery.celery_app worker"
)


@signals.worker_process_init.connect
def _preload(**_: Any) -> None:
    """Import ``options.worker_preload`` in each new pool process (a missing module is skipped)."""
    import importlib

    for name in options.worker_preload:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def broker_connection_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the broker or result backend cannot be reached (the builtin
    ones, redis-py's and kombu's), for callers that turn them into a clear message."""
    import kombu.exceptions
    import redis

    return (
        ConnectionError,
        TimeoutError,
        redis.exceptions.ConnectionError,
        kombu.exceptions.OperationalError,
    )
