"""Pydantic validation errors as one readable line: which field, which value, what it expects.

A ``pydantic.ValidationError`` prints several lines and a link; the typed errors of
fused-celery (:class:`~fused_celery.errors.OptionsError`,
:class:`~fused_celery.errors.StepConfigError`) carry this one line instead. Values of fields
whose names say they are secret are never shown.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_SECRET = re.compile(r"(?i)password|secret|token|(^|_)key($|_)")


def _shown(field: str, value: Any, mask: Callable[[str], str] | None) -> str:
    if _SECRET.search(field):
        return "(hidden)"
    if isinstance(value, str) and mask is not None and "://" in value:
        value = mask(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(
    exc: Any, *, env_prefix: str | None = None, mask: Callable[[str], str] | None = None
) -> str:
    """One line for a ``pydantic.ValidationError``: ``<field> = <value>: <problem>`` per error,
    joined by ``; ``.

    env_prefix: also name the environment variable (``<prefix><FIELD>``, nested fields joined
    by ``__``), as for settings (default None). mask: applied to URL values (e.g. hiding a
    password; default None).
    """
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
        field = ".".join(loc) + "".join(f"[{p}]" for p in err.get("loc", ()) if isinstance(p, int))
        name = field or "the configuration"
        if env_prefix and loc:
            name = f"{env_prefix}{'__'.join(loc).upper()} ({field})"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if field:
            parts.append(f"{name} = {_shown(field, err.get('input'), mask)}: {message}")
        else:
            parts.append(message)
    return "; ".join(parts)
