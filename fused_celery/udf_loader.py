"""``fused.load``: a UDF from a local ``.py`` file, a UDF folder (``meta.json`` + source, as the
Fused catalogue and ``udf.to_directory`` lay it out), a ``.zip`` of such a folder, or code text.

Loading from the Fused server (``"user@example.com/udf_name"``, shared tokens) or from GitHub
URLs needs the network and the Fused service; here it is a :class:`~fused_celery.errors.
UdfLoadError` saying to clone the UDF and load its folder. UDF files written for the Fused
runtime use ``fused`` without importing it: when the code uses the name ``fused`` without binding
it, ``import fused_celery as fused`` is added ahead of it (so error line numbers are those of the
UDF's ``code``, one more than in the file).
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fused_celery.errors import UdfLoadError
from fused_celery.udf import Udf

__all__ = ["load", "load_async", "load_udf_from_code"]

FUSED_IMPORT = "import fused_celery as fused\n"


def _is_udf_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Attribute):
        return (
            target.attr == "udf"
            and isinstance(target.value, ast.Name)
            and target.value.id in ("fused", "fused_celery")
        )
    return isinstance(target, ast.Name) and target.id == "udf"


def _entrypoint(tree: ast.Module, where: str) -> str:
    """The function decorated with ``@fused.udf`` (with several, the one named ``udf``)."""
    found = [
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and any(_is_udf_decorator(d) for d in node.decorator_list)
    ]
    if not found:
        raise UdfLoadError(f"{where} has no function decorated with @fused.udf; decorate one")
    if len(found) == 1:
        return found[0]
    if "udf" in found:
        return "udf"
    raise UdfLoadError(
        f"{where} has several functions decorated with @fused.udf ({', '.join(found)}); keep "
        "one, or name the one to run 'udf'"
    )


def _binds_fused(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == "fused" for a in node.names):
                return True
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "fused" for t in node.targets
        ):
            return True
    return False


def _uses_fused(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "fused" for n in ast.walk(tree))


def _with_fused_import(code: str, tree: ast.Module) -> str:
    if _uses_fused(tree) and not _binds_fused(tree):
        if code.startswith("from __future__"):  # must stay first
            head, _, rest = code.partition("\n")
            return f"{head}\n{FUSED_IMPORT}{rest}"
        return FUSED_IMPORT + code
    return code


def load_udf_from_code(
    code: str,
    name: str | None = None,
    *,
    where: str = "the code",
    entrypoint: str | None = None,
    **fields: Any,
) -> Udf:
    """A :class:`Udf` from source text holding a ``@fused.udf`` function.

    name: the UDF's name (default: the entrypoint). where: how errors name the source.
    entrypoint: the function to run (default: the ``@fused.udf`` one). fields: other
    :class:`Udf` fields (``parameters``, ``metadata``, ...).
    """
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise UdfLoadError(f"{where} is not valid Python: {exc}") from None
    entry = entrypoint or _entrypoint(tree, where)
    return Udf(name=name or entry, entrypoint=entry, code=_with_fused_import(code, tree), **fields)


def _from_meta(read: Callable[[str], bytes], where: str) -> Udf:
    """A UDF from a folder's ``meta.json`` (``job_config.steps[0].udf``) and its source file."""
    try:
        meta = json.loads(read("meta.json"))
        steps = meta["job_config"]["steps"]
    except (KeyError, TypeError, ValueError) as exc:
        raise UdfLoadError(f"{where}/meta.json is not a UDF's meta.json ({exc})") from None
    if len(steps) != 1 or steps[0].get("type") != "udf":
        raise UdfLoadError(f"{where}/meta.json does not describe one UDF step")
    spec = dict(steps[0]["udf"])
    source = spec.get("source") or spec.get("source_file")
    if not source:
        raise UdfLoadError(f"{where}/meta.json names no source file of the UDF")
    code = read(source).decode("utf-8")
    if spec.get("headers"):
        warnings.warn(
            f"{where}: the UDF's header modules "
            f"{[h.get('module_name') for h in spec['headers']]} are kept in udf.headers but not "
            "installed on workers; copy their code into the UDF or install them as packages",
            stacklevel=3,
        )
    return load_udf_from_code(
        code,
        spec.get("name") or Path(source).stem,
        where=f"{where}/{source}",
        entrypoint=spec.get("entrypoint"),
        parameters=dict(spec.get("parameters") or {}),
        metadata=dict(spec.get("metadata") or {}),
        headers=list(spec.get("headers") or []),
    )


def _from_directory(path: Path) -> Udf:
    if (path / "meta.json").is_file():

        def read(name: str) -> bytes:
            file = path / name
            if not file.is_file():
                raise UdfLoadError(f"{path}/meta.json names {name}, which is not in the folder")
            return file.read_bytes()

        return _from_meta(read, str(path))
    own = path / f"{path.name}.py"
    if own.is_file():
        return load_udf_from_code(own.read_text(), own.stem, where=str(own))
    raise UdfLoadError(f"{path} is not a UDF folder: it has neither meta.json nor {path.name}.py")


def _from_zip(path: Path) -> Udf:
    with zipfile.ZipFile(path) as archive:

        def read(name: str) -> bytes:
            try:
                return archive.read(name)
            except KeyError:
                raise UdfLoadError(f"{path} has no {name}") from None

        return _from_meta(read, str(path))


def load(
    url_or_udf: str | os.PathLike[str],
    /,
    *,
    cache_key: Any = None,
    import_globals: bool = True,
    collection_name: str | None = None,
) -> Udf:
    """``fused.load``: a :class:`Udf` from a ``.py`` file, a UDF folder, a ``.zip`` of one, or
    code text (a string with a newline), as the SDK's ``fused.load``.

    cache_key / collection_name: accepted for compatibility (they steer loading from the Fused
    server). import_globals: expose the code's top-level names as attributes of the UDF, e.g.
    ``fused.load("common/").some_helper`` (default True). Raises ``FileNotFoundError`` for a
    missing path and :class:`~fused_celery.errors.UdfLoadError` otherwise.
    """
    del cache_key, collection_name
    text = os.fspath(url_or_udf)
    if text.startswith(("https://", "http://", "github.com/")):
        raise UdfLoadError(
            f"fused.load({text!r}): loading UDFs from URLs needs the network; clone the "
            "repository (git clone ...) and load the UDF's folder or .py file by path"
        )
    if isinstance(url_or_udf, str) and "\n" in url_or_udf:
        udf = load_udf_from_code(url_or_udf)
    else:
        path = Path(text).expanduser()
        if path.suffix == ".py" and path.is_file():
            udf = load_udf_from_code(path.read_text(encoding="utf-8"), path.stem, where=str(path))
        elif path.suffix == ".zip" and path.is_file():
            udf = _from_zip(path)
        elif path.is_dir():
            udf = _from_directory(path)
        elif path.exists():
            raise UdfLoadError(f"{path} is neither a .py file, a .zip nor a UDF folder")
        elif "@" in text or (os.sep not in text and "/" not in text and not path.suffix):
            raise UdfLoadError(
                f"fused.load({text!r}): there is no file or folder of that name, and UDFs saved "
                "on the Fused server cannot be loaded here; save the UDF's code to a .py file "
                "or folder and load it by path"
            )
        else:
            raise FileNotFoundError(f"no UDF file or folder at {path}")
    udf._import_globals = bool(import_globals)
    return udf


async def load_async(
    url_or_udf: str | os.PathLike[str],
    /,
    *,
    cache_key: Any = None,
    import_globals: bool = True,
    collection_name: str | None = None,
) -> Udf:
    """:func:`load` without blocking the event loop; same arguments."""
    return await asyncio.to_thread(
        load,
        url_or_udf,
        cache_key=cache_key,
        import_globals=import_globals,
        collection_name=collection_name,
    )
