"""Parameter coercion by type annotation, through pydantic.

``coerce_arguments(fn, kwargs)`` validates each argument against its parameter's annotation:
int, float, str, bool (``"0"``/``"false"`` are False), list, dict, tuple (JSON text accepted),
UUID, datetime/date, ``Optional[...]``, ``pd.DataFrame``, ``gpd.GeoDataFrame``, shapely
geometries and the Fused parameter types of :mod:`fused_celery.types` (``Bounds``, ``Bbox``,
``Tile``, ``TileGDF``, ``ViewportGDF``, ``TileXYZ``, converted as the reference SDK does; string
annotations such as ``"fused.types.Bounds"`` are understood too). Unannotated parameters receive
the value as given.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from fused_celery import types as fused_types
from fused_celery.errors import UdfArgumentError

GEOJSON_CRS = "EPSG:4326"
_LL_EPSILON = 1e-11
_EPSILON = 1e-14


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


# --------------------------------------------------------------------------- Fused parameter types


def _bounds_input(value: Any) -> Any:
    """JSON text decoded; a GeoJSON dict (FeatureCollection, Feature or geometry) as a
    GeoDataFrame; numpy arrays as lists; other values as given."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("expected bounds as JSON text; this string is not JSON") from None
    if isinstance(value, dict):
        import geopandas as gpd

        if value.get("type") == "FeatureCollection":
            return gpd.GeoDataFrame.from_features(value["features"], crs=GEOJSON_CRS)
        if value.get("type") == "Feature":
            return gpd.GeoDataFrame.from_features([value], crs=GEOJSON_CRS)
        return gpd.GeoDataFrame(geometry=[_to_geometry(value)], crs=GEOJSON_CRS)
    if hasattr(value, "tolist") and hasattr(value, "ndim") and not hasattr(value, "total_bounds"):
        return value.tolist()  # numpy arrays (a GeoSeries has total bounds of its own)
    return value


def _total_bounds(value: Any) -> list[float] | None:
    """``[minx, miny, maxx, maxy]`` of a GeoDataFrame/GeoSeries or shapely geometry, else None."""
    import shapely

    if isinstance(value, shapely.Geometry):
        return [float(v) for v in value.bounds]
    if hasattr(value, "total_bounds"):
        return [float(v) for v in value.total_bounds]
    return None


def _four(value: Any) -> list[Any]:
    if len(value) != 4:
        raise ValueError(f"Expected 4 values for bounds, got {len(value)}")
    return list(value)


def to_bounds(value: Any) -> list[Any]:
    """``fused.types.Bounds``: ``[minx, miny, maxx, maxy]`` from a list/tuple of 4 numbers, a
    GeoDataFrame (total bounds), a shapely geometry, or JSON text / GeoJSON of them."""
    value = _bounds_input(value)
    if isinstance(value, (list, tuple)):
        return _four(value)
    found = _total_bounds(value)
    if found is not None:
        return found
    raise ValueError("expected bounds: [minx, miny, maxx, maxy], a GeoDataFrame or a geometry")


def to_bbox(value: Any) -> Any:
    """``fused.types.Bbox``: a shapely box polygon from the inputs of :func:`to_bounds` (a
    shapely Polygon is kept as given)."""
    import shapely

    if isinstance(value, shapely.Polygon):
        return value
    return shapely.box(*to_bounds(value))


def _tile_type() -> Any:
    try:
        import mercantile
    except ImportError:
        return fused_types.XYZ
    return mercantile.Tile


def bounding_tile(west: float, south: float, east: float, north: float) -> Any:
    """The smallest web-mercator tile holding the bounds (``mercantile.bounding_tile``; a port
    of its algorithm when mercantile is not installed)."""
    try:
        import mercantile
    except ImportError:
        pass
    else:
        return mercantile.bounding_tile(west, south, east, north)
    import math

    def tile32(lng: float, lat: float) -> tuple[int, int] | None:
        x = lng / 360.0 + 0.5
        sinlat = math.sin(math.radians(lat))
        try:
            y = 0.5 - 0.25 * math.log((1.0 + sinlat) / (1.0 - sinlat)) / math.pi
        except (ValueError, ZeroDivisionError):
            return None
        top = 2**32
        xt = 0 if x <= 0 else top - 1 if x >= 1 else int(math.floor((x + _EPSILON) * top))
        yt = 0 if y <= 0 else top - 1 if y >= 1 else int(math.floor((y + _EPSILON) * top))
        return xt, yt

    tile_cls = _tile_type()
    tmin = tile32(west, north)
    tmax = tile32(east - _LL_EPSILON, south + _LL_EPSILON)
    if tmin is None or tmax is None:
        return tile_cls(0, 0, 0)
    cell = (*tmin, *tmax)
    zoom = 28
    for z in range(28):
        mask = 1 << (32 - (z + 1))
        if (cell[0] & mask) != (cell[2] & mask) or (cell[1] & mask) != (cell[3] & mask):
            zoom = z
            break
    if zoom == 0:
        return tile_cls(0, 0, 0)
    return tile_cls(cell[0] >> (32 - zoom), cell[1] >> (32 - zoom), zoom)


def _tile_bounds(x: int, y: int, z: int) -> list[float]:
    import math

    def corner(xt: float, yt: float) -> tuple[float, float]:
        n = 2.0**z
        lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * yt / n))))
        return xt / n * 360.0 - 180.0, lat

    west, north = corner(x, y)
    east, south = corner(x + 1, y + 1)
    return [west, south, east, north]


def _is_xyz(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _to_tile_frame(value: Any, add_xyz: bool) -> Any:
    import geopandas as gpd
    import shapely

    value = _bounds_input(value)
    if _is_xyz(value):  # a tile index (x, y, z): the tile's own bounds
        x, y, z = (int(v) for v in value)
        frame = gpd.GeoDataFrame(geometry=[shapely.box(*_tile_bounds(x, y, z))], crs=GEOJSON_CRS)
        return frame.assign(x=x, y=y, z=z)[["x", "y", "z", "geometry"]] if add_xyz else frame
    if isinstance(value, (list, tuple)):
        value = gpd.GeoDataFrame(geometry=[shapely.box(*_four(value))], crs=GEOJSON_CRS)
    elif isinstance(value, shapely.Geometry):
        value = gpd.GeoDataFrame(geometry=[value], crs=GEOJSON_CRS)
    if not isinstance(value, gpd.GeoDataFrame):
        raise ValueError("expected bounds [minx, miny, maxx, maxy] or a GeoDataFrame")
    if add_xyz and not all(c in value.columns for c in ("x", "y", "z")):
        tile = bounding_tile(*value.total_bounds)
        value = value.assign(x=tile.x, y=tile.y, z=tile.z)[["x", "y", "z", "geometry"]]
    return value


def to_tile_gdf(value: Any) -> Any:
    """``fused.types.Tile`` / ``TileGDF``: a GeoDataFrame with ``x``, ``y``, ``z`` (the
    bounding tile) and ``geometry``, from bounds, a GeoDataFrame, a geometry or ``(x, y, z)``."""
    return _to_tile_frame(value, add_xyz=True)


def to_viewport_gdf(value: Any) -> Any:
    """``fused.types.ViewportGDF``: a GeoDataFrame of the bounds (no tile columns)."""
    return _to_tile_frame(value, add_xyz=False)


def to_tile_xyz(value: Any) -> Any:
    """``fused.types.TileXYZ``: an ``(x, y, z)`` tile (``mercantile.Tile`` when installed) from
    3 integers, bounds, or a GeoDataFrame (its ``x``, ``y``, ``z`` columns, else the bounding
    tile of its total bounds)."""
    value = _bounds_input(value)
    tile_cls = _tile_type()
    if _is_xyz(value):
        return tile_cls(*(int(v) for v in value))
    if isinstance(value, (list, tuple)):
        return bounding_tile(*_four(value))
    columns = getattr(value, "columns", ())
    if all(c in columns for c in ("x", "y", "z")) and len(value):
        row = value.iloc[0]
        return tile_cls(int(row["x"]), int(row["y"]), int(row["z"]))
    found = _total_bounds(value)
    if found is not None:
        return bounding_tile(*found)
    raise ValueError("expected (x, y, z), bounds [minx, miny, maxx, maxy] or a GeoDataFrame")


def _none_passes(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """None is always accepted, as in the SDK (``bounds: fused.types.Bounds = None``)."""
    return lambda value: None if value is None else convert(value)


_PARAMETER_CONVERTERS: dict[Any, Callable[[Any], Any]] = {
    fused_types.Bounds: _none_passes(to_bounds),
    fused_types.Bbox: _none_passes(to_bbox),
    fused_types.Tile: _none_passes(to_tile_gdf),
    fused_types.TileGDF: _none_passes(to_tile_gdf),
    fused_types.ViewportGDF: _none_passes(to_viewport_gdf),
    fused_types.TileXYZ: _none_passes(to_tile_xyz),
}

# Annotations left as text (``from __future__ import annotations`` where ``fused`` is not a
# global), by the names the SDK accepts.
_TEXT_ANNOTATIONS: dict[str, Any] = {}
for _name in ("Bbox", "Bounds", "Tile", "TileGDF", "TileXYZ", "ViewportGDF"):
    for _prefix in ("", "fused.types.", "fused_celery.types.", "types."):
        _TEXT_ANNOTATIONS[_prefix + _name] = getattr(fused_types, _name)


def _text_annotation(text: str) -> Any:
    """A parameter type from annotation text (``"fused.types.Bounds"``, also inside
    ``Optional[...]`` or ``... | None``); anything else counts as no annotation."""
    name = text.strip().strip("'\"")
    optional = re.fullmatch(r"(?:typing\.)?Optional\[(.+)\]", name)
    if optional:
        name = optional.group(1)
    else:
        parts = [p.strip() for p in name.split("|")]
        if len(parts) == 2 and "None" in parts:
            name = parts[0] if parts[1] == "None" else parts[1]
    return _TEXT_ANNOTATIONS.get(name.strip().strip("'\""), inspect.Parameter.empty)


def _special_converter(annotation: Any) -> Callable[[Any], Any] | None:
    try:
        converter = _PARAMETER_CONVERTERS.get(annotation)
    except TypeError:  # unhashable annotation
        converter = None
    if converter is not None:
        return converter
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
        if isinstance(annotation, str):  # unresolved text: the SDK's names, else unannotated
            annotation = _text_annotation(annotation)
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
