"""The allocators of worker processes: one heap, and freed memory kept for the next task.

A pool process runs task after task on arrays of about the same size (an ingest's slices and
files, a map's or join's chunks). By default glibc's ``malloc`` gives each large block (over its
mmap threshold: 128 KiB at first, at most 32 MiB) back to the kernel when it is freed and trims
the heap's free top, and mimalloc, pyarrow's allocator, purges freed pages after 10 ms. The next
task then touches fresh pages, which the kernel zero-fills on first touch (2 MiB at a time
where transparent huge pages were asked for): in a 5M-point ingest on 2 CPUs the workers took
85,000 page faults and spent about a third of their CPU in the kernel. With
:func:`allocator_env` they keep that memory (30,000 faults; the ingest 2.64 → 2.45 s, medians
of 4 on fresh clusters), within bounds: blocks of :data:`MMAP_THRESHOLD` or
more still go back to the kernel, a free heap top over :data:`TRIM_THRESHOLD` is still trimmed,
and mimalloc still purges what stayed unused for :data:`MIMALLOC_PURGE_DELAY_MS`.

Arrow allocates through glibc's ``malloc`` too (``ARROW_DEFAULT_MEMORY_POOL=system``), from at
most :data:`ARENA_MAX` arenas, so that the memory numpy or any thread frees serves the next
buffers of all of them. With mimalloc beside glibc, each kept its own free memory: a pool
process grew by ~340 MiB over an ingest's first 5M points (~130 MiB in its first 1M-point
prepare, which reads 25 MiB), each fresh page costing kernel time on first touch. On fresh
2-worker clusters (rounds alternating, 2026-12-07) the first 5M-point ingest took 2.33-2.61 s
(median 2.42, 4 rounds) with Arrow on glibc against 2.89-3.07 s (3.02) with mimalloc; later
ingests on the same clusters were alike. Glibc's default of 8 arenas per CPU let a pool
process's peak grow ingest after ingest (700 → 890 MiB over three); with 2 it stayed at
560-670 MiB (mimalloc: 530-610 MiB).

Both allocators read these settings from the environment when the process starts (pyarrow is
loaded while a worker imports its tasks, before any Celery signal), so the launchers pass them
in: ``fused-celery worker`` and :class:`~fused_celery.cluster.local_cluster.LocalCluster`.
"""

from __future__ import annotations

from collections.abc import Mapping

from fused_celery.options import options

MMAP_THRESHOLD = 256 << 20
"""glibc: blocks of at least this many bytes are mapped apart (and unmapped when freed)."""
TRIM_THRESHOLD = 1 << 30
"""glibc: the heap's free top is given back to the kernel once it exceeds this many bytes."""
TOP_PAD = 64 << 20
"""glibc: bytes the heap grows by beyond each request (fewer ``brk`` calls)."""
ARENA_MAX = 2
"""glibc: heaps a process allocates from (default 8 per CPU): Arrow's threads share two, so the
memory one thread frees serves the others (a pool process runs one task at a time)."""
MIMALLOC_PURGE_DELAY_MS = 10_000
"""mimalloc: freed pages are given back to the kernel after this many milliseconds unused (for
workers started with mimalloc as Arrow's pool all the same)."""
ARROW_POOL = "system"
"""Arrow's memory pool in workers: glibc's ``malloc``, numpy's heap."""


def allocator_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` (a worker's environment) with the allocator settings above added: glibc's
    through ``GLIBC_TUNABLES``, Arrow's pool through ``ARROW_DEFAULT_MEMORY_POOL`` and
    mimalloc's through ``MIMALLOC_PURGE_DELAY``, each only when ``env`` does not set that
    variable already. ``env`` as it is when ``options.worker_retain_memory`` is False."""
    out = dict(env)
    if not options.worker_retain_memory:
        return out
    tunables = {
        "glibc.malloc.mmap_threshold": MMAP_THRESHOLD,
        "glibc.malloc.trim_threshold": TRIM_THRESHOLD,
        "glibc.malloc.top_pad": TOP_PAD,
        "glibc.malloc.arena_max": ARENA_MAX,
    }
    out.setdefault("GLIBC_TUNABLES", ":".join(f"{k}={v}" for k, v in tunables.items()))
    out.setdefault("ARROW_DEFAULT_MEMORY_POOL", ARROW_POOL)
    out.setdefault("MIMALLOC_PURGE_DELAY", str(MIMALLOC_PURGE_DELAY_MS))
    return out
