"""The JSON Schema the API publishes for a run parameter allows exactly the values the server
accepts: checked value by value, with a real JSON Schema validator, for every parameter type."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import pytest

from madhatter._errors import ParameterError
from madhatter.graph import Param
from madhatter.service._param_schema import check, value_schema

PARAMS = [
    Param("n", 4, int, ("s",)),
    Param("scale", 1.0, float, ("s",)),
    Param("loud", False, bool, ("s",)),
    Param("label", "x", str, ("s",)),
    Param("folder", pathlib.Path("."), pathlib.Path, ("s",)),
    Param("anything", None, None, ("s",)),
    Param("limit", None, int | None, ("s",)),
]

VALUES: list[Any] = [
    0,
    -7,
    10**40,
    3.0,
    2.5,
    -1e-9,
    sys.float_info.max,
    int(sys.float_info.max) + 1,
    True,
    False,
    None,
    "3",
    " -12\t",
    "+5",
    "1_000",
    "٣",
    "3.5",
    ".5",
    "1e-3",
    "2E+10",
    "1e999",
    "nan",
    "inf",
    "true",
    "FALSE",
    "Yes",
    "off",
    "y",
    "1",
    "perhaps",
    "",
    "some text",
    "3\n",
]


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.name)
def test_the_schema_allows_exactly_what_the_server_accepts(param: Param) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="comes with schemathesis (test extra)")
    validator = jsonschema.Draft202012Validator(value_schema(param))
    for value in VALUES:
        allowed = validator.is_valid(value)
        try:
            check(param, value)
            accepted = True
        except ParameterError:
            accepted = False
        assert allowed == accepted, (param.name, value, allowed, accepted)


def test_text_is_converted_as_on_the_command_line() -> None:
    n, scale, loud, _, folder, anything, limit = PARAMS
    assert check(n, " 12 ") == 12
    assert check(n, 3.0) == 3
    assert check(scale, "1e-3") == 0.001
    assert check(scale, 2) == 2.0
    assert check(loud, "Yes") is True
    assert check(folder, "a//b") == "a/b"
    assert check(anything, 3) == 3
    assert check(limit, None) is None
    with pytest.raises(ParameterError, match="parameter 'n' expects int, not \"many\""):
        check(n, "many")
    with pytest.raises(ParameterError, match="parameter 'loud' is a bool"):
        check(loud, "perhaps")
