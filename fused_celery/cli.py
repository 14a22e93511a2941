"""The ``fused-celery`` command.

Subcommands:

- ``up``      a local cluster (Redis, workers, Flower) until Ctrl-C
- ``worker``  one Celery worker with the project's app and settings
- ``flower``  Flower, the Celery web monitor
- ``redis``   a private redis-server in the foreground (for Procfile / honcho)
- ``autoscale`` the queue-depth autoscaler (EC2 Auto Scaling groups, or local workers)
- ``demo``    bring up a local cluster, run a ``udf.map``, print the result and the path of its
  map, shut down
- ``deploy``  ``plan | apply | destroy`` the workers on AWS (see ``deploy/README.md``)

Settings come from ``fused_celery.options`` (``FUSED_CELERY_*`` environment variables). Errors print
one ``error: ...`` line and exit with code 2. Nothing printed carries a password: URLs are masked
and generated passwords go to files of mode 0600 whose paths are printed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from fused_celery.errors import CliError, FusedError
from fused_celery.options import DEFAULT_QUEUE, WHITELISTED_INSTANCE_TYPES, mask_url, options

if TYPE_CHECKING:
    from fused_celery.cluster.local_cluster import LocalCluster

EXIT_ERROR = 2


# -- helpers ------------------------------------------------------------------------------------


def _queue_list(values: Sequence[str] | None) -> list[str]:
    """Flatten ``--queues a,b --queues c`` into ``[a, b, c]`` (order kept, no duplicates)."""
    out: list[str] = []
    for value in values or ():
        out.extend(q.strip() for q in value.split(",") if q.strip())
    return list(dict.fromkeys(out))


def _check_queues(queues: Sequence[str]) -> None:
    from fused_celery.queues import parse_queue

    allowed = (DEFAULT_QUEUE, *WHITELISTED_INSTANCE_TYPES)
    for queue in queues:
        try:
            parse_queue(queue)
        except ValueError as exc:
            raise CliError(
                f"unknown queue {queue!r}; allowed: {', '.join(allowed)}, optionally with "
                f"@<region> and :<image_name> ({exc})"
            ) from None


def _wait_for_broker(url: str | None, wait: float) -> str:
    """The configured broker URL once it answers PING (waiting up to ``wait`` s)."""
    from fused_celery.cluster.redis_server import check_redis_url, ping

    if not url:
        raise CliError(
            "no broker configured: set FUSED_CELERY_BROKER_URL (e.g. redis://127.0.0.1:6379/0), "
            "or run `fused-celery up` for a local cluster"
        )
    check_redis_url(url)
    deadline = time.monotonic() + wait
    while not ping(url, timeout=1.0):
        if time.monotonic() >= deadline:
            raise CliError(
                f"no Redis answers at {mask_url(url)} (FUSED_CELERY_BROKER_URL) after "
                f"{wait:.0f} s; start Redis there, fix the URL, or run `fused-celery up`"
            )
        time.sleep(0.5)
    return url


def _check_signing() -> None:
    """Raise :class:`SigningConfigError` now (one line, exit 2) rather than in the process that
    replaces this one, when message signing is configured in part or with unusable files."""
    from fused_celery.celery_app import serializer_config

    serializer_config()


def _exec(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Replace this process with ``argv`` (signals then reach Celery directly), in environment
    ``env`` (default None: this process's)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, os.environ if env is None else env)


def _passthrough(extra: Sequence[str]) -> list[str]:
    return list(extra[1:] if extra and extra[0] == "--" else extra)


# -- up -----------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    """Run a local cluster until Ctrl-C or SIGTERM, then stop everything it started."""
    from fused_celery.cluster.local_cluster import LocalCluster

    queues = _queue_list(args.queues)
    _check_queues(queues)
    stop = threading.Event()
    started = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if not started.is_set():  # still starting: unwind, LocalCluster.start cleans up
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = LocalCluster(
        workers=args.workers,
        flower_port=args.flower_port,
        auth=not args.no_auth,
        queues=queues,
        concurrency=args.concurrency,
    )
    try:
        cluster.start()
        started.set()
        print("Cluster up. Press Ctrl-C to stop.", flush=True)
        _serve(cluster, stop)
        print("Stopping ...", flush=True)
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("Stopped.", flush=True)
    return 0


# -- worker / flower / redis --------------------------------------------------------------------


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The ``celery worker`` command line for ``fused-celery worker`` arguments."""
    from fused_celery.cluster.local_cluster import worker_command

    queues = _queue_list(args.queues)
    if args.instance_type:
        queues.append(args.instance_type)
    queues = list(dict.fromkeys(queues)) or [DEFAULT_QUEUE]
    _check_queues(queues)
    label = args.instance_type or DEFAULT_QUEUE
    hostname = args.hostname or f"{label}-{os.getpid()}@{socket.gethostname()}"
    return worker_command(
        hostname,
        queues,
        concurrency=args.concurrency,
        pool=args.pool,
        loglevel=args.loglevel,
        extra=_passthrough(args.celery_args),
    )


def cmd_worker(args: argparse.Namespace) -> int:
    """Exec a Celery worker serving the requested queues (SIGTERM: warm shutdown).

    With ``deploy_broker_password_parameter`` set (instances started by ``deploy``), the broker
    password is read from SSM first and handed to Celery by environment. The worker's checks
    (:func:`~fused_celery.engines.celery.preflight.check_worker`: shared storage, the broker's
    eviction policy) run here for a one-line error, and again in the Celery process.
    """
    from fused_celery.engines.celery.preflight import check_worker
    from fused_celery.worker_memory import allocator_env

    argv = worker_argv(args)
    _check_signing()
    if options.deploy_broker_password_parameter:
        from fused_celery.deploy.secrets import resolve_broker_url

        url = resolve_broker_url(options)
        if url:
            os.environ["FUSED_CELERY_BROKER_URL"] = url
            options.broker_url = url
    _wait_for_broker(options.broker_url, args.wait_for_broker)
    check_worker()
    _exec(argv, allocator_env(os.environ))  # the allocators keep freed memory (worker_memory)
    return 0  # pragma: no cover


def cmd_flower(args: argparse.Namespace) -> int:
    """Exec Flower on ``--address``:``--port``, with basic auth unless ``--no-auth``.

    The credentials reach Flower by environment (``FLOWER_BASIC_AUTH``), never on its command
    line: ``--basic-auth``, else ``FLOWER_BASIC_AUTH`` as set, else a generated password written
    to ``<cluster_dir>/flower.env`` (0600), whose path is printed. ``/metrics`` needs them too.
    """
    from fused_celery.cluster.credentials import flower_line, write_private
    from fused_celery.cluster.local_cluster import FLOWER_USER, PortInUseError, flower_command
    from fused_celery.cluster.redis_server import port_is_free

    if not port_is_free(args.port, args.address or "0.0.0.0"):
        raise PortInUseError(f"port {args.port} is already in use; pick another with --port")
    _check_signing()
    _wait_for_broker(options.broker_url, args.wait_for_broker)
    flower_args = [f"--port={args.port}", f"--address={args.address}"]
    if args.no_auth:
        os.environ.pop("FLOWER_BASIC_AUTH", None)
    elif args.basic_auth:
        os.environ["FLOWER_BASIC_AUTH"] = args.basic_auth
    elif not os.environ.get("FLOWER_BASIC_AUTH"):
        password = secrets.token_urlsafe(18)
        url = f"http://{args.address}:{args.port}"
        path = os.path.join(options.cluster_dir, "flower.env")
        write_private(path, flower_line(url, FLOWER_USER, password))
        print(f"Flower: {url} user {FLOWER_USER}; password in {path} (mode 0600)", flush=True)
        os.environ["FLOWER_BASIC_AUTH"] = f"{FLOWER_USER}:{password}"
    _exec(flower_command(*flower_args, *_passthrough(args.celery_args)))
    return 0  # pragma: no cover


def cmd_redis(args: argparse.Namespace) -> int:
    """Run a private redis-server on loopback in the foreground until Ctrl-C or SIGTERM."""
    from fused_celery.cluster.redis_server import RedisServer

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    server = RedisServer(
        args.dir or os.path.join(options.cluster_dir, "redis"),
        port=args.port,
        appendonly=not args.no_appendonly,
    )
    try:
        server.start()
        print(f"Redis: {mask_url(server.url)} (data in {server.dir}); Ctrl-C stops it", flush=True)
        while not stop.wait(1.0):
            if not server.running():
                raise CliError(f"redis-server exited; see {server.log_path}")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _serve(cluster: LocalCluster, stop: threading.Event) -> None:
    """Wait until ``stop`` is set, saying when a worker of ``cluster`` exits."""
    reported: set[str] = set()
    while not stop.wait(1.0):
        for name in cluster.dead_workers():
            if name not in reported:
                reported.add(name)
                print(f"warning: worker {name} exited; see {cluster.log_dir}", flush=True)


# -- demo ---------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Local cluster → ``udf.map`` over ``--entries`` points → collected DataFrame → its map
    (an HTML file; the path is printed) → shut down, or with ``--keep`` stay up (Flower too)
    until Ctrl-C or SIGTERM. Flower's URL, and the 0600 file holding its password, are printed
    while the cluster runs (before the map starts, and again at the end)."""
    import pandas as pd

    from fused_celery.cluster.local_cluster import LocalCluster

    if args.entries < 1:
        raise CliError("--entries must be at least 1")
    with LocalCluster(
        workers=args.workers, flower_port=args.flower_port, auth=not args.no_auth
    ) as cluster:
        from fused_celery.demo import buffered_point, sample_points, write_result_map

        flower = (
            f"Flower: {cluster.flower_url}/tasks  {cluster.flower_login}"
            if cluster.flower_url
            else "Flower: not started (--flower-port was not given)"
        )
        arg_list = sample_points(args.entries)
        print(f"\nWatch the map in {flower}; its tasks are named 'udf:buffered_point'.")
        print(f"\nMapping buffered_point over {len(arg_list)} points on engine='remote' ...")
        pool = buffered_point.map(arg_list, engine="remote")
        pool.wait()
        df = pool.collect()
        if list(df.columns) == ["result"] and all(isinstance(v, dict) for v in df["result"]):
            df = pd.DataFrame(list(df["result"]), index=df.index)  # one column per dict key
        with pd.option_context("display.width", 140, "display.max_columns", 12):
            print(f"\npool.collect() -> DataFrame with {len(df)} rows:\n{df}")
        print(f"\nstatus:\n{pool.status()}")
        print(f"Map of the result: {write_result_map(df)}")
        if args.keep:
            print(f"\n{flower}")
            print("Cluster kept up (--keep). Press Ctrl-C to stop.", flush=True)
            stop = threading.Event()
            previous = {
                s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                _serve(cluster, stop)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        else:
            print(f"\n{flower} (up until the cluster stops: run with --keep to look around)")
        print("Shutting down the local cluster ...", flush=True)
    return 0


# -- deploy -------------------------------------------------------------------------------------


def cmd_deploy(args: argparse.Namespace) -> int:
    """``deploy plan`` prints the changes; ``apply`` makes them (a second run changes nothing);
    ``destroy`` lists, and with ``--yes`` deletes, everything tagged with the deployment."""
    from fused_celery.deploy import run

    if args.name:
        options.deploy_name = args.name
    if args.action == "destroy":
        aws, changes = run.destroy_changes(options)
        for change in changes:
            print(change, flush=True)
        if not changes:
            print(f"Nothing of deployment {options.deploy_name!r} found.")
            return 0
        if not args.yes:
            print(f"{len(changes)} resource(s) would be deleted; run again with --yes to delete.")
            return 1
        aws.apply(changes, say=lambda line: print(f"done: {line}", flush=True))
        print(f"Deployment {options.deploy_name!r} destroyed.")
        return 0
    for warning in run.broker_warnings(options):
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    prepared = run.prepare(options)
    print(
        f"Workers' storage root: {prepared.deployment.storage_root} (set "
        "FUSED_CELERY_STORAGE_ROOT to it on the clients too)",
        flush=True,
    )
    if not prepared.changes:
        print(f"Deployment {options.deploy_name!r} is up to date: nothing to change.")
        return 0
    if args.action == "plan":
        for change in prepared.changes:
            print(change, flush=True)
        print(f"{len(prepared.changes)} change(s); `fused-celery deploy apply` makes them.")
        return 0
    run.apply(prepared, say=lambda line: print(f"done: {line}", flush=True))
    print(f"Deployment {options.deploy_name!r} applied ({len(prepared.changes)} change(s)).")
    return 0


# -- autoscale ----------------------------------------------------------------------------------


def cmd_autoscale(args: argparse.Namespace) -> int:
    """Run the autoscaler until Ctrl-C or SIGTERM (see :mod:`fused_celery.autoscale.loop`)."""
    from fused_celery.autoscale.actuators import Ec2Actuator, LocalActuator
    from fused_celery.autoscale.loop import Autoscaler
    from fused_celery.state.connection import redis_client

    if args.interval is not None:
        options.autoscale_interval = args.interval
    url = _wait_for_broker(options.broker_url, args.wait_for_broker)
    if args.actuator == "local":
        queues = _queue_list(args.queues) or list(options.autoscale_queues)
        if not queues:
            raise CliError(
                "the local actuator needs the queues it serves: --queues m5.large (or "
                "FUSED_CELERY_AUTOSCALE_QUEUES)"
            )
        _check_queues(queues)
        actuator = LocalActuator(
            queues,
            redis_client(url),
            max_size=args.max_workers,
            concurrency=args.concurrency,
        )
    else:
        actuator = Ec2Actuator()
    scaler = Autoscaler(actuator, broker_url=url, dry_run=args.dry_run)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        scaler.run(stop, cycles=args.cycles)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not args.dry_run:
            scaler.release()
            if args.stop_workers:
                actuator.close()
    return 0


# -- parser / main ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, its usage errors printed as the command's one ``error:`` line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``fused-celery``."""
    parser = _Parser(
        prog="fused-celery",
        description="The Fused udf.map / JobPool API on your own Celery + Redis cluster.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    instance_help = f"one of: {', '.join(WHITELISTED_INSTANCE_TYPES)}"

    up = sub.add_parser("up", help="run a local cluster (Redis, workers, Flower) until Ctrl-C")
    up.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    up.add_argument("--flower-port", type=int, default=5555, help="Flower port (default 5555)")
    up.add_argument("--no-auth", action="store_true", help="Flower without a password")
    up.add_argument(
        "--queues",
        action="append",
        help=f"extra queues besides {DEFAULT_QUEUE!r} ({instance_help})",
    )
    up.add_argument("--concurrency", type=int, help="processes per worker (default CPUs/workers)")
    up.set_defaults(func=cmd_up)

    worker = sub.add_parser(
        "worker", help="run one Celery worker (celery -A fused_celery.celery_app worker)"
    )
    worker.add_argument(
        "--queues",
        action="append",
        help=f"queues to serve, comma-separated (default {DEFAULT_QUEUE!r})",
    )
    worker.add_argument(
        "--instance-type",
        choices=WHITELISTED_INSTANCE_TYPES,
        metavar="TYPE",
        help=f"serve this instance type's queue; {instance_help}",
    )
    worker.add_argument("--concurrency", type=int, help="pool processes (default: CPU count)")
    worker.add_argument("--loglevel", default="INFO", help="Celery log level (default INFO)")
    worker.add_argument("--pool", default="prefork", help="Celery pool (default prefork)")
    worker.add_argument("--hostname", help="node name (default <queue>-<pid>@<host>)")
    worker.add_argument(
        "--wait-for-broker",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for Redis to answer before failing (default 30)",
    )
    worker.add_argument("celery_args", nargs=argparse.REMAINDER, help="-- then celery options")
    worker.set_defaults(func=cmd_worker)

    flower = sub.add_parser("flower", help="run Flower, the Celery web monitor")
    flower.add_argument("--port", type=int, default=5555, help="port (default 5555)")
    flower.add_argument("--address", default="127.0.0.1", help="address (default 127.0.0.1)")
    flower.add_argument("--no-auth", action="store_true", help="no password")
    flower.add_argument(
        "--basic-auth",
        help="user:password (default: FLOWER_BASIC_AUTH, else generated into "
        "<cluster_dir>/flower.env, mode 0600)",
    )
    flower.add_argument("--wait-for-broker", type=float, default=30.0, metavar="SECONDS")
    flower.add_argument("celery_args", nargs=argparse.REMAINDER, help="-- then flower options")
    flower.set_defaults(func=cmd_flower)

    redis_p = sub.add_parser("redis", help="run a private redis-server on loopback (foreground)")
    redis_p.add_argument("--port", type=int, default=6379, help="port (default 6379)")
    redis_p.add_argument("--dir", help="data directory (default <cluster_dir>/redis)")
    redis_p.add_argument("--no-appendonly", action="store_true", help="keep nothing on disk")
    redis_p.set_defaults(func=cmd_redis)

    auto = sub.add_parser(
        "autoscale", help="scale each queue's workers with its backlog (EC2 groups or local)"
    )
    auto.add_argument(
        "--actuator",
        choices=("ec2", "local"),
        default="ec2",
        help="ec2: the Auto Scaling groups tagged by `deploy` (default); local: worker "
        "processes on this machine",
    )
    auto.add_argument("--queues", action="append", help="queues the local actuator serves")
    auto.add_argument(
        "--interval", type=float, help="seconds between cycles (default autoscale_interval, 15)"
    )
    auto.add_argument("--dry-run", action="store_true", help="log decisions, change nothing")
    auto.add_argument("--max-workers", type=int, default=4, help="local: workers per queue (4)")
    auto.add_argument("--concurrency", type=int, default=1, help="local: processes per worker")
    auto.add_argument(
        "--stop-workers",
        action="store_true",
        help="local: stop the workers on a clean exit (default: leave them; the next run adopts "
        "them)",
    )
    auto.add_argument("--cycles", type=int, help="stop after this many cycles (default: never)")
    auto.add_argument("--wait-for-broker", type=float, default=30.0, metavar="SECONDS")
    auto.set_defaults(func=cmd_autoscale)

    demo = sub.add_parser("demo", help="local cluster + a udf.map over a few hundred points")
    demo.add_argument("--entries", type=int, default=300, help="map entries (default 300)")
    demo.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    demo.add_argument(
        "--flower-port", type=int, default=0, help="Flower port (default 0: a free one)"
    )
    demo.add_argument("--no-auth", action="store_true", help="Flower without a password")
    demo.add_argument("--keep", action="store_true", help="keep the cluster up until Ctrl-C")
    demo.set_defaults(func=cmd_demo)

    deploy = sub.add_parser(
        "deploy",
        help="plan/apply/destroy the workers on AWS (one Auto Scaling group per queue)",
        description="Settings: FUSED_CELERY_DEPLOY_* and FUSED_CELERY_AWS_REGION (see "
        "deploy/README.md); AWS credentials from boto3's standard chain.",
    )
    deploy.add_argument("action", choices=["plan", "apply", "destroy"])
    deploy.add_argument("--name", help="the deployment's name (default: options.deploy_name)")
    deploy.add_argument("--yes", action="store_true", help="destroy: really delete")
    deploy.set_defaults(func=cmd_deploy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fused-celery`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FusedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        from fused_celery.celery_app import broker_connection_errors

        if not isinstance(exc, broker_connection_errors()):
            raise
        url = mask_url(options.broker_url) if options.broker_url else "(no broker URL configured)"
        print(f"error: cannot reach the broker at {url}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
