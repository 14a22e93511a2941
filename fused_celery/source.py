"""Capturing a UDF's source so that it runs anywhere as text.

The reference SDK ships only the function body, so a UDF that uses a module-level import or helper
fails with ``NameError`` on a worker. :func:`capture_source` ships, ahead of the function, the
imports, literal constants, other UDFs and same-module helper functions/classes the function
refers to, found from the function's own globals (so it works in scripts, modules and Jupyter
alike).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import textwrap
import types
import warnings
from collections.abc import Callable
from typing import Any

from fused_celery.errors import UdfDefinitionError

_MAX_CONSTANT_REPR = 10_000


def _referenced_names(tree: ast.AST, skip_decorators_of: str | None = None) -> list[str]:
    """Names loaded anywhere in ``tree`` (in order of first use), ignoring the decorators of the
    function named ``skip_decorators_of``."""
    seen: dict[str, None] = {}
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name == skip_decorators_of
        ):
            for deco in node.decorator_list:
                skipped.update(id(n) for n in ast.walk(deco))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in skipped:
            seen.setdefault(node.id, None)
    return list(seen)


def _is_literal(value: Any) -> bool:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        return False
    if len(text) > _MAX_CONSTANT_REPR:
        return False
    try:
        return ast.literal_eval(text) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


def check_syntax(code: str, what: str = "the UDF code") -> ast.Module:
    """``code`` parsed, or :class:`UdfDefinitionError` naming the line of its syntax error (with
    the line's text) instead of a raw ``SyntaxError``. what: how the message names the code."""
    try:
        return ast.parse(code)
    except SyntaxError as exc:
        line = exc.lineno
        text = (exc.text or "").rstrip("\n")
        if not text and line and 0 < line <= len(code.splitlines()):
            text = code.splitlines()[line - 1]
        shown = f":\n    {text.strip()}" if text.strip() else ""
        raise UdfDefinitionError(
            f"{what} has a syntax error at line {line}: {exc.msg}{shown}\n"
            "Fix the code (it must be valid Python for this interpreter) and define the UDF again",
            lineno=line,
        ) from None


def _read_source(obj: Any, what: str) -> str:
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        raise UdfDefinitionError(
            f"the source of {what} cannot be read (was it typed into a plain Python REPL?). "
            "Define it in a .py file or a Jupyter/IPython cell, or build the UDF from text with "
            "fused_celery.udf_from_code(code)"
        ) from None


class _Capture:
    """Collects header lines (imports, constants, helper sources) for one UDF."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.module = fn.__module__
        self.imports: dict[str, None] = {}
        self.constants: dict[str, str] = {}
        self.helpers: dict[str, str] = {}
        self.visiting: set[str] = set()
        self.warnings: list[str] = []

    def names(self, names: list[str], globals_: dict[str, Any], locals_: set[str]) -> None:
        for name in names:
            if name in locals_ or name in self.helpers or name in self.constants:
                continue
            if name not in globals_:
                continue  # builtins, locals, or undefined (a NameError the user will see)
            self.one(name, globals_[name])

    def one(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType):
            target = value.__name__
            if target == "fused_celery" or target.startswith("fused_celery."):
                target = "fused_celery"
            line = f"import {target}" if target == name else f"import {target} as {name}"
            if "." in target and target.split(".")[0] == name:
                line = f"import {target}"
            self.imports[line] = None
            return
        if _is_literal(value):
            self.constants[name] = f"{name} = {value!r}"
            return
        if type(value).__name__ == "Udf" and type(value).__module__ == "fused_celery.udf":
            # another UDF (e.g. the target of a fused.submit fan-out): shipped as its JSON form
            self.constants[name] = (
                f"{name} = __import__('fused_celery').Udf.model_validate_json("
                f"{value.model_dump_json()!r})"
            )
            return
        module = getattr(value, "__module__", None)
        qualname = getattr(value, "__qualname__", None)
        if isinstance(value, (types.FunctionType, type)) and module == self.module:
            if "<lambda>" in (qualname or "") or "<locals>" in (qualname or ""):
                self.warnings.append(f"{name} (a lambda or nested definition)")
                return
            self.helper(name, value)
            return
        if module and qualname and "<" not in qualname and module != "__main__":
            head = qualname.split(".")[0]
            line = f"from {module} import {head}" + ("" if head == name else f" as {name}")
            if head == qualname:
                self.imports[line] = None
                return
        kind = type(value).__name__
        self.warnings.append(f"{name} (a {kind})")

    def helper(self, name: str, obj: Any) -> None:
        if name in self.visiting:
            return
        self.visiting.add(name)
        try:
            source = _read_source(obj, f"helper {name!r}")
        except UdfDefinitionError:
            self.warnings.append(f"{name} (source not readable)")
            return
        tree = ast.parse(source)
        # a decorated helper (e.g. @fused.cache) resolves names in its own module, not in the
        # decorator's: look through the wrapper
        target = inspect.unwrap(obj) if callable(obj) else obj
        globals_ = getattr(target, "__globals__", None) or vars(
            inspect.getmodule(target) or builtins
        )
        self.names(_referenced_names(tree), globals_, {name})
        self.helpers[name] = source.rstrip() + "\n"

    def header(self) -> str:
        parts = []
        if self.imports:
            parts.append("\n".join(self.imports))
        if self.constants:
            parts.append("\n".join(self.constants.values()))
        parts.extend(self.helpers.values())
        return "\n\n".join(parts)


def check_function(fn: Any) -> None:
    """Raise :class:`UdfDefinitionError` unless ``fn`` is a plain ``def`` function usable as UDF."""
    if isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        raise UdfDefinitionError(
            f"{fn!r} is a builtin; a UDF must be a Python function defined with def"
        )
    if not isinstance(fn, types.FunctionType):
        raise UdfDefinitionError(
            f"a UDF must be a function defined with def, got {type(fn).__name__}"
        )
    if fn.__name__ == "<lambda>":
        raise UdfDefinitionError(
            "a lambda cannot be a UDF (its source cannot be shipped); define it with def"
        )
    for param in inspect.signature(fn).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            raise UdfDefinitionError(
                f"UDF {fn.__name__} takes *{param.name}; UDF arguments are passed by name, so "
                "use explicit parameters (or **kwargs)"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise UdfDefinitionError(
                f"UDF {fn.__name__} has positional-only parameter {param.name!r}; remove the '/'"
            )


def capture_source(fn: Callable[..., Any], stacklevel: int = 3) -> str:
    """The UDF's shippable code: captured imports, constants and helpers, then its own source
    (dedented, decorator line included).

    Raises :class:`UdfDefinitionError` when the source cannot be read. Warns (once per UDF) about
    globals that cannot be shipped, naming them (``stacklevel``: the warning's frame, counted
    from this function).
    """
    check_function(fn)
    source = _read_source(fn, f"UDF {fn.__name__!r}")
    tree = ast.parse(source)
    capture = _Capture(fn)
    closure = {}
    if fn.__closure__:
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__):
            closure[var] = cell.cell_contents
    capture.names(_referenced_names(tree, fn.__name__), {**fn.__globals__, **closure}, set())
    if capture.warnings:
        warnings.warn(
            f"UDF {fn.__name__}: these globals cannot be shipped with it and will be missing on "
            f"workers: {', '.join(capture.warnings)}. Pass them as parameters or import them "
            "inside the function.",
            stacklevel=stacklevel,
        )
    header = capture.header()
    future = "from __future__ import annotations\n\n" if _has_future_annotations(fn) else ""
    return f"{future}{header}\n\n\n{source}" if header else f"{future}{source}"


def _has_future_annotations(fn: Callable[..., Any]) -> bool:
    import __future__

    return bool(fn.__code__.co_flags & __future__.annotations.compiler_flag)


def signature_from_code(code: str, entrypoint: str) -> inspect.Signature:
    """The entrypoint's signature read from ``code`` without running it (no imports needed).

    Defaults are placeholders: only which parameters have one is known. Raises
    :class:`UdfDefinitionError` when ``code`` does not define ``entrypoint``.
    """
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entrypoint:
            break
    else:
        raise UdfDefinitionError(f"the UDF code defines no function named {entrypoint!r}")
    a = node.args
    P = inspect.Parameter
    positional = [*a.posonlyargs, *a.args]
    first_default = len(positional) - len(a.defaults)
    params = [
        P(arg.arg, P.POSITIONAL_OR_KEYWORD, default=... if i >= first_default else P.empty)
        for i, arg in enumerate(positional)
    ]
    if a.vararg is not None:
        params.append(P(a.vararg.arg, P.VAR_POSITIONAL))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        params.append(P(arg.arg, P.KEYWORD_ONLY, default=P.empty if default is None else ...))
    if a.kwarg is not None:
        params.append(P(a.kwarg.arg, P.VAR_KEYWORD))
    return inspect.Signature(params)
