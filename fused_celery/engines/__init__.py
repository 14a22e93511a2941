"""Engines that run a pool's entries: ``local`` (a process pool) and ``celery`` (the cluster)."""

from __future__ import annotations

from fused_celery.engines.base import Engine, EntryState, PoolSpec
from fused_celery.errors import CallArgumentError, InstanceTypeError
from fused_celery.options import WHITELISTED_INSTANCE_TYPES

__all__ = ["Engine", "EntryState", "PoolSpec", "make_engine", "resolve_engine"]


def resolve_engine(
    engine: str | None,
    instance_type: str | None = None,
    *,
    region: str | None = None,
    image_name: str | None = None,
) -> tuple[str, str | None]:
    """Map the user's ``engine`` / ``instance_type`` to ``(kind, queue)``.

    engine: ``"local"``, ``"remote"``, an instance type name, or None for
    ``options.resolved_default_engine``. instance_type: a whitelisted instance type (routes to
    its queue; implies the cluster). region / image_name: with an instance type, its queue in
    that region / with that image (:func:`~fused_celery.queues.queue_name`; ignored without
    one). Raises ``ValueError`` listing the allowed values.
    """
    from fused_celery.options import options
    from fused_celery.queues import queue_name

    if instance_type is not None:
        check_instance_type(instance_type, what="instance type")
        if engine not in (None, "remote", instance_type):
            raise CallArgumentError(
                f"instance_type={instance_type!r} runs on the cluster; it cannot be combined "
                f"with engine={engine!r}"
            )
        return "celery", queue_name(instance_type, region, image_name)
    if engine is None:
        engine = options.resolved_default_engine
    if engine == "local":
        return "local", None
    if engine == "remote":
        return "celery", None
    check_instance_type(engine)
    return "celery", queue_name(engine, region, image_name)


def check_instance_type(name: str, what: str = "engine") -> None:
    """Raise :class:`~fused_celery.errors.InstanceTypeError` (a ``ValueError``) unless ``name``
    is a whitelisted instance type.

    what: what the caller was given, for the message: ``"engine"`` (default: an ``engine=``
    value, which may also be ``'local'`` or ``'remote'``) or ``"instance type"`` (an
    ``instance_type=`` value, e.g. of a job step).
    """
    if name not in WHITELISTED_INSTANCE_TYPES:
        allowed = ", ".join(WHITELISTED_INSTANCE_TYPES)
        if what == "engine":
            message = (
                f"unknown engine or instance type {name!r}; use 'local', 'remote' or one of: "
                f"{allowed}"
            )
        else:
            message = f"unknown {what} {name!r}; use one of: {allowed}"
        raise InstanceTypeError(message)


def make_engine(kind: str, spec: PoolSpec) -> Engine:
    """Build the engine of ``kind`` (``"local"`` or ``"celery"``) for ``spec``."""
    if kind == "local":
        from fused_celery.engines.local import LocalEngine

        return LocalEngine(spec)
    from fused_celery.engines.celery.client import CeleryEngine

    return CeleryEngine(spec)
