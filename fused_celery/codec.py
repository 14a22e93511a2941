"""Values on the wire: results and arguments as JSON-able envelopes.

``encode(value)`` returns a JSON-able object that Celery's JSON serializer (and a plain pipe) can
carry; ``decode(envelope)`` gives the value back. Plain JSON values (None, bool, int, float, str,
lists and dicts of them) travel as themselves inside ``{"j": value}``; everything else is tagged:

==========  ============================================================
``np``      numpy array: dtype, shape and base64 raw bytes
``df``      ``pd.DataFrame`` as base64 Arrow IPC (index kept)
``gdf``     ``gpd.GeoDataFrame`` as base64 Arrow IPC, geometry as WKB, CRS kept
``arrow``   ``pa.Table`` as base64 Arrow IPC
``bytes``   base64 bytes
``geom``    a shapely geometry as base64 WKB
==========  ============================================================

Frames never travel as JSON. Anything else raises :class:`UdfSerializationError` naming the type.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from fused_celery.errors import UdfSerializationError

_JSON_SCALARS = (str, int, float, bool, type(None))


def _is_plain_json(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _JSON_SCALARS):
        return True
    if depth > 50:
        return False
    if isinstance(value, (list, tuple)):
        return all(_is_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_json(v, depth + 1) for k, v in value.items())
    return False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def _ipc_bytes(table: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _ipc_table(data: bytes) -> Any:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _loaded(module: str) -> Any:
    """The module if it was already imported (an object of its type cannot exist otherwise)."""
    return sys.modules.get(module)


#: what -> (how the error names the value, the verb of its fix)
_WORDING = {"result": ("a result", "return"), "argument": ("a value", "pass")}


def encode(value: Any, *, what: str = "result") -> dict[str, Any]:
    """Encode ``value`` into a JSON-able envelope.

    what: ``"result"`` (default) or ``"argument"``: how the error names the value and its fix.
    Raises :class:`UdfSerializationError` naming the type when the value cannot travel.
    """
    if isinstance(value, _JSON_SCALARS):
        return {"j": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": _b64(bytes(value))}
    if isinstance(value, (list, tuple, dict)) and _is_plain_json(value):
        return {"j": value}
    np = _loaded("numpy")
    if np is not None:
        if isinstance(value, np.generic):
            return {"j": value.item()}
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                if _is_plain_json(value.tolist()):
                    return {"j": value.tolist()}
                raise UdfSerializationError(
                    "a numpy array of Python objects cannot be encoded; convert it to a list "
                    "or a numeric dtype",
                    child_exception_class="TypeError",
                )
            arr = np.ascontiguousarray(value)  # (makes 0-d arrays 1-d: shape is taken from value)
            return {"np": _b64(arr.tobytes()), "dtype": arr.dtype.str, "shape": list(value.shape)}
    gpd = _loaded("geopandas")
    if gpd is not None and isinstance(value, gpd.GeoDataFrame):
        import pyarrow as pa

        # to_arrow gives a geopandas ArrowTable (C stream wrapper), not a pa.Table
        table = pa.table(value.to_arrow(geometry_encoding="WKB", index=None))
        return {"gdf": _b64(_ipc_bytes(table))}
    pd = _loaded("pandas")
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            import pyarrow as pa

            return {"df": _b64(_ipc_bytes(pa.Table.from_pandas(value)))}
        if isinstance(value, pd.Series):
            return encode(value.to_frame(), what=what)
    pa = _loaded("pyarrow")
    if pa is not None and isinstance(value, pa.Table):
        return {"arrow": _b64(_ipc_bytes(value))}
    shapely = _loaded("shapely")
    if shapely is not None and isinstance(value, shapely.Geometry):
        return {"geom": _b64(shapely.to_wkb(value))}
    if isinstance(value, (list, tuple)):
        # Lists that mix plain values and numpy scalars: let json decide with a numpy fallback.
        try:
            return {"j": json.loads(json.dumps(value, default=_json_default))}
        except TypeError:
            pass
    noun, verb = _WORDING.get(what, ("a value", "use"))
    raise UdfSerializationError(
        f"{noun} of type {type(value).__module__}.{type(value).__qualname__} cannot be "
        f"encoded; {verb} None, a JSON-able value, a numpy array, bytes, a (Geo)DataFrame, "
        "a pyarrow Table or a shapely geometry",
        child_exception_class="TypeError",
    )


def _json_default(value: Any) -> Any:
    np = _loaded("numpy")
    if np is not None and isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def decode(envelope: dict[str, Any]) -> Any:
    """Decode an envelope produced by :func:`encode`."""
    if "j" in envelope:
        return envelope["j"]
    if "bytes" in envelope:
        return _unb64(envelope["bytes"])
    if "np" in envelope:
        import numpy as np

        arr = np.frombuffer(_unb64(envelope["np"]), dtype=np.dtype(envelope["dtype"]))
        return arr.reshape(envelope["shape"]).copy()
    if "gdf" in envelope:
        import geopandas as gpd

        return gpd.GeoDataFrame.from_arrow(_ipc_table(_unb64(envelope["gdf"])))
    if "df" in envelope:
        return _ipc_table(_unb64(envelope["df"])).to_pandas()
    if "arrow" in envelope:
        return _ipc_table(_unb64(envelope["arrow"]))
    if "geom" in envelope:
        import shapely

        return shapely.from_wkb(_unb64(envelope["geom"]))
    raise ValueError(f"not a fused-celery envelope: keys {sorted(envelope)}")


def encode_kwargs(kwargs: dict[str, Any], *, what: str = "argument") -> dict[str, Any]:
    """Encode each keyword argument; the error names the argument that cannot travel."""
    out = {}
    for key, value in kwargs.items():
        try:
            out[key] = encode(value, what="argument")
        except UdfSerializationError as err:
            raise UdfSerializationError(
                f"{what} {key!r} cannot be sent to a worker: {err.message}",
                child_exception_class="TypeError",
            ) from None
    return out


def decode_kwargs(encoded: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_kwargs`."""
    return {key: decode(value) for key, value in encoded.items()}


def envelope_size(envelope: dict[str, Any]) -> int:
    """Approximate size in bytes of an envelope on the wire."""
    for key in ("np", "gdf", "df", "arrow", "bytes", "geom"):
        if key in envelope:
            return len(envelope[key])
    return len(json.dumps(envelope["j"], default=str))
