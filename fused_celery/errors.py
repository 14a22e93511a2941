"""Errors raised by fused-celery.

Every error a user sees names the problem and the fix. Errors that happen inside a UDF are
carried back as :class:`UdfRuntimeError`, which keeps the child's class name, message, the line of
user code and a traceback trimmed to user frames.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FusedError",
    "RightInputTooLargeError",
    "UdfDefinitionError",
    "UdfRuntimeError",
    "UdfTimeoutError",
    "UdfSerializationError",
    "UdfArgumentError",
    "UdfWorkerLostError",
    "ArgumentTooLargeError",
    "CallArgumentError",
    "OptionsError",
    "StepConfigError",
    "CancelledError",
    "PoolNotFoundError",
    "BrokerUnavailableError",
    "PoolExpiredError",
    "StorageError",
    "UnsupportedURLError",
    "BucketNotFoundError",
    "CorruptFileError",
    "InvalidNameError",
    "TableNotFoundError",
    "IncompleteTableError",
    "TableExistsError",
    "UnsafeOverwriteError",
    "UnsafeLocationError",
    "TableFormatError",
    "ChunkNotFoundError",
    "ColumnNotFoundError",
    "IngestInputError",
    "UnsupportedInputError",
    "IngestRowsWarning",
    "InputNotFoundError",
    "JobNotFoundError",
    "StepInputError",
    "StepUdfError",
    "StepOutputError",
    "StepSchemaError",
    "ProtectedEnvError",
    "UdfImportError",
    "JobFailedError",
    "JobCanceledError",
    "JobTimeoutError",
    "InstanceTypeError",
    "CacheValueError",
    "UdfLoadError",
    "CliError",
    "PortInUseError",
    "ClusterStartError",
    "InvalidBrokerUrlError",
    "SigningConfigError",
    "DeployError",
    "SharedStorageRequiredError",
    "EvictionPolicyError",
    "ProtocolMismatchError",
    "OfflineAssetError",
    "MapFileExistsError",
    "error_from_dict",
]


class FusedError(Exception):
    """Base class of fused-celery's own errors."""


class UdfDefinitionError(FusedError, TypeError):
    """A function cannot be used as a UDF (lambda, builtin, ``*args``, unreadable source), or a
    UDF's code does not parse.

    Attribute ``lineno``: the line of the UDF's code at fault (1-based), or None.
    """

    def __init__(self, message: str, lineno: int | None = None) -> None:
        super().__init__(message)
        self.lineno = lineno


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


class CallArgumentError(FusedError, TypeError, ValueError):
    """An argument or option of ``udf.map``, a UDF call, ``fused.run`` or ``@fused.cache`` is
    invalid (``arg_list``, ``max_workers``, ``n_processes_per_worker``, ``max_retry``,
    ``cache_max_age``, an argument name...); the message names it and what to give instead. A
    ``TypeError`` and a ``ValueError``, as Python's own checks of calls are."""


class OptionsError(FusedError, ValueError):
    """An option of :mod:`fused_celery.options` (or its ``FUSED_CELERY_*`` environment variable)
    has a value it cannot take; the message names the variable, the value and what it expects."""


class StepConfigError(FusedError, ValueError):
    """A field of a job step (``fused.ingest(...)``, ``fused.map(...)``, ``JobConfig``) has a
    value it cannot take; the message names the field, the value and what it expects."""


class ArgumentTooLargeError(FusedError, ValueError):
    """An argument of ``udf.map`` (or a constant keyword argument) is over
    ``options.max_argument_bytes`` once encoded; nothing was submitted. The message names the
    argument, its size, the limit and the option."""


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


class PoolExpiredError(PoolNotFoundError):
    """The pool existed but its record expired (``result_expires``); its results are gone."""


# --- storage and tables ------------------------------------------------------------------------


class StorageError(FusedError, OSError):
    """A storage operation failed (the URL and the cause are in the message)."""


class UnsupportedURLError(StorageError, ValueError):
    """A URL's scheme is not one fused-celery stores to (local path, ``file://``, ``s3://``)."""


class BucketNotFoundError(StorageError, FileNotFoundError):
    """An ``s3://`` URL names a bucket that does not exist at the configured endpoint."""


class CorruptFileError(StorageError):
    """A Parquet file of a table cannot be decoded; the message names the file."""


class InvalidNameError(FusedError, ValueError):
    """A table name, file id or run id is empty, contains ``..`` or a path separator, or other
    characters outside ``[A-Za-z0-9_.=-]``."""


class TableNotFoundError(FusedError, FileNotFoundError):
    """Nothing is stored at a table URL."""


class IncompleteTableError(TableNotFoundError):
    """A table directory has data but no ``_sample``: its writer has not committed (or crashed).

    It is never read as if it were whole; rerun the job that writes it to complete it. A
    subclass of :class:`TableNotFoundError`: an incomplete table is not a table.
    """


class TableExistsError(FusedError, FileExistsError):
    """A writer with ``overwrite=False`` was pointed at an existing table (or a non-empty folder
    that is not a fused table)."""


class UnsafeOverwriteError(TableExistsError):
    """``overwrite=True`` was pointed at something that is not a table fused-celery committed (a
    user's folder, a table written by another tool); nothing was deleted. The message names what
    is there."""


class UnsafeLocationError(FusedError, ValueError):
    """A table location that is never a table: the filesystem root, a home directory, a parent
    of the current directory, or a bucket root (paths resolved: ``~``, ``..``, symlinks)."""


class TableFormatError(FusedError, ValueError):
    """A ``_sample`` lacks fused metadata, has another ``fused:format_version``, or its
    chunk metadata cannot be decoded."""


class ChunkNotFoundError(FusedError, LookupError):
    """A file_id or chunk_id is not in a table; the message lists the ones that exist."""


class ColumnNotFoundError(FusedError, LookupError):
    """Columns asked of a table are not in it; the message lists the columns it has."""


# --- ingestion (geospatial partitioning) --------------------------------------------------------


class IngestInputError(FusedError, ValueError):
    """The input of an ingest job cannot be partitioned as given: empty, missing columns,
    coordinates that are not numbers, no CRS and coordinates that cannot be degrees, a CRS that
    cannot be reprojected to EPSG:4326, ... The message names the problem and the fix."""


class UnsupportedInputError(IngestInputError):
    """An ingest input is of a kind or format fused-celery cannot read (the message lists the
    supported ones)."""


class IngestRowsWarning(UserWarning):
    """An ingest dropped or repaired rows (``run_local``; the counts are also in the job log,
    ``get_results()["report"]`` and ``Table.ingest_report``)."""


class InputNotFoundError(IngestInputError, FileNotFoundError):
    """An ingest input path or URL does not exist (the message names it)."""


# --- jobs (job steps run on the cluster or locally) ---------------------------------------------


class StepInputError(FusedError, ValueError):
    """A job step's input cannot be used: a map step without input and no previous step, an
    input that is not a committed table, an empty table, a chunk that cannot be read. The message
    names the step or chunk and the fix."""


class RightInputTooLargeError(StepInputError):
    """A join's right single file is larger than the per-worker cache
    (``options.join_cache_bytes``); the message names the limit and the option."""


class StepUdfError(FusedError, TypeError):
    """A job step's UDF does not fit the step: none set, or a map UDF whose signature takes no
    frame (its first parameter receives the chunk)."""


class StepOutputError(FusedError, TypeError):
    """A map UDF returned something that is not a frame (GeoDataFrame, DataFrame, Arrow table
    or None); the message names the chunk and the type."""


class StepSchemaError(FusedError, ValueError):
    """The outputs of two chunks of a map step cannot go in one table (different CRSs, geometry
    columns or column types that do not unify); the message names the two chunks."""


class ProtectedEnvError(FusedError, ValueError):
    """``additional_env`` names a variable the workers need for themselves (the broker URL and
    the other ``FUSED_CELERY_*`` settings, credentials such as ``AWS_*``, ``PATH``,
    ``PYTHONPATH``, ``HOME``, ``LD_*``); the message names it."""


class UdfImportError(FusedError, ImportError):
    """``validate_imports``: a module a job step's UDF imports cannot be found; the message
    names the UDF and the module."""


class JobNotFoundError(FusedError, LookupError):
    """No job record under this id: a typo, or the record expired (``result_expires``)."""


class JobFailedError(FusedError, RuntimeError):
    """A job ended ``Failed``; the message carries the job's reason and its first task errors."""


class JobCanceledError(FusedError, RuntimeError):
    """A job ended ``Canceled`` before producing its output."""


class JobTimeoutError(FusedError, TimeoutError):
    """Waiting for a job took longer than the ``timeout`` given; the job goes on running."""


class CacheValueError(FusedError, TypeError):
    """``@fused.cache`` was asked to store a return value it cannot encode; the message names
    the type and lists what can be cached."""


class UdfLoadError(FusedError, ValueError):
    """``fused.load`` cannot make a UDF of what it was given (a URL it cannot reach, a file
    without a ``@fused.udf`` function, a folder without its ``meta.json``...)."""


class InstanceTypeError(FusedError, ValueError):
    """An ``engine`` or ``instance_type`` is not a whitelisted instance type; the message lists
    the allowed ones."""


# --- the command line and the local cluster ----------------------------------------------------


class CliError(FusedError):
    """An error the CLI reports as one line."""


class PortInUseError(FusedError, OSError):
    """A port the local cluster needs is already taken."""


class ClusterStartError(FusedError, RuntimeError):
    """A worker or Flower process of the local cluster did not come up."""


class InvalidBrokerUrlError(FusedError, ValueError):
    """A broker URL that is not a Redis URL (usually a typo)."""


class SigningConfigError(FusedError, ValueError):
    """Message signing is configured only in part (``security_key``, ``security_certificate``
    and ``security_cert_store`` go together), or a key or certificate file cannot be used."""


# --- deploy and workers on many hosts ----------------------------------------------------------


class DeployError(FusedError, RuntimeError):
    """``fused-celery deploy`` cannot go on: a deploy option is missing or wrong, or AWS
    refused a call (the message names the resource and the fix; never a credential)."""


class SharedStorageRequiredError(FusedError, ValueError):
    """A worker on many hosts (started by ``deploy``) was given a local-disk ``storage_root``,
    whose results and tables other hosts would not see."""


class EvictionPolicyError(FusedError, RuntimeError):
    """The broker's Redis may evict keys (``maxmemory-policy`` is not ``noeviction``): live pools
    and jobs could silently disappear."""


class ProtocolMismatchError(FusedError, RuntimeError):
    """A task message was sent by a fused-celery whose message protocol differs from the
    worker's (or by something that is not fused-celery): the worker refuses it unread."""


# --- maps ------------------------------------------------------------------------------------


class OfflineAssetError(FusedError, RuntimeError):
    """A map needs a JavaScript/CSS resource fused-celery does not ship, or its HTML still
    refers to a network URL."""


class MapFileExistsError(FusedError, FileExistsError):
    """The map's path holds a file fused-celery did not write."""


# --- workers and autoscaling -----------------------------------------------------------------


class QueueNotServedError(FusedError, RuntimeError):
    """Work was submitted to a queue that no live worker consumes and no autoscaled group serves
    (it would stay pending forever); the message names the queue and how to start a worker."""


class DiskSizeError(FusedError, ValueError):
    """A job asks for more ``disk_size_gb`` than its queue's launch template gives."""


class AutoscaleError(FusedError, RuntimeError):
    """The autoscaler cannot act: no group found, an AWS call refused, another leader."""
