"""The order a join's tasks are handed out in, so that each worker process sweeps its own part
of the area. Pure Python.

A join's tasks (left files or chunk batches, kept in the table's spatial order: an ingest
numbers its files along its kd-tree) go to one Celery queue, and its consumers take them in
turn. In spatial order, two consumers take neighbours (0, 1, then 2, 3, ...): both sweep the
whole area and both read nearly every right chunk into their per-process cache. Handed out in
the van der Corput order of their positions (:func:`spread_order`), ``k`` consumers taking
them in turn each get a contiguous share when ``k`` is a power of two (with 2: one takes the
first half, the other the second), so each reads only the right chunks of its share; with
other ``k``, or tasks of unequal length, the shares stay mostly contiguous. The number of
consumers is not needed. Hand-written: a dozen lines no library offers as such.
"""

from __future__ import annotations

__all__ = ["spread_order"]


def spread_order(n: int) -> list[int]:
    """The positions ``0 .. n-1`` in hand-out order: the bit-reversed order of ``0 .. N-1``
    (``N`` the power of two ≥ ``n``), each scaled to ``n`` positions, first occurrences kept.
    A permutation of ``range(n)``; for ``n`` ≤ 2, ``range(n)`` itself."""
    if n <= 2:
        return list(range(n))
    bits = (n - 1).bit_length()
    size = 1 << bits
    order: list[int] = []
    seen = [False] * n
    for j in range(size):
        reversed_j = int(format(j, f"0{bits}b")[::-1], 2)
        i = reversed_j * n // size
        if not seen[i]:
            seen[i] = True
            order.append(i)
    return order
