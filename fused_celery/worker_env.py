"""``additional_env``: extra environment variables a job asks of the workers that run it.

Job steps accept ``additional_env`` as ``KEY=value`` strings (seed 000).
:func:`parse_additional_env` validates them once, at submission, so a malformed entry or a
protected variable (:func:`protected_reason`) fails before any work starts; the drivers run every
task of the job inside :func:`applied_env`, which sets them and restores the worker's own values
afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping

from fused_celery.errors import ProtectedEnvError

#: Variables a job may not set on the workers: their own configuration and search paths.
PROTECTED_NAMES = frozenset({"PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "HOME"})
#: Prefixes of protected variables: fused-celery's settings (broker URL, keys, storage),
#: Celery's, cloud credentials and the dynamic loader's.
PROTECTED_PREFIXES = ("FUSED_CELERY_", "CELERY_", "AWS_", "LD_", "DYLD_")

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_additional_env(entries: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``{KEY: value}`` from ``KEY=value`` strings (a mapping or None is accepted as well).

    The key must be a shell-style name (letters, digits, ``_``; not starting with a digit); the
    value may contain anything, ``=`` included. Raises ``ValueError`` naming the bad entry.
    """
    if entries is None:
        return {}
    if isinstance(entries, Mapping):
        pairs = [(str(k), str(v)) for k, v in entries.items()]
    elif isinstance(entries, str):
        raise ValueError(
            f"additional_env must be a list of 'KEY=value' strings, not the string {entries!r}"
        )
    else:
        pairs = []
        for entry in entries:
            if not isinstance(entry, str) or "=" not in entry:
                raise ValueError(f"additional_env entry {entry!r} is not of the form KEY=value")
            key, value = entry.split("=", 1)
            pairs.append((key, value))
    env: dict[str, str] = {}
    for key, value in pairs:
        if not _KEY.fullmatch(key):
            raise ValueError(
                f"additional_env key {key!r} is not a valid variable name "
                "(letters, digits and _, not starting with a digit)"
            )
        reason = protected_reason(key)
        if reason:
            raise ProtectedEnvError(
                f"additional_env cannot set {key}: {reason}; the workers keep their own value. "
                "Pass the value to the UDF as a parameter, or name the variable differently"
            )
        env[key] = value
    return env


def protected_reason(key: str) -> str | None:
    """Why the workers keep their own ``key`` (None: a job may set it)."""
    if key.upper() in PROTECTED_NAMES:
        return f"{key} is part of the worker's own environment (search paths, home)"
    prefix = next((p for p in PROTECTED_PREFIXES if key.upper().startswith(p)), None)
    if prefix is not None:
        return (
            f"{prefix}* variables are the worker's configuration, credentials or loader "
            "settings (the broker URL, storage keys, AWS credentials, LD_PRELOAD...)"
        )
    return None


@contextlib.contextmanager
def applied_env(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` while the block runs, then restore each variable's value
    before it (removing those that were unset). Protected names are refused again here, in case
    a message was forged (:class:`ProtectedEnvError`)."""
    if not env:
        yield
        return
    for key in env:
        reason = protected_reason(key)
        if reason:
            raise ProtectedEnvError(f"a job's additional_env sets {key}: {reason}")
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
