"""Parameter coercion by type annotation, through pydantic.

``coerce_arguments(fn, kwargs)`` validates each argument against its parameter's annotation:
int, float, str, bool (``"0"``/``"false"`` are False), list, dict, tuple (JSON text accepted),
UUID, datetime/date, ``Optional[...]``, ``pd.DataFrame``, ``gpd.GeoDataFrame`` and shapely
geometries. Unannotated parameters receive the value as given.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from fused_celery.errors import UdfArgumentError


def _json_text(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _to_dataframe(value: Any) -> Any:
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return value
    if isinstance(value, (list, dict)):
        return pd.DataFrame(value)
    if isinstance(value, str):
        return pd.read_json(__import__("io").StringIO(value))
    raise ValueError("expected a DataFrame, a list of records or a dict of columns")


def _to_geodataframe(value: Any) -> Any:
    import geopandas as gpd
    import pandas as pd

    if isinstance(value, gpd.GeoDataFrame):
        return value
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict) and value.get("type") == "FeatureCollection":
        return gpd.GeoDataFrame.from_features(value["features"], crs="EPSG:4326")
    if isinstance(value, pd.DataFrame) and "geometry" in value.columns:
        return gpd.GeoDataFrame(value, geometry="geometry")
    geom = _to_geometry(value)
    return gpd.GeoDataFrame(geometry=[geom], crs="EPSG:4326")


def _to_geometry(value: Any) -> Any:
    import shapely
    from shapely.geometry import box, shape

    if isinstance(value, shapely.Geometry):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return shape(json.loads(text))
        return shapely.from_wkt(text)
    if isinstance(value, dict):
        return shape(value)
    if isinstance(value, (list, tuple)) and len(value) == 4:
        return box(*map(float, value))
    raise ValueError("expected a shapely geometry, WKT, GeoJSON or [minx, miny, maxx, maxy]")


def _special_converter(annotation: Any) -> Callable[[Any], Any] | None:
    module = getattr(annotation, "__module__", "") or ""
    name = getattr(annotation, "__name__", "")
    if module.startswith("geopandas") and name == "GeoDataFrame":
        return _to_geodataframe
    if module.startswith("pandas") and name == "DataFrame":
        return _to_dataframe
    if module.startswith("shapely"):
        return _to_geometry
    return None


def _build_validator(annotation: Any) -> Callable[[Any], Any]:
    converter = _special_converter(annotation)
    origin = typing.get_origin(annotation)
    if converter is None and origin in (typing.Union, types.UnionType):  # Optional[X], X | None
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and _special_converter(args[0]) is not None:
            inner = _special_converter(args[0])
            return lambda v: None if v is None else inner(v)
    if converter is not None:
        return converter
    try:
        adapter = TypeAdapter(
            annotation,
            config=ConfigDict(arbitrary_types_allowed=True, coerce_numbers_to_str=True),
        )
    except Exception:  # noqa: BLE001 - annotation pydantic cannot describe: pass values through
        return lambda v: v

    def validate(value: Any) -> Any:
        # The value as given first: a str parameter keeps a string that looks like JSON.
        try:
            return adapter.validate_python(value)
        except ValidationError:
            decoded = _json_text(value)
            if decoded is value:
                raise
        return adapter.validate_python(decoded)  # JSON text for list/dict/tuple/... parameters

    return validate


# Keyed by the identity of the code object (kept alive in the value): code objects compare equal
# when only their annotations differ, so equality-keyed caching would mix up UDFs.
_PLANS: dict[int, tuple[Any, dict[str, Any], bool]] = {}


def _plan(fn: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """Validators per parameter and whether ``fn`` takes ``**kwargs``; cached per code object."""
    code = fn.__code__
    cached = _PLANS.get(id(code))
    if cached is not None and cached[0] is code:
        return cached[1], cached[2]
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable string annotations: treat as unannotated
        hints = {}
    validators: dict[str, Any] = {}
    var_kw = False
    for param in sig.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            var_kw = True
            continue
        annotation = hints.get(param.name, param.annotation)
        if annotation is inspect.Parameter.empty or annotation is Any:
            validators[param.name] = None
        else:
            validators[param.name] = (annotation, _build_validator(annotation))
    if len(_PLANS) > 512:
        _PLANS.clear()
    _PLANS[id(code)] = (code, validators, var_kw)
    return validators, var_kw


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is None and getattr(annotation, "__name__", None):
        return annotation.__name__
    return str(annotation).replace("typing.", "")  # list[int], Optional[int], ...


def coerce_arguments(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate ``kwargs`` against ``fn``'s annotations and return the coerced values.

    Raises :class:`UdfArgumentError` naming the parameter, the value and the expected type, or
    naming unknown parameters when ``fn`` takes no ``**kwargs``.
    """
    validators, var_kw = _plan(fn)
    unknown = [k for k in kwargs if k not in validators]
    if unknown and not var_kw:
        raise UdfArgumentError(
            f"unexpected argument(s) {unknown}; the UDF takes {list(validators)}",
            child_exception_class="TypeError",
        )
    out = {}
    for key, value in kwargs.items():
        spec = validators.get(key)
        if spec is None:
            out[key] = value
            continue
        annotation, validate = spec
        try:
            out[key] = validate(value)
        except (ValidationError, ValueError, TypeError) as exc:
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise UdfArgumentError(
                f"argument {key!r} = {shown} does not fit type {_type_name(annotation)}: {detail}",
                child_exception_class="TypeError",
            ) from None
    return out
