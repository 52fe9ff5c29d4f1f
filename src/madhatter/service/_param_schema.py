"""A run parameter's JSON Schema, and the check that accepts exactly the values it describes.

The API's OpenAPI schema describes each pipeline's parameters with :func:`value_schema`, and the
server checks each value with :func:`check`. The two are written side by side, from the same
patterns, because a client generated from the schema must never be surprised: every value the
schema allows is accepted, and every value it forbids gets 422 naming the field.

What a parameter takes depends on its type (see :func:`madhatter._params.param_type`):

=========  ====================================================  ===============================
type       JSON values                                           text (converted as ``--param``)
=========  ====================================================  ===============================
int        an integer (``3``, or ``3.0``: JSON has one number    decimal digits: ``"3"``, ``"-12"``
           type)
float      a finite number                                       ``"0.5"``, ``"-1e-3"``, ``"2"``
bool       ``true``, ``false``                                   true/false, yes/no, on/off, y/n,
                                                                 1/0, in any case
str        text, a finite number or a boolean, as it is          any
path       --                                                    any (a path)
=========  ====================================================  ===============================

Text may have spaces or tabs around it (a form field often does). ``null`` is accepted when the
parameter's default is ``None``. A parameter of any other type takes text only, handed to the
type (``TYPE(text)``); that may refuse it, with 422, which the schema cannot say in advance.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import sys
from typing import Any

from .._errors import ParameterError
from .._params import convert, param_type
from ..graph import Param

INT_TEXT = r"^[ \t]*[+-]?[0-9]{1,4000}[ \t]*$"
"""Text an int parameter takes. 4,000 digits stays under Python's 4,300-digit limit on int(text)."""
FLOAT_TEXT = r"^[ \t]*[+-]?([0-9]{1,30}(\.[0-9]{0,30})?|\.[0-9]{1,30})([eE][+-]?[0-9]{1,2})?[ \t]*$"
"""Text a float parameter takes: bounded, so that every match is a finite float."""
BOOL_TEXT = (
    r"^[ \t]*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|[Oo][Nn]|[Oo][Ff][Ff]"
    r"|[Yy]|[Nn]|1|0)[ \t]*$"
)
"""Text a bool parameter takes: the words ``--param`` understands, in any case."""
LARGEST_FLOAT = int(sys.float_info.max)
"""The bounds of a float parameter, written in the schema as this exact integer: a float bound
(1.7976931348623157e308) reads as one number to a validator that parses it as a float and as
another to one that reads its decimal digits, and the server must agree with both."""

_TEXT = {int: INT_TEXT, float: FLOAT_TEXT, bool: BOOL_TEXT}
_DESCRIPTIONS: dict[type | None, str] = {
    int: "an integer, or its decimal digits as text",
    float: "a number, or one as text (0.5, -1e-3)",
    bool: "true or false, or as text true/false, yes/no, on/off, y/n, 1/0",
    str: "text (a number or boolean is passed as it is)",
    None: "text (a number or boolean is passed as it is)",
    pathlib.Path: "a path, as text",
    pathlib.PurePath: "a path, as text",
}


def type_name(param: Param) -> str:
    """The parameter's type as shown to people and in the API: int, float, bool, str or path."""
    kind = param_type(param)
    if kind is pathlib.Path or kind is pathlib.PurePath:
        return "path"
    return kind.__name__ if kind in (int, float, bool, str) else "str"


def value_schema(param: Param) -> dict[str, Any]:
    """The JSON Schema of the values :func:`check` accepts for ``param``."""
    kind = param_type(param)
    if kind is int:
        choices: list[dict[str, Any]] = [{"type": "integer"}]
    elif kind is float:
        choices = [{"type": "number", "minimum": -LARGEST_FLOAT, "maximum": LARGEST_FLOAT}]
    elif kind is bool:
        choices = [{"type": "boolean"}]
    elif kind is None or kind is str:
        choices = [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]
    else:
        choices = []
    text = _TEXT.get(kind) if kind is not None else None
    if text is not None:
        choices.append({"type": "string", "pattern": text})
    elif not choices:
        choices = [{"type": "string"}]
    if param.default is None:
        choices.append({"type": "null"})
    schema: dict[str, Any] = choices[0] if len(choices) == 1 else {"anyOf": choices}
    described = _DESCRIPTIONS.get(kind, "text, converted by the parameter's type (which may refuse it)")
    if param.default is None:
        described += "; or null"
    return {**schema, "title": param.name, "description": f"{type_name(param)}: {described}"}


def check(param: Param, value: Any) -> Any:
    """``value`` as the run will get it (a JSON value of the parameter's type), or
    :class:`ParameterError` saying what is wrong. Accepts exactly what :func:`value_schema` allows."""
    kind = param_type(param)
    if value is None:
        if param.default is None:
            return None
        raise ParameterError(f"parameter {param.name!r} may not be null")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(f"parameter {param.name!r} must be a finite number, not {value}")
    if isinstance(value, str):
        return _from_text(param, kind, value)
    if kind is None or kind is str:
        if isinstance(value, (int, float, bool)):
            return value
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if abs(value) <= LARGEST_FLOAT:
            return float(value)
        raise ParameterError(f"parameter {param.name!r}: {value} is too large for a float")
    raise ParameterError(f"parameter {param.name!r} expects {type_name(param)}, not {_shown(value)}")


def _from_text(param: Param, kind: type | None, text: str) -> Any:
    pattern = _TEXT.get(kind) if kind is not None else None
    if pattern is not None and re.search(pattern, text) is None:
        if kind is bool:
            raise ParameterError(
                f"parameter {param.name!r} is a bool: use true or false, not {_shown(text)}"
            )
        raise ParameterError(f"parameter {param.name!r} expects {type_name(param)}, not {_shown(text)}")
    try:
        converted = convert(param, text)
    except ParameterError:
        raise
    except Exception as exc:  # a parameter of another type: its constructor refused the text
        raise ParameterError(
            f"parameter {param.name!r} expects {kind.__name__ if kind else 'text'}, and "
            f"{_shown(text)} is not one ({type(exc).__name__}: {exc})"
        ) from None
    return str(converted) if isinstance(converted, pathlib.PurePath) else converted


def _shown(value: Any) -> str:
    """A value in a message, as JSON: short, whatever its size."""
    text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
