"""``additional_env``: extra environment variables a job asks of the workers that run it.

Job steps accept ``additional_env`` as ``KEY=value`` strings (seed 000).
:func:`parse_additional_env` validates them once, at submission, so a malformed entry fails
before any work starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

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
        env[key] = value
    return env
