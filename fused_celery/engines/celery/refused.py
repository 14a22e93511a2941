"""The worker's consumer: Celery's, plus a report of the messages it refuses.

With message signing on (``options.security_*``), a worker accepts only task messages signed by
a certificate of its store. Celery then drops a message that is unsigned (``ContentDisallowed``:
logged at ERROR, rejected) or whose signature does not verify (a decode error: logged at
CRITICAL, acknowledged): its entries would stay ``pending`` forever and the user would wait for
nothing. :class:`RefusingConsumer` (the ``worker_consumer`` of :mod:`fused_celery.celery_app`)
also logs one line naming the task, its id and why, and fails the entries of a ``run_entries``
message with that reason (:func:`~fused_celery.engines.celery.worker.fail_refused`), so that
``pool.wait()`` ends and ``pool.errors()`` says what to fix. Nothing of a refused message runs,
and nothing is republished for it. The same happens, reversed, when a worker without signing
receives a signed message.

Messages of another message protocol are refused the same way: every fused-celery task
message carries its sender's protocol (header :data:`~fused_celery.version.PROTOCOL_HEADER`,
stamped in :mod:`fused_celery.celery_app`), and a worker whose protocol differs (a client and
workers of different fused-celery versions, say during an upgrade) refuses it before anything
reads its arguments: the pool's entries fail with the reason (a job's message fails the job),
nothing is misread. The check is a dictionary look-up on the message's headers, before Celery's
own handling; it costs no round trip.

The refused message's content is read only to find which entries to fail, never trusted further.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from celery.worker.consumer.consumer import Consumer
from kombu.exceptions import ContentDisallowed, DecodeError

from fused_celery import version
from fused_celery.celery_app import RUN_ENTRIES
from fused_celery.errors import ProtocolMismatchError

logger = logging.getLogger("fused_celery.worker")

SIGNED_CONTENT_TYPE = "application/data"
"""The content type of a message of Celery's ``auth`` serializer."""

FIX = (
    "Nothing of it ran. Give the process that submitted it the cluster's security_key, "
    "security_certificate and security_cert_store (FUSED_CELERY_SECURITY_*), then retry "
    "(pool.retry())"
)


PROTOCOL_FIX = (
    "Nothing of it ran. Run the same fused-celery version on the clients and the workers "
    "(pip install fused-celery==<version>; on AWS `fused-celery deploy apply` from the new "
    "client rolls the workers), then retry (pool.retry())"
)


def protocol_refusal(headers: Any) -> ProtocolMismatchError | None:
    """The refusal of a fused-celery task message whose protocol differs from this worker's
    (None for a message of the same protocol, or a task that is not fused-celery's)."""
    if not isinstance(headers, dict):
        return None
    task = headers.get("task")
    if not isinstance(task, str) or not task.startswith("fused_celery."):
        return None
    sent = headers.get(version.PROTOCOL_HEADER)
    if str(sent) == str(version.PROTOCOL_VERSION):
        return None
    mine = f"protocol {version.PROTOCOL_VERSION} (fused-celery {version.__version__})"
    if sent is None:
        return ProtocolMismatchError(
            f"it carries no fused-celery message protocol (sent by a fused-celery older than "
            f"this worker's, or by another program) and this worker speaks {mine}"
        )
    sender = headers.get(version.VERSION_HEADER) or "unknown"
    return ProtocolMismatchError(
        f"it was sent with message protocol {sent} (fused-celery {sender}) and this worker "
        f"speaks {mine}"
    )


def refusal_reason(content_type: str | None, exc: BaseException, *, signing: bool) -> str:
    """Why a message was refused, in words (``signing``: the worker verifies signatures)."""
    if isinstance(exc, ProtocolMismatchError):
        return str(exc)
    if content_type == SIGNED_CONTENT_TYPE and isinstance(exc, ContentDisallowed):
        return (
            "it is signed (auth serializer), but this worker does not verify signatures (no "
            "security_key/security_cert_store): configure the workers like the submitter"
        )
    if isinstance(exc, ContentDisallowed):
        return (
            f"it is not signed (content type {content_type}) and this cluster runs only signed work"
        )
    if content_type == SIGNED_CONTENT_TYPE:
        return (
            f"its signature cannot be verified ({exc}): it was signed with a key whose "
            "certificate is not in the worker's security_cert_store, or altered on the way"
        )
    return f"it cannot be decoded ({exc})"


def _unverified_arguments(message: Any) -> tuple[list[Any], dict[str, Any]] | None:
    """The (args, kwargs) a protocol-2 message carries, read without verifying anything."""
    try:
        body = message.body
        if message.content_type == SIGNED_CONTENT_TYPE:
            from celery.security.serialization import SecureSerializer

            body = SecureSerializer()._unpack(body)["body"]
        decoded = json.loads(body)
        args, kwargs = decoded[0], decoded[1]
        return list(args), dict(kwargs)
    except Exception:  # noqa: BLE001 - a message we cannot read: logged, nothing failed
        return None


def report_refused(message: Any, exc: BaseException, *, hostname: str, signing: bool) -> None:
    """Log the refusal now; fail the entries of a refused ``run_entries`` message in a
    background thread (it may wait for the pool's record, and the consumer must not). Never
    raises."""
    try:
        headers = message.headers or {}
        task, task_id = headers.get("task"), headers.get("id")
        why = refusal_reason(message.content_type, exc, signing=signing)
        found = _unverified_arguments(message) if task == RUN_ENTRIES else None
        pool_id = None
        if found is not None:
            args, kwargs = found
            pool_id = args[0] if args else kwargs.get("pool_id")
        logger.error(
            "fused-celery: refused a message (task %s, id %s%s): %s",
            task,
            task_id,
            f", pool {pool_id}" if pool_id else "",
            why,
        )
        fix = PROTOCOL_FIX if isinstance(exc, ProtocolMismatchError) else FIX
        if found is not None:
            reason = f"the worker {hostname} refused the message of this entry: {why}. {fix}"
            threading.Thread(
                target=_fail_entries,
                args=(str(task_id), *found, reason),
                name=f"fused-refused-{task_id}",
                daemon=True,
            ).start()
        elif isinstance(task, str) and task.startswith("fused_celery.job."):
            job = _unverified_arguments(message)
            reason = f"the worker {hostname} refused a message of this job ({task}): {why}. {fix}"
            threading.Thread(
                target=_fail_job, args=(job, reason), name=f"fused-refused-{task_id}", daemon=True
            ).start()
    except Exception:  # noqa: BLE001 - reporting must never stop the consumer
        logger.exception("fused-celery: could not report a refused message")


def _fail_entries(task_id: str, args: list[Any], kwargs: dict[str, Any], reason: str) -> None:
    from fused_celery.engines.celery.worker import fail_refused

    try:
        failed = fail_refused(task_id, args, kwargs, reason)
        if failed:
            logger.error("fused-celery: message %s refused: entries %s failed", task_id, failed)
    except Exception:  # noqa: BLE001
        logger.exception("fused-celery: could not fail the entries of refused message %s", task_id)


def _fail_job(found: tuple[list[Any], dict[str, Any]] | None, reason: str) -> None:
    """Fail the job a refused job-driver message belongs to (its run discarded, see
    :func:`fused_celery.jobs.celery_driver.fail_refused_job`: a late import, the one call from
    this module up to the job driver, which a worker has loaded already)."""
    if found is None:
        return
    try:
        from fused_celery.jobs.celery_driver import fail_refused_job

        fail_refused_job(*found, reason)
    except Exception:  # noqa: BLE001
        logger.exception("fused-celery: could not fail the job of a refused message")


class RefusingConsumer(Consumer):
    """Celery's consumer, reporting the messages it refuses (see the module docstring), and
    refusing fused-celery task messages of another message protocol."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handler = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            refusal = protocol_refusal(getattr(message, "headers", None))
            if refusal is None:
                return handler(message)
            report_refused(message, refusal, hostname=self.hostname, signing=self._signing())
            message.reject_log_error(logger, self.connection_errors)
            return None

        return on_task_received

    def _signing(self) -> bool:
        return self.app.conf.task_serializer == "auth"

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        report_refused(message, exc, hostname=self.hostname, signing=self._signing())
        super().on_decode_error(message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        if isinstance(exc, (ContentDisallowed, DecodeError)):
            report_refused(message, exc, hostname=self.hostname, signing=self._signing())
        super().on_invalid_task(body, message, exc)


__all__ = [
    "RefusingConsumer",
    "protocol_refusal",
    "refusal_reason",
    "report_refused",
]
