"""Run parameters: check names against the pipeline's and convert command-line text to values.

A parameter's type is its annotation when that is a simple type (``int``, ``float``, ``bool``,
``str``, ``pathlib.Path``, or ``X | None`` of one), else the type of its default. A value with no
declared type (an engine option, ``--engine-option k=v``) is what its text looks like.
"""

from __future__ import annotations

import inspect
import math
import pathlib
import types
import typing
from collections.abc import Mapping
from typing import Any

from ._errors import ParameterError
from .graph import Param

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def param_type(param: Param) -> type | None:
    """The type ``param``'s text converts to (see the module docstring); None if there is none,
    and then text stays text."""
    annotation = param.annotation
    if isinstance(annotation, str):
        annotation = {t.__name__: t for t in (int, float, bool, str)}.get(annotation.strip())
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        choices = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = choices[0] if len(choices) == 1 else None
    if isinstance(annotation, type) and annotation is not inspect.Parameter.empty:
        return annotation
    if param.default is not None:
        return type(param.default)
    return None


def convert(param: Param, text: str) -> Any:
    """Turn the text of ``--param name=text`` into a value of the parameter's type."""
    kind = param_type(param)
    if kind is None or kind is str:
        return text
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise ParameterError(f"parameter {param.name!r} is a bool: use true or false, not {text!r}")
    if kind in (pathlib.Path, pathlib.PurePath):
        return pathlib.Path(text)
    try:
        return kind(text)
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            f"parameter {param.name!r} expects {kind.__name__}, and {text!r} is not one ({exc})"
        ) from None


def resolve(known: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` names against ``known``; convert string values for non-string parameters."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        names = ", ".join(sorted(known)) or "none: no step has a keyword parameter with a default"
        raise ParameterError(f"unknown parameter {unknown[0]!r}; this pipeline's parameters: {names}")
    values = {}
    for name, value in given.items():
        param = known[name]
        values[name] = convert(param, value) if isinstance(value, str) else value
    return values


def parse_value(text: str) -> int | float | bool | str:
    """The value ``text`` looks like, for a value with no declared type: an int (``"4"``), a
    finite float (``"0.5"``), a bool (``"true"``, ``"false"``, any case), else the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def parse_assignments(pairs: list[str], *, option: str = "--param") -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``, with a clear error (naming the command-line
    ``option`` they came from) for a missing ``=``."""
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ParameterError(f"{option} takes name=value, not {pair!r}")
        parsed[name.strip()] = value
    return parsed
