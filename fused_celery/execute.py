"""Running one UDF call: a fresh namespace, captured output, timing and error capture.

This module is what workers import (local process pool and Celery alike). It knows nothing about
pools, engines or Celery: :func:`run_call` takes a UDF's JSON form and keyword arguments and returns
an :class:`Outcome` dict that can travel over any wire.
"""

from __future__ import annotations

import ast
import hashlib
import io
import linecache
import sys
import threading
import time
import traceback
from collections.abc import Container
from functools import lru_cache
from typing import Any, TypedDict

from fused_celery import codec
from fused_celery.coerce import coerce_arguments
from fused_celery.errors import UdfRuntimeError, UdfSerializationError


class Outcome(TypedDict, total=False):
    """The result of one entry attempt.

    ok: True on success. cancelled: True when the entry was skipped (cancelled). value: codec
    envelope of the result (when ok). error: dict of :meth:`UdfRuntimeError.to_dict` (when not
    ok). logs: captured stdout/stderr.
    started / finished: epoch seconds of the run (not queue time).
    """

    ok: bool
    cancelled: bool
    value: dict[str, Any] | None
    error: dict[str, Any] | None
    logs: str
    started: float
    finished: float


# --------------------------------------------------------------------------- output capture


class _ThreadLocalStream(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: writes go to the calling thread's capture
    buffer when one is active, else to the original stream."""

    def __init__(self, original: Any, local: threading.local) -> None:
        self._original = original
        self._local = local

    def write(self, text: str) -> int:
        buf = getattr(self._local, "buffer", None)
        if buf is None:
            return self._original.write(text)
        return buf.write(text)

    def flush(self) -> None:
        if getattr(self._local, "buffer", None) is None:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8")

    def fileno(self) -> int:
        return self._original.fileno()


_capture = threading.local()
_install_lock = threading.Lock()


def _install_capture() -> None:
    if isinstance(sys.stdout, _ThreadLocalStream) and isinstance(sys.stderr, _ThreadLocalStream):
        return  # the usual case: installed by an earlier call, no lock needed
    with _install_lock:
        if not isinstance(sys.stdout, _ThreadLocalStream):
            sys.stdout = _ThreadLocalStream(sys.stdout, _capture)
        if not isinstance(sys.stderr, _ThreadLocalStream):
            sys.stderr = _ThreadLocalStream(sys.stderr, _capture)


def _capped(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit // 2
    dropped = len(text) - limit
    return f"{text[:head]}\n... [{dropped} characters truncated] ...\n{text[-(limit - head) :]}"


# --------------------------------------------------------------------------- compilation


@lru_cache(maxsize=256)
def udf_filename(name: str, code: str) -> str:
    """The pseudo file name a UDF's code is compiled under (stable per code)."""
    digest = hashlib.sha1(code.encode()).hexdigest()[:10]
    return f"<udf {name} {digest}>"


@lru_cache(maxsize=256)
def compile_udf(code: str, entrypoint: str, name: str) -> Any:
    """Compile a UDF's code once, with the decorators of its entrypoint removed.

    Returns a code object that, executed in a fresh dict, defines ``entrypoint``.
    """
    tree = ast.parse(code)
    found = False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entrypoint:
            node.decorator_list = []
            found = True
    if not found:
        raise UdfRuntimeError(
            f"the UDF code does not define a function named {entrypoint!r}",
            child_exception_class="NameError",
        )
    filename = udf_filename(name, code)
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    return compile(tree, filename, "exec")


def load_function(code: str, entrypoint: str, name: str) -> Any:
    """A fresh function object from the UDF's code (new globals on every call)."""
    namespace: dict[str, Any] = {"__name__": f"fused_udf_{name}", "__builtins__": __builtins__}
    exec(compile_udf(code, entrypoint, name), namespace)
    return namespace[entrypoint]


# --------------------------------------------------------------------------- errors


def _error_from_exception(exc: BaseException, filename: str) -> UdfRuntimeError:
    if isinstance(exc, UdfRuntimeError):
        return exc
    frames = traceback.extract_tb(exc.__traceback__)
    user = [i for i, f in enumerate(frames) if f.filename == filename]
    lineno = frames[user[-1]].lineno if user else None
    kept = frames[user[0] :] if user else frames[-1:]
    text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(kept))
    text += "".join(traceback.format_exception_only(type(exc), exc))
    message = str(exc)
    if isinstance(exc, ImportError):
        missing = getattr(exc, "name", None) or "a module"
        message += (
            f" (the worker cannot import {missing}: install it in the workers' environment or "
            "image, or import it inside the UDF only where it exists)"
        )
    return UdfRuntimeError(
        message, child_exception_class=type(exc).__name__, lineno=lineno, traceback=text
    )


# --------------------------------------------------------------------------- running


def run_call(
    udf: dict[str, Any],
    kwargs: dict[str, Any],
    *,
    max_log_bytes: int = 64 * 1024,
    encode_result: bool = True,
) -> Outcome:
    """Run one UDF call and capture everything about it.

    udf: the UDF's JSON form (needs ``code``, ``entrypoint``, ``name``; ``parameters`` are
        defaults merged under ``kwargs``).
    kwargs: decoded keyword arguments of this call.
    max_log_bytes: cap on the captured output (default 64 KiB; truncation is marked).
    encode_result: encode the value with :mod:`codec` (default True); False keeps the raw
        object (in-process calls).
    """
    _install_capture()
    name = udf.get("name") or udf["entrypoint"]
    code = udf["code"]
    filename = udf_filename(name, code)
    buffer = io.StringIO()
    previous = getattr(_capture, "buffer", None)
    _capture.buffer = buffer
    started = time.time()
    outcome: Outcome
    try:
        fn = load_function(code, udf["entrypoint"], name)
        call_kwargs = {**(udf.get("parameters") or {}), **kwargs}
        call_kwargs = coerce_arguments(fn, call_kwargs)
        value = fn(**call_kwargs)
        finished = time.time()
        if encode_result:
            value = codec.encode(value)
        outcome = {"ok": True, "value": value, "error": None}
    except UdfSerializationError as err:
        finished = time.time()
        outcome = {"ok": False, "value": None, "error": err.to_dict()}
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything, even SystemExit
        finished = time.time()
        if isinstance(exc, KeyboardInterrupt):
            raise
        error = _error_from_exception(exc, filename).to_dict()
        outcome = {"ok": False, "value": None, "error": error}
    finally:
        _capture.buffer = previous
    outcome["logs"] = _capped(buffer.getvalue(), max_log_bytes)
    outcome["started"] = started
    outcome["finished"] = finished
    return outcome


def run_batch(
    udf: dict[str, Any],
    batch: list[tuple[int, dict[str, Any]]],
    *,
    threads: int = 1,
    max_log_bytes: int = 64 * 1024,
    on_done: Any = None,
    skip: Container[int] = (),
) -> list[tuple[int, Outcome]]:
    """Run several entries of one UDF, ``threads`` at a time (``n_processes_per_worker``).

    batch: ``(position, encoded kwargs)`` pairs. on_done: optional callback
    ``(position, outcome)`` called as each entry finishes. skip: positions cancelled meanwhile;
    checked just before each entry starts, they get ``{"ok": False, "cancelled": True}``.
    Returns outcomes in batch order.
    """

    def one(item: tuple[int, dict[str, Any]]) -> tuple[int, Outcome]:
        pos, encoded = item
        if pos in skip:
            out: Outcome = {"ok": False, "cancelled": True}
            if on_done is not None:
                on_done(pos, out)
            return pos, out
        try:
            kwargs = codec.decode_kwargs(encoded)
        except Exception as exc:  # noqa: BLE001
            now = time.time()
            err = UdfSerializationError(
                f"arguments could not be decoded: {exc}", child_exception_class=type(exc).__name__
            )
            out = {
                "ok": False,
                "value": None,
                "error": err.to_dict(),
                "logs": "",
                "started": now,
                "finished": now,
            }
        else:
            out = run_call(udf, kwargs, max_log_bytes=max_log_bytes)
        if on_done is not None:
            on_done(pos, out)
        return pos, out

    if threads <= 1 or len(batch) <= 1:
        return [one(item) for item in batch]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(batch))) as ex:
        return list(ex.map(one, batch))
