"""Typed errors at UDF definition and for arguments (issue "Nothing lost, nothing leaked", 7):
a UDF whose code does not parse is a :class:`UdfDefinitionError` naming the line, never a raw
``SyntaxError``; an argument that cannot travel is called an argument, not a result."""

from __future__ import annotations

from pathlib import Path

import pytest

import fused_celery as fused
from fused_celery.errors import UdfArgumentError, UdfDefinitionError
from fused_celery.options import options
from fused_celery.udf import Udf, udf_from_code

BROKEN = "import math\n\n\ndef area(r):\n    return math.pi * r **\n"


@pytest.fixture(autouse=True)
def _local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "cache_dir", str(tmp_path / "cache"))
    monkeypatch.setattr(options.show, "enable_tqdm", False)
    monkeypatch.setattr(options, "broker_url", None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: udf_from_code(BROKEN),
        lambda: Udf(name="area", entrypoint="area", code=BROKEN),
        lambda: Udf.model_validate_json(
            Udf.model_construct(name="area", entrypoint="area", code=BROKEN).model_dump_json()
        ),
    ],
    ids=["udf_from_code", "Udf(...)", "Udf.model_validate_json"],
)
def test_syntax_error_is_a_udf_definition_error_with_the_line(make) -> None:
    with pytest.raises(UdfDefinitionError) as info:
        make()
    err = info.value
    assert not isinstance(err, SyntaxError)
    assert err.lineno == 5
    message = str(err)
    assert "line 5" in message and "syntax" in message.lower()
    assert "return math.pi * r **" in message  # the offending line is shown


def test_a_broken_udf_assigned_new_code_is_refused_and_keeps_its_code() -> None:
    good = udf_from_code("def f(x):\n    return x\n")
    with pytest.raises(UdfDefinitionError, match="line 2"):
        good.code = "def f(x):\n    return (\n"
    assert good.code == "def f(x):\n    return x\n"


class Opaque:
    """A value the codec cannot encode."""


@fused.udf
def ident(x):
    return x


@pytest.mark.parametrize(
    "call",
    [
        lambda: ident.map([Opaque()], engine="local"),
        lambda: ident.map([{"x": Opaque()}], engine="local"),
        lambda: ident.map([1, 2], y=Opaque(), engine="local"),
    ],
    ids=["list", "dicts", "constant"],
)
def test_argument_that_cannot_travel_says_argument_not_result(call) -> None:
    with pytest.raises(UdfArgumentError) as info:
        call()
    message = str(info.value)
    assert "result" not in message, message
    assert "argument" in message and "Opaque" in message
    assert "pass None" in message  # the fix, for an argument (not "return None")


def test_result_that_cannot_travel_still_says_result() -> None:
    from fused_celery import codec
    from fused_celery.errors import UdfSerializationError

    with pytest.raises(UdfSerializationError, match="a result of type .*Opaque.*return None"):
        codec.encode(Opaque())
