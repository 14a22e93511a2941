"""How a task message reads in Flower, without changing the task protocol: a display name
(Celery's ``shadow``: ``udf:<udf name>`` for a pool's entries, ``ingest:<stage>`` /
``map:<stage>`` / ``job:<stage>`` for a job's stages) and readable ``argsrepr`` /
``kwargsrepr`` (the pool or job, the entry positions or the stage's item, the entries' arguments
truncated). Workers run the task by its real name; only events and Flower show these.

Formatting is :mod:`reprlib` (bounded, cheap): a pool computes the parts that do not change once
(:class:`PoolDisplay`), so that publishing stays fast.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_REPR = 160
"""Characters of an argument's repr at most (Flower's columns stay readable)."""

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxset = 6
_short.maxdict = 8
_short.maxlevel = 3

STEP_LABELS = {"partition_geospatial": "ingest", "map": "map", "udf": "udf", "composed": "job"}
"""Display prefixes of a job's run kinds (other kinds show as they are)."""


_SCALARS = (int, float, bool, type(None))


def _plain(value: Any) -> bool:
    """Whether ``value`` is a small dict of scalars and short strings, whose plain ``repr`` is
    bounded (the common entry: about 10x cheaper than :mod:`reprlib`)."""
    if type(value) is not dict or len(value) > 8:
        return False
    for k, v in value.items():
        t = type(v)
        if type(k) is not str or len(k) > 60:
            return False
        if t is str:
            if len(v) > 60:
                return False
        elif t not in _SCALARS:
            return False
    return True


def short_repr(value: Any, limit: int = MAX_REPR) -> str:
    """``repr(value)`` bounded by :mod:`reprlib` (plain ``repr`` for a small dict of scalars)
    and cut to ``limit`` characters (default :data:`MAX_REPR`)."""
    text = repr(value) if _plain(value) else _short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class PoolDisplay:
    """The display of a pool's messages. name: the UDF's name; pool_id: the pool; args: the
    decoded arguments per entry (None or too short: not known here, e.g. a worker republishing
    or a pool attached from its id)."""

    name: str
    pool_id: str
    args: Sequence[Mapping[str, Any]] | None = None

    @classmethod
    def of(
        cls, udf: Mapping[str, Any], pool_id: str, args: Sequence[Mapping[str, Any]] | None = None
    ) -> PoolDisplay:
        """The display of pool ``pool_id`` of ``udf`` (its JSON form: ``name`` or
        ``entrypoint``)."""
        return cls(str(udf.get("name") or udf.get("entrypoint") or "udf"), pool_id, args)

    @property
    def shadow(self) -> str:
        """``udf:<name>``: the name Flower shows and searches."""
        return f"udf:{self.name}"

    def options(self, positions: Sequence[int]) -> dict[str, str]:
        """``shadow``, ``argsrepr`` and ``kwargsrepr`` of the message of entries ``positions``."""
        shown = list(positions[:8])
        more = f" +{len(positions) - 8}" if len(positions) > 8 else ""
        argsrepr = f"pool={self.pool_id} entries={shown}{more}"
        known = self.args or ()
        args = [known[p] for p in positions[:3] if 0 <= p < len(known)]
        if not args:
            kwargsrepr = "{}"
        elif len(positions) == 1:
            kwargsrepr = short_repr(args[0])
        else:
            more = ", ..." if len(positions) > len(args) else ""
            kwargsrepr = "[" + ", ".join(short_repr(a, MAX_REPR // 3) for a in args) + more + "]"
        return {"shadow": self.shadow, "argsrepr": argsrepr, "kwargsrepr": kwargsrepr}


def stage_options(
    kind: str, stage: str, job_id: str, *, key: str | None = None, item: Any = None
) -> dict[str, str]:
    """``shadow`` (``ingest:<stage>``, ``map:<stage>``, ...), ``argsrepr`` (the job, the
    member's key) and ``kwargsrepr`` (the member's item, truncated; default None: none) of a
    job's task."""
    label = STEP_LABELS.get(kind, kind)
    argsrepr = f"job={job_id} stage={stage}" + (f" key={key}" if key is not None else "")
    return {
        "shadow": f"{label}:{stage}",
        "argsrepr": argsrepr,
        "kwargsrepr": "{}" if item is None else short_repr(item),
    }
