"""The Lua scripts of the pool and job records: declared here, loaded from ``*.lua`` files.

Every atomic transition of a record (:mod:`fused_celery.state.pool_record`,
:mod:`fused_celery.state.job_record`) is one script. Each is declared once below as a
:class:`Script`: its name (the file ``<name>.lua`` beside this module), the names of its KEYS
and ARGV in order, an optional variadic tail of ARGV (groups of named fields) and the shared
helper files (``_*.lua``) it uses. Python callers pass keys and arguments by name::

    out = scripts.pool_cancel(client, keys=record.keys, args={"channel": channel})

and the Lua side reads them by name too, from a prologue the registry generates from the same
declaration and puts before the helpers and the body (nothing in a ``.lua`` file depends on a
position)::

    local K = {state = KEYS[1], cancelled = KEYS[2], ...}      -- K.state
    local A = {channel = ARGV[1], ...}                         -- A.channel (strings)
    local REST, REST_WIDTH = 3, 3                              -- the tail: ARGV[REST..]
    local R = {pos = 0, attempt = 1, task_id = 2}              -- ARGV[i + R.attempt]

followed by the status tables of :mod:`fused_celery.state.statuses` (``ENTRY.pending``,
``ENTRY_FINISHED[st]``, ``JOB.Done``, ``JOB_TERMINAL[st]``, see :func:`status_prologue`), so
Lua spells no status either.

Loading: each file is read once (``importlib.resources``, so they ship as package data) and
each script's full source is assembled once. Per Redis connection pool (a client and the
pipelines made from it share one) the scripts are registered once, under one lock, in one
cache: a :class:`_Loaded` (SHA1 digest and source) per script. A call is EVALSHA (sent by
:func:`~fused_celery.state.connection.command`, the lean path); on NOSCRIPT (a restarted or
flushed server) it loads the source and retries, and on a pipeline it queues
EVALSHA and lets the pipeline load missing scripts before it executes -- exactly what
redis-py's ``Script`` does. The per-call cost of naming is two list comprehensions over
precomputed tuples of names (no validation library on the hot path).
"""

from __future__ import annotations

import functools
import hashlib
import keyword
import re
import threading
import weakref
from collections.abc import Iterable, Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from fused_celery.state import statuses
from fused_celery.state.connection import command
from fused_celery.state.keys import JOB_PARTS, PARTS

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LUA_KEYWORDS = frozenset(
    ("and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
     "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while")
)  # fmt: skip


def _check_names(where: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if not _NAME.match(name) or name in _LUA_KEYWORDS or keyword.iskeyword(name):
            raise ValueError(f"{where}: {name!r} is not usable as a Lua and Python name")
        if name in seen:
            raise ValueError(f"{where}: {name!r} is declared twice")
        seen.add(name)


@functools.cache
def read_file(filename: str) -> str:
    """The text of ``scripts/<filename>`` (package data), read once per process."""
    return resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")


def _lua_map(values: Iterable[str], value: str | None = None) -> str:
    """``{a = 'a', b = 'b'}`` (or ``{a = value, ...}``)."""
    return "{" + ", ".join(f"{v} = {value if value else repr(v)}" for v in values) + "}"


@functools.cache
def status_prologue() -> str:
    """The Lua status tables every script starts with, generated from
    :mod:`fused_celery.state.statuses` (the one place a status is spelled)."""
    for group in (statuses.ENTRY_STATUSES, statuses.JOB_STATUSES):
        _check_names("statuses", group)
    ordered = ", ".join(repr(s) for s in statuses.ENTRY_STATUSES)
    return "\n".join(
        [
            f"local ENTRY = {_lua_map(statuses.ENTRY_STATUSES)}",
            f"local ENTRY_STATUSES = {{{ordered}}}",
            f"local ENTRY_FINISHED = {_lua_map(sorted(statuses.ENTRY_FINISHED), 'true')}",
            f"local JOB = {_lua_map(statuses.JOB_STATUSES)}",
            f"local JOB_TERMINAL = {_lua_map(sorted(statuses.JOB_TERMINAL), 'true')}",
        ]
    )


_NONE: Mapping[str, Any] = MappingProxyType({})


class Script:
    """One Lua script: ``<name>.lua`` with its KEYS and ARGV declared by name.

    name: the script (its file is ``<name>.lua`` unless ``body`` is given). keys: names of
    KEYS[1..]. argv: names of ARGV[1..]. rest: ``(name, fields)`` of a variadic tail after
    ``argv``: a sequence of groups, each a tuple of ``fields`` (a single field: a sequence of
    values). uses: helper files (``_<helper>.lua``) put before the body, in this order.
    body: Lua source instead of the file (for tests and one-off scripts).

    Call it as ``script(client, keys=mapping, args=mapping)``: ``keys`` maps at least every
    declared key name (extra names are ignored, so a record's whole key mapping can be
    passed); ``args`` maps exactly the declared argument names, plus the tail's name.
    """

    __slots__ = (
        "name", "keys", "argv", "rest", "rest_fields", "uses", "_body", "_n_args", "_source",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        *,
        keys: tuple[str, ...],
        argv: tuple[str, ...] = (),
        rest: tuple[str, tuple[str, ...]] | None = None,
        uses: tuple[str, ...] = (),
        body: str | None = None,
    ) -> None:
        self.name = name
        self.keys = tuple(keys)
        self.argv = tuple(argv)
        self.rest, self.rest_fields = (rest[0], tuple(rest[1])) if rest else (None, ())
        self.uses = tuple(uses)
        self._body = body
        self._source: str | None = None
        _check_names(f"script {name} keys", self.keys)
        _check_names(f"script {name} argv", (*self.argv, *([self.rest] if self.rest else [])))
        _check_names(f"script {name} rest fields", self.rest_fields)
        if self.rest and not self.rest_fields:
            raise ValueError(f"script {name}: the tail {self.rest!r} needs at least one field")
        self._n_args = len(self.argv) + (1 if self.rest else 0)

    def __repr__(self) -> str:
        return f"<Script {self.name} keys={self.keys} argv={self.argv} rest={self.rest}>"

    @property
    def filename(self) -> str:
        """The file of the body (``<name>.lua``)."""
        return f"{self.name}.lua"

    def prologue(self) -> str:
        """The generated Lua that names KEYS and ARGV (see the module docstring)."""
        named_keys = ", ".join(f"{k} = KEYS[{i}]" for i, k in enumerate(self.keys, 1))
        named_argv = ", ".join(f"{a} = ARGV[{i}]" for i, a in enumerate(self.argv, 1))
        lines = [
            f"-- {self.name}: prologue generated by fused_celery.state.scripts",
            f"local K = {{{named_keys}}}",
            f"local A = {{{named_argv}}}",
        ]
        if self.rest:
            fields = ", ".join(f"{f} = {i}" for i, f in enumerate(self.rest_fields))
            lines += [
                f"local REST, REST_WIDTH = {len(self.argv) + 1}, {len(self.rest_fields)}"
                f"  -- ARGV[REST..]: {self.rest}",
                f"local R = {{{fields}}}",
            ]
        return "\n".join(lines)

    @property
    def source(self) -> str:
        """The full Lua source: prologue, status tables, helpers, body (assembled once)."""
        if self._source is None:
            parts = [self.prologue(), status_prologue()]
            for helper in self.uses:
                parts.append(f"-- helper _{helper}.lua\n" + read_file(f"_{helper}.lua"))
            body = self._body if self._body is not None else read_file(self.filename)
            parts.append(f"-- {self.filename}\n{body}")
            self._source = "\n".join(parts)
        return self._source

    def flatten(self, keys: Mapping[str, Any], args: Mapping[str, Any]) -> tuple[list, list]:
        """``(KEYS, ARGV)`` in the declared order (what :meth:`__call__` sends)."""
        try:
            key_list = [keys[name] for name in self.keys]
            argv = [args[name] for name in self.argv]
        except KeyError as exc:
            raise TypeError(f"script {self.name}: no value for {exc.args[0]!r}") from None
        if len(args) != self._n_args:
            extra = sorted(set(args) - {*self.argv, self.rest})
            raise TypeError(f"script {self.name}: unexpected arguments {extra}")
        if self.rest is not None:
            try:
                tail = args[self.rest]
            except KeyError:
                raise TypeError(f"script {self.name}: no value for {self.rest!r}") from None
            if len(self.rest_fields) == 1:
                argv.extend(tail)
            else:
                width, start = len(self.rest_fields), len(argv)
                for group in tail:
                    argv.extend(group)
                if (len(argv) - start) % width:
                    raise TypeError(
                        f"script {self.name}: each item of {self.rest!r} must be "
                        f"({', '.join(self.rest_fields)})"
                    )
        return key_list, argv

    def eval_command(self, keys: Mapping[str, Any], args: Mapping[str, Any]) -> list[Any]:
        """The script as an ``EVAL`` command (its full source, so that it runs inside a
        ``MULTI`` where an ``EVALSHA`` could fail with NOSCRIPT after the other commands ran):
        for :func:`~fused_celery.state.connection.transaction`."""
        key_list, argv = self.flatten(keys, args)
        return ["EVAL", self.source, len(key_list), *key_list, *argv]

    def __call__(
        self, client: redis.Redis, *, keys: Mapping[str, Any], args: Mapping[str, Any] = _NONE
    ) -> Any:
        """Run the script on ``client`` (a client or a pipeline: then queued)."""
        key_list, argv = self.flatten(keys, args)
        loaded = loaded_for(client).get(self) or _register(client, self)
        if isinstance(client, Pipeline):
            client.scripts.add(loaded)  # the pipeline loads missing scripts before it executes
            return client.evalsha(loaded.sha, len(key_list), *key_list, *argv)
        try:
            return command(client, "EVALSHA", loaded.sha, len(key_list), *key_list, *argv)
        except NoScriptError:  # flushed, or a restarted server
            loaded.sha = client.script_load(loaded.script)
            return command(client, "EVALSHA", loaded.sha, len(key_list), *key_list, *argv)


class _Loaded:
    """A script as registered for one connection pool (``sha`` and ``script``: the attributes a
    redis-py pipeline reads and updates when it loads missing scripts)."""

    __slots__ = ("sha", "script")

    def __init__(self, sha: str, script: str) -> None:
        self.sha = sha
        self.script = script


# --------------------------------------------------------------------------- registrations

#: connection pool -> {script: _Loaded}; one entry per pool (clients and their pipelines).
_registered: weakref.WeakKeyDictionary[Any, dict[Script, _Loaded]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
#: Registrations made so far (tests check that there is one per connection pool).
registrations = 0


def _load(client: redis.Redis, script: Script) -> _Loaded:
    source = script.source
    return _Loaded(hashlib.sha1(client.get_encoder().encode(source)).hexdigest(), source)


def loaded_for(client: redis.Redis) -> dict[Script, _Loaded]:
    """Every declared script registered for ``client``'s connection pool (once, thread-safe)."""
    pool = client.connection_pool
    found = _registered.get(pool)
    if found is None:
        global registrations
        with _lock:
            found = _registered.get(pool)
            if found is None:
                found = _registered[pool] = {s: _load(client, s) for s in SCRIPTS}
                registrations += 1
    return found


def _register(client: redis.Redis, script: Script) -> _Loaded:
    """Register a script that is not in :data:`SCRIPTS` (``body=``) for ``client``'s pool."""
    with _lock:
        found = _registered[client.connection_pool]
        loaded = found.get(script)
        if loaded is None:
            loaded = found[script] = _load(client, script)
        return loaded


# --------------------------------------------------------------------------- the scripts

# Pool records (fused_celery.state.pool_record); key names are parts of keys.PARTS, plus
# ``tomb`` (keys.tombstone_key) and ``pools`` (keys.POOLS_INDEX).

#: Write a whole pool record (client, at submit).
pool_create = Script(
    "pool_create",
    keys=(*PARTS, "tomb", "pools"),
    argv=(
        "ttl", "tomb_ttl", "created", "trim_before", "n", "batch_size", "lanes", "pool_id",
        "placeholder", "meta", "inline",
    ),
    rest=("encoded", ("arg",)),
)  # fmt: skip

#: Begin a message's entries (worker).
pool_start = Script(
    "pool_start",
    keys=(
        "state", "cancelled", "args", "begun", "hosts", "deliveries", "version", "outcome",
        "logs", "tasks", "counts", "meta", "tomb",
    ),
    argv=(
        "task_id", "redelivered", "host", "now", "max_deliveries", "channel", "cache_digest",
        "cache_max_age", "cache_prefix", "want_meta", "placeholder",
    ),
    rest=("entries", ("pos", "attempt")),
    uses=("hmget", "pool_entry"),
)  # fmt: skip

#: Record a message's outcomes and chain the lane's next item (worker).
pool_finish = Script(
    "pool_finish",
    keys=(
        "state", "outcome", "logs", "history", "version", "lanes", "tasks", "counts", "backlog",
        "items",
    ),
    argv=(
        "now", "channel", "n", "batch_size", "lane", "lane_item", "redelivered", "chain",
        "cache_ttl", "retry_task_id", "pool_id", "payload_max",
    ),
    rest=(
        "results",
        ("pos", "attempt", "status", "json", "logs", "started", "finished", "mode", "cache_key"),
    ),
    uses=("hmget", "pool_entry", "pool_lanes"),
)  # fmt: skip

#: Read entries' states, outcomes and logs as one JSON string (client, large reads).
pool_read = Script(
    "pool_read",
    keys=("state", "outcome", "logs"),
    argv=(),
    rest=("positions", ("pos",)),
    uses=("hmget",),
)

#: Read the version and every entry's state as one JSON string (client, large pools).
pool_states = Script("pool_states", keys=("version", "state"))

#: Cancel every pending entry (client).
pool_cancel = Script(
    "pool_cancel",
    keys=("state", "cancelled", "version", "tasks", "counts"),
    argv=("channel",),
    uses=("hmget", "pool_entry"),
)

#: Move entries to a new attempt (client).
pool_retry = Script(
    "pool_retry",
    keys=("state", "cancelled", "tasks", "version", "meta", "counts"),
    argv=("now", "channel"),
    rest=("entries", ("pos", "attempt", "task_id")),
    uses=("hmget", "pool_entry"),
)

#: Retry entries of a capped pool through its lanes (client).
pool_retry_lanes = Script(
    "pool_retry_lanes",
    keys=("state", "cancelled", "tasks", "version", "meta", "counts", "lanes", "backlog", "items"),
    argv=("now", "channel", "n", "batch_size", "n_lanes", "pool_id", "tag"),
    rest=("entries", ("pos", "attempt")),
    uses=("hmget", "pool_entry", "pool_lanes"),
)

# Job records (fused_celery.state.job_record); key names are keys.JOB_PARTS, plus ``jobs``
# (keys.JOBS_INDEX). Every write but create takes ttl, now and log_cap first.

_JOB_ARGV = ("ttl", "now", "log_cap", "events")

#: Create a job record and index it.
job_create = Script(
    "job_create",
    keys=("meta", "jobs"),
    argv=("ttl", "now", "max_indexed"),
    rest=("fields", ("field", "value")),
)
job_start_stage = Script(
    "job_start_stage", keys=JOB_PARTS, argv=(*_JOB_ARGV, "stage", "total"), uses=("job_common",)
)
job_task_done = Script(
    "job_task_done",
    keys=JOB_PARTS,
    argv=(*_JOB_ARGV, "task_key", "units_field", "units"),
    uses=("job_common",),
)
job_task_failed = Script(
    "job_task_failed",
    keys=JOB_PARTS,
    argv=(*_JOB_ARGV, "task_key", "error", "max_errors", "log_line"),
    uses=("job_common",),
)
job_log = Script(
    "job_log", keys=JOB_PARTS, argv=(*_JOB_ARGV, "level", "message"), uses=("job_common",)
)
job_finish = Script(
    "job_finish",
    keys=JOB_PARTS,
    argv=(*_JOB_ARGV, "status", "reason", "result"),
    uses=("job_common",),
)
job_request_cancel = Script(
    "job_request_cancel", keys=JOB_PARTS, argv=_JOB_ARGV, uses=("job_common",)
)
job_set_fields = Script(
    "job_set_fields",
    keys=JOB_PARTS,
    argv=_JOB_ARGV,
    rest=("fields", ("field", "value")),
    uses=("job_common",),
)
#: Add instance-seconds of a task to the job's cost (``cost_s:<instance type>``).
job_add_cost = Script(
    "job_add_cost", keys=JOB_PARTS, argv=(*_JOB_ARGV, "field", "amount"), uses=("job_common",)
)
#: Keep what a stage's chord was launched with (for the watchdog's re-send of lost members).
job_put_launch = Script(
    "job_put_launch", keys=JOB_PARTS, argv=(*_JOB_ARGV, "stage", "value"), uses=("job_common",)
)
#: Read only: the log lines after a sequence number.
job_logs_after = Script("job_logs_after", keys=("meta", "logs"), argv=("seq",))

# The autoscaler (fused_celery.autoscale): keys.POOLS_INDEX and kombu's unacked hash; the leader
# lock keys.AUTOSCALE_LEADER.

#: Read every queue's backlog in one call (read only).
autoscale_backlog = Script(
    "autoscale_backlog",
    keys=("pools", "unacked"),
    argv=("since", "pool_prefix", "suffixes"),
    rest=("queues", ("queue",)),
)
#: Take or renew the leader lock.
autoscale_leader = Script("autoscale_leader", keys=("lock",), argv=("owner", "ttl_ms"))

#: Every declared script, by name.
SCRIPTS: tuple[Script, ...] = tuple(v for v in list(globals().values()) if isinstance(v, Script))
BY_NAME: dict[str, Script] = {s.name: s for s in SCRIPTS}
