"""Run parameters: keyword parameters with defaults, checked by name, converted from text."""

from __future__ import annotations

import inspect
import pathlib
from typing import Any, Optional

import pytest

import madhatter
from madhatter import (
    ParameterError,
    PipelineDefinitionError,
    depends,
    parallel,
    postprocess,
    preprocess,
)
from madhatter._params import convert, param_type, parse_assignments, parse_value, resolve
from madhatter.graph import Param


def param(annotation: Any = None, default: Any = None, name: str = "p") -> Param:
    return Param(name, default, annotation, ("step",))


@pytest.mark.parametrize(
    ("annotation", "default", "text", "expected"),
    [
        (int, 0, "42", 42),
        (int, None, "-7", -7),
        (float, 1.0, "2.5", 2.5),
        (str, "a", "hello", "hello"),
        (pathlib.Path, None, "data/in.csv", pathlib.Path("data/in.csv")),
        (Optional[int], None, "3", 3),  # noqa: UP045 - the old spelling must work too
        (int | None, None, "4", 4),
        ("int", 1, "5", 5),  # postponed annotations arrive as strings
        ("float", 1.0, "0.5", 0.5),
        (None, 10, "11", 11),  # no usable annotation: the default's type
        (None, None, "as is", "as is"),  # nothing to go by: the text itself
        (list[int], None, "x", "x"),
    ],
)
def test_convert(annotation: Any, default: Any, text: str, expected: Any) -> None:
    if annotation is None:
        annotation = inspect.Parameter.empty
    value = convert(param(annotation, default), text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("Yes", True), ("1", True), ("on", True), ("false", False), ("NO", False)],
)
def test_convert_bool(text: str, expected: bool) -> None:
    assert convert(param(bool, False), text) is expected


def test_convert_rejects_bad_text_naming_the_parameter() -> None:
    with pytest.raises(ParameterError, match=r"parameter 'p' is a bool: use true or false, not 'maybe'"):
        convert(param(bool, True), "maybe")
    with pytest.raises(ParameterError, match=r"parameter 'size' expects int, and 'ten' is not one"):
        convert(param(int, 1, name="size"), "ten")


def test_resolve_converts_text_and_passes_values_through() -> None:
    known = {"size": param(int, 1, "size"), "label": param(str, "x", "label")}
    assert resolve(known, {"size": "3", "label": "7"}) == {"size": 3, "label": "7"}
    assert resolve(known, {"size": 2.5}) == {"size": 2.5}  # not text: the caller's own value
    assert resolve(known, {}) == {}


def test_resolve_rejects_unknown_names_listing_the_known_ones() -> None:
    known = {"size": param(int, 1, "size"), "label": param(str, "x", "label")}
    with pytest.raises(ParameterError, match=r"unknown parameter 'sise'; .*: label, size$"):
        resolve(known, {"sise": "3"})
    with pytest.raises(ParameterError, match="none: no step has a keyword parameter with a default"):
        resolve({}, {"x": "1"})


def test_parse_assignments() -> None:
    assert parse_assignments(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(ParameterError, match=r"--param takes name=value, not 'novalue'"):
        parse_assignments(["novalue"])
    with pytest.raises(ParameterError, match="not '=3'"):
        parse_assignments(["=3"])
    with pytest.raises(ParameterError, match=r"--engine-option takes name=value, not 'x'"):
        parse_assignments(["x"], option="--engine-option")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("-7", -7),
        ("0.5", 0.5),
        ("1e3", 1000.0),
        ("true", True),
        ("False", False),
        ("512m", "512m"),
        ("yes", "yes"),  # only true and false are booleans: other words are text
        ("inf", "inf"),  # and so are the floats that are no numbers
        ("nan", "nan"),
        ("", ""),
        ("tcp://host:8786", "tcp://host:8786"),
    ],
)
def test_parse_value_is_what_the_text_looks_like(text: str, expected: Any) -> None:
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_param_type_is_the_annotation_or_the_defaults_type() -> None:
    assert param_type(param(int | None, None)) is int
    assert param_type(param("float", 1.0)) is float
    assert param_type(param(inspect.Parameter.empty, "x")) is str
    assert param_type(param(inspect.Parameter.empty, None)) is None


# -- parameters of a real pipeline -------------------------------------------------------------


@preprocess
def start(count: int = 3) -> list[int]:
    return list(range(count))


@depends(start)
@parallel.map
def scale(x: int, factor: int = 2, *, offset: float = 0.0) -> float:
    return x * factor + offset


@depends(scale)
@postprocess
def finish(values: list[float], factor: int = 2) -> dict[str, Any]:
    return {"values": values, "factor": factor}


def test_pipeline_params_are_merged_across_steps() -> None:
    params = madhatter.Pipeline([finish]).params
    assert set(params) == {"count", "factor", "offset"}
    assert params["factor"].steps == ("scale", "finish")
    assert params["factor"].default == 2
    assert params["count"].annotation in (int, "int")


def test_params_reach_every_step_that_takes_them() -> None:
    result = madhatter.run(finish, engine="serial", params={"count": "4", "factor": "10"})
    assert result == {"values": [0.0, 10.0, 20.0, 30.0], "factor": 10}
    assert madhatter.run(finish, engine="serial") == {"values": [0, 2, 4], "factor": 2}
    result = madhatter.run(finish, engine="serial", params={"offset": "0.5", "count": 2})
    assert result["values"] == [0.5, 2.5]


def test_run_rejects_unknown_and_badly_typed_params() -> None:
    with pytest.raises(ParameterError, match=r"unknown parameter 'factr'.*count, factor, offset"):
        madhatter.run(finish, engine="serial", params={"factr": "1"})
    with pytest.raises(ParameterError, match="'count' expects int"):
        madhatter.run(finish, engine="serial", params={"count": "many"})


def test_a_parameter_without_default_is_a_definition_error() -> None:
    @preprocess
    def load(path: str) -> list[str]:
        return [path]

    with pytest.raises(PipelineDefinitionError, match=r"parameter 'path' of step 'load' has no default"):
        madhatter.Pipeline([load])


def test_setup_may_fill_parameters_without_default() -> None:
    @depends(start)
    @parallel.map(setup=lambda: {"model": 100})
    def predict(x: int, model: int) -> int:
        return x + model

    pipeline = madhatter.Pipeline([predict])
    assert "model" not in pipeline.params
    assert pipeline.run(engine="serial") == [100, 101, 102]


def test_positional_only_parameters_cannot_be_run_parameters() -> None:
    @depends(start)
    @parallel.map
    def f(x: int, y: int = 1, /) -> int:
        return x + y

    with pytest.raises(PipelineDefinitionError, match="'y' of step 'f' is positional-only"):
        madhatter.Pipeline([f])
