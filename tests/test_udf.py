"""The UDF model (API.md §1): decorator options, JSON form, source capture, coercion, calling."""

from __future__ import annotations

import datetime
import json
import threading
import uuid
import warnings
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import shapely
import udfs_sample as s
from pydantic import BaseModel, ValidationError

import fused_celery as fused
from fused_celery.errors import (
    UdfArgumentError,
    UdfDefinitionError,
    UdfRuntimeError,
)
from fused_celery.options import options
from fused_celery.udf import RESERVED_PARAMETERS, Udf, parse_cache_max_age

_UNSHIPPABLE_LOCK = threading.Lock()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "cache_dir", str(tmp_path / "cache"))
    monkeypatch.setattr(options.show, "enable_tqdm", False)


@pytest.fixture
def local_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cluster configured: the default engine is ``local``."""
    monkeypatch.setattr(options, "broker_url", None)
    monkeypatch.setattr(options, "default_engine", None)


# ----------------------------------------------------------------------------- decorator


def test_bare_decorator_builds_a_udf_model() -> None:
    u = s.square
    assert isinstance(u, Udf) and isinstance(u, BaseModel)
    assert u.name == "square"
    assert u.entrypoint == "square"
    assert u.parameters == {}
    assert u.cache_max_age is None
    assert u.engine is None and u.region is None and u.disk_size_gb is None
    assert u.headers == [] and u.metadata == {}
    assert list(u.signature.parameters) == ["x"]
    assert repr(u) == "<Udf square (square)>"


def test_decorator_with_every_option() -> None:
    u = s.configured_udf
    assert u.name == "configured"
    assert u.entrypoint == "configured_udf"
    assert u.cache_max_age == 7200
    assert u.engine == "local"
    assert u.region == "eu-west-1"
    assert u.disk_size_gb == 50
    assert u.parameters == {"y": 5}
    assert u.headers == [{"key": "X-Test", "value": "1"}]
    assert u.metadata == {"team": "geo"}


def test_default_parameters_are_merged_under_call_kwargs() -> None:
    assert s.configured_udf(2, engine="local") == 10  # y=5 from default_parameters
    assert s.configured_udf(2, y=3, engine="local") == 6
    assert s.configured_udf.map([1, 2], engine="local").results() == [5, 10]


def test_udf_engine_option_is_its_default_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    # the default would be the cluster, but the UDF says engine="local": runs without a cluster
    monkeypatch.setattr(options, "default_engine", "remote")
    assert s.configured_udf(3) == 15


def test_decorating_something_that_is_not_a_function() -> None:
    with pytest.raises(UdfDefinitionError, match="expects a function"):
        fused.udf(5)
    with pytest.raises(UdfDefinitionError, match="expects a function"):
        fused.udf(s.square)


# ----------------------------------------------------------------------------- JSON form


def test_udf_json_round_trip_and_the_copy_runs() -> None:
    text = s.configured_udf.model_dump_json()
    data = json.loads(text)
    assert set(data) == {
        "name",
        "entrypoint",
        "code",
        "parameters",
        "cache_max_age",
        "engine",
        "region",
        "disk_size_gb",
        "headers",
        "metadata",
    }
    assert data["cache_max_age"] == 7200
    copy = Udf.model_validate_json(text)
    assert copy == s.configured_udf
    assert copy.model_dump() == s.configured_udf.model_dump()
    assert copy(2, engine="local") == 10
    assert copy.map([3], engine="local").results() == [15]
    assert s.square.wire() == json.loads(s.square.model_dump_json())


def test_udf_model_rejects_unknown_fields_and_bad_ages() -> None:
    data = s.square.model_dump()
    with pytest.raises(ValidationError):
        Udf(**data, unknown_field=1)
    with pytest.raises(ValidationError, match="cache_max_age"):
        Udf(**{**data, "cache_max_age": "soon"})
    u = Udf(**{**data, "cache_max_age": "10m"})
    assert u.cache_max_age == 600


# ----------------------------------------------------------------------------- source capture


def test_code_is_dedented_source_with_decorator_line() -> None:
    @fused.udf
    def nested(x: int):
        return x + 1

    lines = nested.code.splitlines()
    assert "@fused.udf" in lines
    assert "def nested(x: int):" in lines
    assert "    return x + 1" in lines
    assert nested(1, engine="local") == 2


def test_module_level_imports_helpers_and_constants_are_captured() -> None:
    code = s.uses_module_level.code
    for expected in (
        "import json",
        "import math",
        "from pathlib import Path",
        "OFFSET = 3",
        "LABELS = {'a': 1, 'b': 2}",
        "def _double(value):",
        "def _describe(value):",
        "@fused.udf",
        "def uses_module_level(x: int):",
    ):
        assert expected in code.splitlines(), expected
    # helpers come before the UDF, a helper's own dependencies are captured too (_double, OFFSET)
    assert code.index("def _double") < code.index("def uses_module_level")
    # names the UDF does not use are not shipped
    assert "GATE_TIMEOUT" not in code and "def _wait_for" not in code


def _expected_module_level(x: int) -> dict:
    return {
        "described": json.dumps({"double": 2 * x + 3, "root": abs(x) ** 0.5}),
        "label": 2,
        "name": "b",
        "offset": 3,
    }


def test_captured_module_level_names_work_in_process_and_on_workers() -> None:
    # The reference SDK ships only the function: this raised NameError on workers there.
    assert s.uses_module_level(4, engine="local") == _expected_module_level(4)
    pool = s.uses_module_level.map([1, 9], engine="local", cache=False)
    assert pool.results() == [_expected_module_level(1), _expected_module_level(9)]


def test_closure_constants_are_captured() -> None:
    factor = 7

    @fused.udf
    def times_factor(x: int):
        return x * factor

    assert "factor = 7" in times_factor.code.splitlines()
    assert times_factor(3, engine="local") == 21
    assert times_factor.map([2], engine="local", cache=False).results() == [14]


def test_unshippable_global_warns_naming_it_at_the_users_line() -> None:
    with pytest.warns(UserWarning, match="_UNSHIPPABLE_LOCK") as record:

        @fused.udf
        def uses_lock(x):
            return _UNSHIPPABLE_LOCK.locked()

    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match="_UNSHIPPABLE_LOCK") as record:

        @fused.udf(name="with_options")
        def uses_lock_too(x):
            return _UNSHIPPABLE_LOCK.locked()

    assert record[0].filename == __file__


def test_lambda_is_rejected() -> None:
    with pytest.raises(UdfDefinitionError, match="lambda") as info:
        fused.udf(lambda x: x)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("builtin", [len, print, abs])
def test_builtin_is_rejected(builtin) -> None:
    with pytest.raises(UdfDefinitionError, match="builtin") as info:
        fused.udf(builtin)
    assert isinstance(info.value, TypeError)


def test_var_positional_is_rejected() -> None:
    def takes_args(x, *args):
        return x

    with pytest.raises(UdfDefinitionError, match=r"\*args"):
        fused.udf(takes_args)
    with pytest.raises(UdfDefinitionError, match=r"\*args"):
        fused.udf(name="named")(takes_args)


def test_positional_only_is_rejected() -> None:
    def positional_only(x, /, y):
        return x

    with pytest.raises(UdfDefinitionError, match="positional-only"):
        fused.udf(positional_only)


def test_unreadable_source_is_a_clear_error_naming_the_fix() -> None:
    namespace: dict = {}
    exec("def made_in_repl(x):\n    return x + 1\n", namespace)
    fn = namespace["made_in_repl"]
    with pytest.raises(UdfDefinitionError) as info:
        fused.udf(fn)
    message = str(info.value)
    assert "made_in_repl" in message
    assert "cannot be read" in message
    assert "udf_from_code" in message and ".py file" in message
    # and the fix it names works
    u = fused.udf_from_code("def made_in_repl(x):\n    return x + 1\n")
    assert u.entrypoint == "made_in_repl" and u(1, engine="local") == 2


def test_udf_from_code() -> None:
    code = (
        "import math\n\ndef helper(v):\n    return v * 2\n\n"
        "def main(x: int):\n    return helper(x) + math.floor(0.5)\n"
    )
    u = fused.udf_from_code(code)
    assert (u.entrypoint, u.name) == ("main", "main")
    assert u(4, engine="local") == 8
    h = fused.udf_from_code(code, entrypoint="helper", name="h")
    assert (h.entrypoint, h.name) == ("helper", "h")
    assert h(v=3, engine="local") == 6
    with pytest.raises(UdfDefinitionError, match="no function 'missing'"):
        fused.udf_from_code(code, entrypoint="missing")
    with pytest.raises(UdfDefinitionError, match="defines no function"):
        fused.udf_from_code("x = 1\n")


# ----------------------------------------------------------------------------- reserved names


@pytest.mark.parametrize("name", sorted(RESERVED_PARAMETERS))
def test_reserved_parameter_names_warn_at_decoration(name: str) -> None:
    expected = {"arg_list", "engine", "instance_type", "cache_max_age", "cache"}
    assert expected == RESERVED_PARAMETERS
    with pytest.warns(UserWarning, match="reserved") as record:
        _reserved_udf(name)
    reserved = [r for r in record if "reserved" in str(r.message)]
    assert len(reserved) == 1
    assert f"['{name}']" in str(reserved[0].message)
    assert reserved[0].filename == __file__  # points at the user's decorator line


def _reserved_udf(name: str) -> Udf:
    if name == "arg_list":

        @fused.udf
        def f1(x, arg_list=None):
            return x

        return f1
    if name == "engine":

        @fused.udf
        def f2(x, engine=None):
            return x

        return f2
    if name == "instance_type":

        @fused.udf
        def f3(x, instance_type=None):
            return x

        return f3
    if name == "cache_max_age":

        @fused.udf
        def f4(x, cache_max_age=None):
            return x

        return f4

    @fused.udf
    def f5(x, cache=None):
        return x

    return f5


def test_ordinary_names_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @fused.udf
        def plain(x: int, y: str = "q"):
            return x

    assert plain.name == "plain"


# ----------------------------------------------------------------------------- coercion


def _typed(annotation: str, imports: str = "") -> Udf:
    return fused.udf_from_code(f"{imports}\n\ndef typed(v: {annotation}):\n    return v\n")


UUID_TEXT = "12345678-1234-5678-1234-567812345678"
FEATURES = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"n": 1},
            "geometry": {"type": "Point", "coordinates": [1.0, 2.0]},
        },
    ],
}


@pytest.mark.parametrize(
    ("annotation", "imports", "given", "expected"),
    [
        ("int", "", "5", 5),
        ("int", "", 5.0, 5),
        ("float", "", "2.5", 2.5),
        ("float", "", 2, 2.0),
        ("str", "", "abc", "abc"),
        ("str", "", 5, "5"),
        ("str", "", "[1, 2]", "[1, 2]"),  # JSON-looking text stays text for a str parameter
        ("str", "", '{"a": 1}', '{"a": 1}'),
        ("Optional[str]", "from typing import Optional", "[x]", "[x]"),
        ("Union[str, list]", "from typing import Union", "[1]", "[1]"),
        ("bool", "", "0", False),
        ("bool", "", "false", False),
        ("bool", "", "False", False),
        ("bool", "", 0, False),
        ("bool", "", "1", True),
        ("bool", "", "true", True),
        ("list", "", "[1, 2]", [1, 2]),
        ("list", "", (1, 2), [1, 2]),
        ("list[int]", "", ["1", "2"], [1, 2]),
        ("dict", "", '{"a": 1}', {"a": 1}),
        ("dict[str, float]", "", {"a": "1.5"}, {"a": 1.5}),
        ("tuple", "", "[1, 2]", (1, 2)),
        ("tuple", "", [1, 2], (1, 2)),
        ("tuple[int, str]", "", ["1", 2], (1, "2")),
        ("uuid.UUID", "import uuid", UUID_TEXT, uuid.UUID(UUID_TEXT)),
        (
            "datetime.datetime",
            "import datetime",
            "2024-01-02T03:04:05",
            datetime.datetime(2024, 1, 2, 3, 4, 5),
        ),
        ("datetime.date", "import datetime", "2024-01-02", datetime.date(2024, 1, 2)),
        ("Optional[int]", "from typing import Optional", None, None),
        ("Optional[int]", "from typing import Optional", "7", 7),
        ("int | None", "", "7", 7),
        ("Optional[list]", "from typing import Optional", "[3]", [3]),
    ],
)
def test_coercion_by_annotation(annotation: str, imports: str, given, expected) -> None:
    value = fused.run(_typed(annotation, imports), v=given, engine="local")
    assert value == expected
    assert type(value) is type(expected)


def test_coercion_to_dataframe() -> None:
    u = _typed("pd.DataFrame", "import pandas as pd")
    records = fused.run(u, v=[{"a": 1}, {"a": 2}], engine="local")
    columns = fused.run(u, v={"a": [1, 2]}, engine="local")
    frame = pd.DataFrame({"a": [1, 2]})
    for value in (records, columns, fused.run(u, v=frame, engine="local")):
        assert isinstance(value, pd.DataFrame)
        pd.testing.assert_frame_equal(value, frame)
    optional = _typed("Optional[pd.DataFrame]", "from typing import Optional\nimport pandas as pd")
    assert fused.run(optional, v=None, engine="local") is None
    assert isinstance(fused.run(optional, v=[{"a": 1}], engine="local"), pd.DataFrame)
    union = _typed("pd.DataFrame | None", "import pandas as pd")
    assert fused.run(union, v=None, engine="local") is None
    pd.testing.assert_frame_equal(fused.run(union, v={"a": [1, 2]}, engine="local"), frame)


def test_coercion_to_geodataframe() -> None:
    u = _typed("gpd.GeoDataFrame", "import geopandas as gpd")
    from_features = fused.run(u, v=FEATURES, engine="local")
    assert isinstance(from_features, gpd.GeoDataFrame)
    assert from_features.crs == "EPSG:4326"
    assert from_features["n"].tolist() == [1]
    assert from_features.geometry.iloc[0].equals(shapely.Point(1, 2))
    from_bbox = fused.run(u, v=[0, 0, 1, 2], engine="local")
    assert isinstance(from_bbox, gpd.GeoDataFrame)
    assert from_bbox.total_bounds.tolist() == [0.0, 0.0, 1.0, 2.0]
    from_text = fused.run(u, v=json.dumps(FEATURES), engine="local")
    assert isinstance(from_text, gpd.GeoDataFrame) and len(from_text) == 1


@pytest.mark.parametrize(
    ("annotation", "imports", "given", "expected"),
    [
        ("shapely.Geometry", "import shapely", "POINT (1 2)", shapely.Point(1, 2)),
        (
            "shapely.Geometry",
            "import shapely",
            {"type": "Point", "coordinates": [1, 2]},
            shapely.Point(1, 2),
        ),
        (
            "shapely.geometry.Polygon",
            "import shapely.geometry",
            [0, 0, 1, 1],
            shapely.box(0, 0, 1, 1),
        ),
        ("shapely.Geometry", "import shapely", shapely.Point(3, 4), shapely.Point(3, 4)),
    ],
)
def test_coercion_to_shapely_geometry(annotation, imports, given, expected) -> None:
    value = fused.run(_typed(annotation, imports), v=given, engine="local")
    assert isinstance(value, shapely.Geometry)
    assert value.equals(expected)


def test_udfs_differing_only_by_annotation_coerce_differently() -> None:
    # same body, same line numbers: the coercion plans must still not be shared
    as_int = _typed("int")
    as_str = _typed("str")
    as_float = _typed("float")
    assert fused.run(as_int, v="5", engine="local") == 5
    assert fused.run(as_str, v=5, engine="local") == "5"
    assert fused.run(as_float, v="5", engine="local") == 5.0
    assert type(fused.run(as_float, v="5", engine="local")) is float


def test_unannotated_parameters_receive_the_value_as_given() -> None:
    # the reference turns True into 'true' and [1, 2] into '[1, 2]'
    assert s.echo(True, engine="local") is True
    assert s.echo([1, 2], engine="local") == [1, 2]
    assert s.echo({"a": [1]}, engine="local") == {"a": [1]}
    assert s.echo("[1, 2]", engine="local") == "[1, 2]"
    assert s.echo.map([True, [1, 2], None], engine="local", cache=False).results() == [
        True,
        [1, 2],
        None,
    ]


def test_coercion_on_workers() -> None:
    pool = s.kinds.map(
        [
            {"x": "5", "flag": "false", "items": "[1, 2]", "anything": True},
            {"x": 6, "flag": "0", "items": [3], "anything": [1, 2]},
        ],
        engine="local",
        cache=False,
    )
    assert pool.results() == [
        {
            "x": ["int", 5],
            "flag": ["bool", False],
            "items": ["list", [1, 2]],
            "anything": ["bool", True],
        },
        {
            "x": ["int", 6],
            "flag": ["bool", False],
            "items": ["list", [3]],
            "anything": ["list", [1, 2]],
        },
    ]


@pytest.mark.parametrize(
    ("annotation", "imports", "given", "type_name"),
    [
        ("int", "", "abc", "int"),
        ("bool", "", "maybe", "bool"),
        ("uuid.UUID", "import uuid", "not-a-uuid", "UUID"),
        ("list[int]", "", ["x"], "list[int]"),
        ("datetime.date", "import datetime", "someday", "date"),
        ("pd.DataFrame", "import pandas as pd", 5, "DataFrame"),
        ("shapely.Geometry", "import shapely", 5, "Geometry"),
    ],
)
def test_coercion_error_names_parameter_value_and_type(annotation, imports, given, type_name):
    with pytest.raises(UdfArgumentError) as info:
        fused.run(_typed(annotation, imports), v=given, engine="local")
    message = str(info.value)
    assert "'v'" in message
    assert repr(given) in message
    assert f"type {type_name}" in message
    assert isinstance(info.value, TypeError)
    assert info.value.child_exception_class == "TypeError"


# ----------------------------------------------------------------------------- calling


def test_calling_binds_positional_and_keyword_arguments() -> None:
    assert s.add(1, engine="local") == 11
    assert s.add(1, 2, engine="local") == 3
    assert s.add(x=1, y=5, engine="local") == 6


def test_unknown_keyword_arguments_raise_type_error() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['z'\]"):
        s.square(x=1, z=2, engine="local")
    with pytest.raises(TypeError, match="unexpected"):
        s.square.map([1, 2], z=3, engine="local")
    with pytest.raises(TypeError, match="unexpected"):
        s.square.map([{"x": 1, "bogus": 2}], engine="local")


def test_kwargs_udf_accepts_extra_keyword_arguments() -> None:
    assert s.takes_kwargs(1, z=2, w="a", engine="local") == {"x": 1, "z": 2, "w": "a"}
    assert s.takes_kwargs.map([1], z=3, engine="local", cache=False).results() == [{"x": 1, "z": 3}]


def test_other_binding_errors() -> None:
    with pytest.raises(TypeError, match="positional"):
        s.square(1, 2, engine="local")
    with pytest.raises(TypeError, match="multiple values"):
        s.square(1, x=2, engine="local")
    with pytest.raises(TypeError, match=r"missing required argument\(s\) \['x'\]"):
        s.square(engine="local")


def test_errors_of_a_call_carry_class_message_line_and_trimmed_traceback() -> None:
    with pytest.raises(UdfRuntimeError) as info:
        s.fail_if_odd(3, engine="local")
    err = info.value
    assert err.child_exception_class == "ValueError"
    assert err.message == "odd value 3"
    line = s.fail_if_odd.code.splitlines()[err.lineno - 1]
    assert line.strip() == 'raise ValueError(f"odd value {x}")'
    assert "raise ValueError" in err.traceback
    assert "execute.py" not in err.traceback
    assert err.traceback.rstrip().endswith("ValueError: odd value 3")
    assert str(err) == f"ValueError: odd value 3 (UDF line {err.lineno})"


def test_call_prints_the_udfs_captured_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert s.printer(1, engine="local") == 1
    out = capsys.readouterr().out
    assert "hello 1" in out and "warn 1" in out


def test_call_runs_in_a_fresh_namespace_each_time() -> None:
    u = fused.udf_from_code(
        "counter = []\n\ndef bump(x):\n    counter.append(x)\n    return len(counter)\n"
    )
    assert [u(i, engine="local") for i in range(3)] == [1, 1, 1]


def test_fused_run(local_default: None) -> None:
    assert fused.run(s.square, x=3) == 9
    assert fused.run(s.square, 4) == 16
    assert fused.run(s.add, x=1, y=2, engine="local") == 3
    assert s.square(5) == 25  # default engine without a cluster: local
    with pytest.raises(TypeError, match="expects a UDF"):
        fused.run(lambda x: x, x=1)


def test_unknown_engine_lists_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="m5.large"):
        s.square(1, engine="gpu-monster")
    with pytest.raises(ValueError, match="m5.large"):
        s.square.map([1], engine="gpu-monster")


# ----------------------------------------------------------------------------- cache_max_age


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (None, None),
        (0, 0),
        (90, 90),
        (2.9, 2),
        ("45", 45),
        ("30s", 30),
        ("10m", 600),
        ("1h", 3600),
        ("2d", 172800),
        (" 5h ", 18000),
    ],
)
def test_parse_cache_max_age(given, seconds) -> None:
    assert parse_cache_max_age(given) == seconds


@pytest.mark.parametrize("bad", ["1w", "h", "1.5h", "-1", -5, True, "soon", "1h30m"])
def test_parse_cache_max_age_rejects(bad) -> None:
    with pytest.raises(ValueError, match="cache_max_age"):
        parse_cache_max_age(bad)


def test_cache_max_age_in_decorator_and_map() -> None:
    @fused.udf(cache_max_age="30m")
    def aged(x):
        return x

    assert aged.cache_max_age == 1800
    with pytest.raises(ValueError, match="cache_max_age"):

        @fused.udf(cache_max_age="forever")
        def never(x):
            return x

    with pytest.raises(ValueError, match="cache_max_age"):
        aged.map([1], cache_max_age="1y", engine="local")


def test_reserved_parameter_warning_with_decorator_options() -> None:
    with pytest.warns(UserWarning, match=r"reserved") as record:

        @fused.udf(name="opts")
        def with_options(x, cache=None):
            return x

    reserved = [r for r in record if "reserved" in str(r.message)]
    assert len(reserved) == 1 and "['cache']" in str(reserved[0].message)
    assert reserved[0].filename == __file__


def test_importing_the_package_loads_no_dataframe_library() -> None:
    """Worker processes import ``fused_celery`` first; pandas/geopandas/pyarrow come with the
    first pool or table, not at import (the local engine's worker start depends on it)."""
    import subprocess
    import sys

    code = (
        "import sys, fused_celery\n"
        "heavy = ('pandas', 'geopandas', 'pyarrow', 'celery')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
