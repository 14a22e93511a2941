"""Errors raised by fused-celery.

Every error a user sees names the problem and the fix. Errors that happen inside a UDF are
carried back as :class:`UdfRuntimeError`, which keeps the child's class name, message, the line of
user code and a traceback trimmed to user frames.
"""

from __future__ import annotations

from typing import Any


class FusedError(Exception):
    """Base class of fused-celery's own errors."""


class UdfDefinitionError(FusedError, TypeError):
    """A function cannot be used as a UDF (lambda, builtin, ``*args``, unreadable source)."""


class UdfRuntimeError(FusedError):
    """The UDF raised an exception while running one entry.

    Attributes: ``child_exception_class`` (name of the original class), ``message``,
    ``lineno`` (line in the UDF's source, 1-based, or None), ``traceback`` (user frames only).
    """

    def __init__(
        self,
        message: str,
        *,
        child_exception_class: str = "Exception",
        lineno: int | None = None,
        traceback: str = "",
    ) -> None:
        self.message = message
        self.child_exception_class = child_exception_class
        self.lineno = lineno
        self.traceback = traceback
        where = f" (UDF line {lineno})" if lineno else ""
        super().__init__(f"{child_exception_class}: {message}{where}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, used to carry the error across processes."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "child_exception_class": self.child_exception_class,
            "lineno": self.lineno,
            "traceback": self.traceback,
        }

    def __reduce__(self):  # keep keyword arguments through pickling
        return (_rebuild, (type(self).__name__, self.to_dict()))


class UdfTimeoutError(UdfRuntimeError):
    """The entry ran longer than its time limit."""


class UdfSerializationError(UdfRuntimeError):
    """A UDF's result or argument cannot be encoded for the wire."""


class UdfArgumentError(UdfRuntimeError, TypeError):
    """An argument does not fit its parameter (name, value and expected type are in the message)."""


class UdfWorkerLostError(UdfRuntimeError):
    """The process running the entry died (for example ``os._exit`` or a crash)."""


class CancelledError(FusedError):
    """The entry was cancelled before it ran."""


class PoolNotFoundError(FusedError, LookupError):
    """No pool with this id exists in Redis (never created, or expired)."""


class BrokerUnavailableError(FusedError, ConnectionError):
    """The configured broker or result backend does not answer."""


_ERRORS = {
    cls.__name__: cls
    for cls in (
        UdfRuntimeError,
        UdfTimeoutError,
        UdfSerializationError,
        UdfWorkerLostError,
        UdfArgumentError,
    )
}


def _rebuild(name: str, data: dict[str, Any]) -> UdfRuntimeError:
    return error_from_dict({**data, "type": name})


def error_from_dict(data: dict[str, Any]) -> UdfRuntimeError:
    """Rebuild a :class:`UdfRuntimeError` (or subclass) from :meth:`UdfRuntimeError.to_dict`."""
    cls = _ERRORS.get(data.get("type", ""), UdfRuntimeError)
    return cls(
        data.get("message", ""),
        child_exception_class=data.get("child_exception_class", "Exception"),
        lineno=data.get("lineno"),
        traceback=data.get("traceback", ""),
    )
