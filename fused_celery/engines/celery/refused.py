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

The refused message's content is read only to find which entries to fail, never trusted further.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from celery.worker.consumer.consumer import Consumer
from kombu.exceptions import ContentDisallowed, DecodeError

from fused_celery.celery_app import RUN_ENTRIES

logger = logging.getLogger("fused_celery.worker")

SIGNED_CONTENT_TYPE = "application/data"
"""The content type of a message of Celery's ``auth`` serializer."""

FIX = (
    "Nothing of it ran. Give the process that submitted it the cluster's security_key, "
    "security_certificate and security_cert_store (FUSED_CELERY_SECURITY_*), then retry "
    "(pool.retry())"
)


def refusal_reason(content_type: str | None, exc: BaseException, *, signing: bool) -> str:
    """Why a message was refused, in words (``signing``: the worker verifies signatures)."""
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
        if found is not None:
            reason = f"the worker {hostname} refused the message of this entry: {why}. {FIX}"
            threading.Thread(
                target=_fail_entries,
                args=(str(task_id), *found, reason),
                name=f"fused-refused-{task_id}",
                daemon=True,
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


class RefusingConsumer(Consumer):
    """Celery's consumer, reporting the messages it refuses (see the module docstring)."""

    def _signing(self) -> bool:
        return self.app.conf.task_serializer == "auth"

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        report_refused(message, exc, hostname=self.hostname, signing=self._signing())
        super().on_decode_error(message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        if isinstance(exc, (ContentDisallowed, DecodeError)):
            report_refused(message, exc, hostname=self.hostname, signing=self._signing())
        super().on_invalid_task(body, message, exc)


__all__ = ["RefusingConsumer", "refusal_reason", "report_refused"]
