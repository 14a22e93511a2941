"""A local-engine worker process: ``python -m fused_celery.engines.local_worker RFD WFD``.

Reads messages from file descriptor RFD and answers on WFD (``multiprocessing.connection``
framing). Messages in: ``("udf", udf_json, max_log_bytes, cache_dir)`` once, then
``("run", [(position, encoded_kwargs, cache_key_or_None), ...], threads)``;
``("cancel", [position, ...])`` (queued entries to skip, reported as cancelled); ``None`` stops.
Messages out: ``("ready", None)`` once its imports are done (the parent's time limits count from
there); ``("done", [(position, outcome), ...])``: finished entries, flushed at the end of
each batch and at least every 20 ms, so tiny entries cost one message per batch.

A reader thread drains the input continuously, so neither side can block the other on a full
pipe; the process exits when its parent closes the pipe (or dies).
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any


def _reader(conn: Connection, inbox: queue.Queue[Any], cancelled: set[int]) -> None:
    """Move messages to ``inbox``; cancellations take effect at once (even mid-batch)."""
    try:
        while True:
            msg = conn.recv()
            if msg is not None and msg[0] == "cancel":
                cancelled.update(msg[1])
            else:
                inbox.put(msg)
    except (EOFError, OSError):
        inbox.put(None)


class _Sink:
    """Caches and reports the finished entries of one batch: at its end, and otherwise at most
    20 ms after an entry finished (a timer flushes even when no other entry finishes)."""

    def __init__(self, conn: Connection, lock: threading.Lock, cache: Any, keys: dict) -> None:
        self.conn, self.lock, self.cache, self.keys = conn, lock, cache, keys
        self.left = len(keys)
        self.pending: list[tuple[int, Any]] = []
        self.flushed = time.monotonic()
        self.timer: threading.Timer | None = None

    def done(self, pos: int, outcome: dict[str, Any]) -> None:
        key = self.keys.get(pos)
        if key and self.cache is not None:
            self.cache.put(key, outcome)
        with self.lock:
            self.pending.append((pos, outcome))
            self.left -= 1
            if self.left == 0 or time.monotonic() - self.flushed > 0.02:
                self._flush()
            elif self.timer is None:
                self.timer = threading.Timer(0.02, self._flush_later)
                self.timer.daemon = True
                self.timer.start()

    def _flush(self) -> None:
        """Send the pending outcomes (caller holds the lock)."""
        if self.pending:
            self.conn.send(("done", self.pending))
            self.pending = []
        self.flushed = time.monotonic()

    def _flush_later(self) -> None:
        with self.lock:
            self.timer = None
            self._flush()


def main(rfd: int, wfd: int) -> None:
    """Serve run requests until told to stop or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    from fused_celery.execute import run_batch
    from fused_celery.result_cache import DiskCache

    rconn = Connection(rfd, writable=False)
    wconn = Connection(wfd, readable=False)
    inbox: queue.Queue[Any] = queue.Queue()
    cancelled: set[int] = set()
    threading.Thread(target=_reader, args=(rconn, inbox, cancelled), daemon=True).start()
    wconn.send(("ready", None))  # imports done: the parent starts its entries' clocks
    send_lock = threading.Lock()
    udf: dict[str, Any] = {}
    max_log = 64 * 1024
    cache: DiskCache | None = None

    while True:
        msg = inbox.get()
        if msg is None:
            break
        if msg[0] == "udf":
            _, udf, max_log, cache_dir = msg
            cache = DiskCache(cache_dir) if cache_dir else None
            continue
        _, batch, threads = msg
        sink = _Sink(wconn, send_lock, cache, {pos: key for pos, _, key in batch})
        run_batch(
            udf,
            [(pos, enc) for pos, enc, _ in batch],
            threads=threads,
            max_log_bytes=max_log,
            on_done=sink.done,
            skip=cancelled,
        )
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]), int(sys.argv[2]))
    except (BrokenPipeError, EOFError):  # the parent went away: nothing left to report to
        os._exit(0)
