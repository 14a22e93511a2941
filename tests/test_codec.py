"""The result codec: every result type crosses the wire as a JSON-able envelope; frames never
travel as JSON."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import shapely

from fused_celery import codec
from fused_celery.errors import UdfSerializationError


def _wire(value):
    """Encode, push through real JSON text (as Celery's serializer would), decode."""
    envelope = codec.encode(value)
    text = json.dumps(envelope, allow_nan=True)
    return json.loads(text), codec.decode(json.loads(text))


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**62,
        1.5,
        "",
        "text",
        "ünïcødé",
        [],
        [1, "a", None, 2.5, True],
        {"a": [1, {"b": None}], "c": "d"},
        {},
    ],
)
def test_json_values_round_trip_as_themselves(value) -> None:
    envelope, back = _wire(value)
    assert envelope == {"j": value}
    assert back == value
    assert type(back) is type(value)


def test_tuple_travels_as_list() -> None:
    _, back = _wire((1, 2, "a"))
    assert back == [1, 2, "a"]


def test_nan_float_round_trips() -> None:
    _, back = _wire(float("nan"))
    assert np.isnan(back)


@pytest.mark.parametrize(
    ("value", "expected", "kind"),
    [
        (np.int64(5), 5, int),
        (np.int8(-3), -3, int),
        (np.float32(1.5), 1.5, float),
        (np.float64(2.25), 2.25, float),
        (np.bool_(True), True, bool),
        (np.str_("s"), "s", str),
    ],
)
def test_numpy_scalars_round_trip(value, expected, kind) -> None:
    envelope, back = _wire(value)
    assert back == expected and type(back) is kind
    assert "j" in envelope


def test_list_with_numpy_scalars() -> None:
    _, back = _wire([np.int64(1), 2, np.float64(0.5)])
    assert back == [1, 2, 0.5]


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype="int32").reshape(2, 3),
        np.linspace(0, 1, 5),
        np.array([True, False]),
        np.zeros((2, 0, 3), dtype="float32"),
        np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[ns]"),
        np.arange(12, dtype="uint16").reshape(3, 4).T,  # not C-contiguous
        np.array(5.0),  # 0-d
    ],
)
def test_numpy_arrays_round_trip(array: np.ndarray) -> None:
    envelope, back = _wire(array)
    assert "np" in envelope and "j" not in envelope
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back_flags = back.flags.writeable
    assert back_flags  # a copy the user may modify


def test_object_array_of_json_values_travels_as_list() -> None:
    _, back = _wire(np.array(["a", 1, None], dtype=object))
    assert back == ["a", 1, None]


def test_dataframe_round_trips_as_arrow_not_json() -> None:
    frame = pd.DataFrame(
        {
            "i": [1, 2, 3],
            "f": [0.5, np.nan, 2.0],
            "s": ["a", "b", None],
            "t": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
            "b": [True, False, True],
        },
        index=pd.Index([10, 20, 30], name="key"),
    )
    envelope, back = _wire(frame)
    assert set(envelope) == {"df"}
    assert "key" not in envelope["df"]  # base64 Arrow IPC, not a JSON rendering
    pa.ipc.open_stream(pa.py_buffer(codec._unb64(envelope["df"]))).read_all()
    assert isinstance(back, pd.DataFrame)
    pd.testing.assert_frame_equal(back, frame)


def test_dataframe_with_string_index_and_empty_frame() -> None:
    frame = pd.DataFrame({"v": [1.0, 2.0]}, index=pd.Index(["r0", "r1"], name="row"))
    _, back = _wire(frame)
    pd.testing.assert_frame_equal(back, frame)
    empty = pd.DataFrame({"v": pd.Series([], dtype="int64")})
    _, back = _wire(empty)
    assert list(back.columns) == ["v"] and len(back) == 0


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857", None])
def test_geodataframe_round_trip_keeps_geometry_and_crs(crs) -> None:
    gdf = gpd.GeoDataFrame(
        {"n": [1, 2, 3], "name": ["a", "b", "c"]},
        geometry=[
            shapely.Point(0, 0),
            shapely.box(0, 0, 1, 1),
            shapely.LineString([(0, 0), (2, 2)]),
        ],
        crs=crs,
        index=pd.Index([5, 6, 7], name="fid"),
    )
    envelope, back = _wire(gdf)
    assert set(envelope) == {"gdf"}
    assert isinstance(back, gpd.GeoDataFrame)
    assert back.geometry.name == "geometry"
    if crs is None:
        assert back.crs is None
    else:
        assert back.crs == crs
    assert back.index.name == "fid" and back.index.tolist() == [5, 6, 7]
    assert all(a.equals(b) for a, b in zip(back.geometry, gdf.geometry))
    pd.testing.assert_frame_equal(back, gdf)


def test_geodataframe_with_other_geometry_column_name() -> None:
    gdf = gpd.GeoDataFrame(
        {"v": [1]}, geometry=gpd.GeoSeries([shapely.Point(1, 2)], name="geom"), crs="EPSG:4326"
    )
    gdf = gdf.rename_geometry("shape")
    _, back = _wire(gdf)
    assert isinstance(back, gpd.GeoDataFrame)
    assert back.geometry.name == "shape"
    assert back.crs == "EPSG:4326"
    assert back.geometry.iloc[0].equals(shapely.Point(1, 2))


def test_arrow_table_round_trips() -> None:
    table = pa.table({"a": [1, 2], "b": ["x", None], "c": [[1], [2, 3]]})
    envelope, back = _wire(table)
    assert set(envelope) == {"arrow"}
    assert isinstance(back, pa.Table)
    assert back.equals(table)


@pytest.mark.parametrize("data", [b"", b"\x00\x01\xff", bytearray(b"abc"), memoryview(b"mv")])
def test_bytes_round_trip(data) -> None:
    envelope, back = _wire(data)
    assert set(envelope) == {"bytes"}
    assert back == bytes(data) and type(back) is bytes


@pytest.mark.parametrize(
    "geom",
    [
        shapely.Point(1, 2),
        shapely.box(0, 0, 1, 1),
        shapely.MultiPoint([(0, 0), (1, 1)]),
        shapely.Point(1, 2, 3),
    ],
)
def test_shapely_geometry_round_trips(geom) -> None:
    envelope, back = _wire(geom)
    assert set(envelope) == {"geom"}
    assert isinstance(back, shapely.Geometry)
    assert back.equals(geom) and back.has_z == geom.has_z


class _Custom:
    pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "builtins.set"),
        (object(), "builtins.object"),
        (_Custom(), "_Custom"),
        (lambda: 1, "function"),
        (frozenset(), "builtins.frozenset"),
        (complex(1, 2), "builtins.complex"),
    ],
)
def test_unencodable_result_is_a_serialization_error_naming_the_type(value, type_name) -> None:
    with pytest.raises(UdfSerializationError) as info:
        codec.encode(value)
    assert type_name in str(info.value)
    assert info.value.child_exception_class == "TypeError"


def test_object_array_that_is_not_json_is_an_error() -> None:
    with pytest.raises(UdfSerializationError, match="numpy array"):
        codec.encode(np.array([object()], dtype=object))


def test_encode_kwargs_names_the_argument() -> None:
    encoded = codec.encode_kwargs({"a": 1, "b": np.arange(3)})
    assert codec.decode_kwargs(json.loads(json.dumps(encoded)))["a"] == 1
    np.testing.assert_array_equal(codec.decode_kwargs(encoded)["b"], np.arange(3))
    with pytest.raises(UdfSerializationError, match=r"argument 'bad'.*builtins.set"):
        codec.encode_kwargs({"ok": 1, "bad": {1}})


def test_decode_rejects_unknown_envelopes() -> None:
    with pytest.raises(ValueError, match="envelope"):
        codec.decode({"zzz": 1})


def test_envelope_size() -> None:
    assert codec.envelope_size(codec.encode(b"x" * 300)) == len(codec._b64(b"x" * 300))
    assert codec.envelope_size(codec.encode([1, 2])) == len("[1, 2]")
