"""Per-job cost: each entry's run time divided by its worker's slots, summed by instance type,
times a price table (USD per instance-hour).

Pure: the pool (:meth:`~fused_celery.pool.JobPool.cost`) and the job response
(``RunResponse.get_results()["cost"]``) gather the rows; the price table is
``options.autoscale_instance_prices`` (default
:data:`~fused_celery.options.DEFAULT_INSTANCE_PRICES`). An entry on a worker with ``slots``
slots (Celery processes times the message's threads) uses ``1 / slots`` of the instance while it
runs. Time an instance sits idle is not in a job's cost: the autoscaler's log reports it
(``idle_instance_seconds``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The instance type of work that ran on no known instance type (the local engine, a worker of
#: the default queue).
UNKNOWN = "unknown"


@dataclass(frozen=True)
class CostRow:
    """One entry's run: ``instance_type`` (None: unknown), ``seconds`` of run time, ``slots``
    of its worker (>= 1)."""

    instance_type: str | None
    seconds: float
    slots: int = 1


def instance_seconds(rows: Iterable[CostRow]) -> dict[str, float]:
    """Instance-seconds by instance type: ``sum(seconds / slots)``."""
    out: dict[str, float] = {}
    for row in rows:
        key = row.instance_type or UNKNOWN
        out[key] = out.get(key, 0.0) + max(0.0, row.seconds) / max(1, row.slots)
    return out


def cost_report(by_type: Mapping[str, float], prices: Mapping[str, float]) -> dict[str, Any]:
    """``{"total_usd", "currency", "by_instance_type": {type: {"instance_seconds", "usd"}},
    "unpriced": [types without a price]}`` from instance-seconds by type and USD per hour."""
    table: dict[str, dict[str, float]] = {}
    unpriced = []
    total = 0.0
    for instance_type, seconds in sorted(by_type.items()):
        price = prices.get(instance_type)
        usd = seconds / 3600.0 * price if price is not None else 0.0
        if price is None:
            unpriced.append(instance_type)
        table[instance_type] = {"instance_seconds": seconds, "usd": usd}
        total += usd
    return {
        "total_usd": total,
        "currency": "USD",
        "by_instance_type": table,
        "unpriced": unpriced,
    }
