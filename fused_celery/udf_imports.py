"""``validate_imports``: which modules a UDF's code imports that this environment cannot find.

The code is parsed (:mod:`ast`), never run: every ``import a.b`` and ``from a.b import c`` in it
(at any depth: inside the function too) names module ``a.b``, looked up with
:func:`importlib.util.find_spec` (which imports the parent packages, not the module).
Relative imports and ``__future__`` are skipped. Hand-written: the standard library has no
"does this import resolve" check and the ~20 lines do not justify a dependency.
"""

from __future__ import annotations

import ast
import importlib.util

__all__ = ["imported_modules", "unresolved_imports"]


def imported_modules(code: str) -> list[str]:
    """The absolute module names ``code`` imports, in order of appearance, without repeats."""
    found: list[str] = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name != "__future__" and name not in found:
                found.append(name)
    return found


def _resolves(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package, or a broken __spec__
        return False


def unresolved_imports(code: str) -> list[str]:
    """The modules of :func:`imported_modules` that cannot be found here."""
    return [name for name in imported_modules(code) if not _resolves(name)]
