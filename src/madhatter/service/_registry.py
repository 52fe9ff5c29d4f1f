"""The pipelines a service may run, and the validation of run parameters against them.

Only pipelines registered when ``serve`` or ``worker`` starts can run: a request names one of them
and gives parameter values; nothing in a request is ever imported or executed as code. A pipeline
is named after its module (the file's stem), or ``NAME=TARGET`` gives it a name.

Parameter values arrive as JSON. Text is converted to the parameter's type as on the command line
(``--param n=3``); other JSON values must already have the type (an int is accepted for a float).
Every problem names its field, so the API can answer 422 pointing at it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

from .._errors import MadhatterError, ParameterError
from .._params import convert, param_type
from .._pipeline import Pipeline
from ..graph import Param
from ._store import Store

PIPELINES_META = "pipelines"
"""The store setting where ``serve`` records its targets, so ``worker`` can load the same ones."""


class UnknownPipelineError(MadhatterError, KeyError):
    """A request named a pipeline that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class ParamProblem:
    """One bad parameter: its name and what is wrong with it."""

    field: str
    message: str


class InvalidParams(MadhatterError):
    """Some run parameters are unknown or of the wrong type; ``problems`` names each field."""

    def __init__(self, problems: list[ParamProblem]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "; ".join(f"{p.field}: {p.message}" for p in self.problems)


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """A run parameter as shown to people and API clients."""

    name: str
    type: str
    default: Any

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(param: Param) -> str:
    kind = param_type(param)
    if kind is pathlib.Path:
        return "path"
    return kind.__name__ if kind in (int, float, bool, str) else "str"


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


class Registry:
    """Named pipelines, loaded once from files or modules."""

    def __init__(self, pipelines: Mapping[str, Pipeline], targets: Iterable[str] = ()) -> None:
        self._pipelines = dict(pipelines)
        self.targets = list(targets)

    @classmethod
    def load(cls, targets: Iterable[str]) -> Registry:
        """Load ``FILE_OR_MODULE`` or ``NAME=FILE_OR_MODULE`` targets; files by absolute path,
        so the recorded list works for a worker started in another directory."""
        pipelines: dict[str, Pipeline] = {}
        recorded = []
        for target in targets:
            name, sep, where = target.partition("=")
            if not sep:
                name, where = "", target
            path = pathlib.Path(where)
            if path.suffix == ".py" or path.exists():
                where = str(path.resolve())
            pipeline = Pipeline.from_module(where, name=name or None)
            if pipeline.name in pipelines:
                raise MadhatterError(
                    f"two pipelines are named {pipeline.name!r}; name one with NAME={target}"
                )
            pipelines[pipeline.name] = pipeline
            recorded.append(f"{pipeline.name}={where}")
        return cls(pipelines, recorded)

    def record(self, store: Store) -> None:
        """Record the targets in ``store``, for workers started without any to load the same
        pipelines (:func:`recorded_targets`)."""
        store.set_meta(PIPELINES_META, json.dumps(self.targets))

    def names(self) -> list[str]:
        return sorted(self._pipelines)

    def __contains__(self, name: object) -> bool:
        return name in self._pipelines

    def get(self, name: str) -> Pipeline:
        try:
            return self._pipelines[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownPipelineError(
                f"no pipeline named {name!r} is registered (registered: {known})"
            ) from None

    def params(self, name: str) -> list[ParamInfo]:
        pipeline = self.get(name)
        return [ParamInfo(p.name, _type_name(p), _jsonable(p.default)) for p in pipeline.params.values()]

    def validate(self, name: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters as they will run (JSON values), or :class:`InvalidParams`."""
        known = self.get(name).params
        problems, values = [], {}
        for field, value in given.items():
            if field not in known:
                choices = ", ".join(sorted(known)) or "none"
                problems.append(ParamProblem(field, f"unknown parameter (this pipeline's: {choices})"))
                continue
            try:
                values[field] = _check(known[field], value)
            except ParameterError as exc:
                problems.append(ParamProblem(field, str(exc)))
        if problems:
            raise InvalidParams(problems)
        return values


def recorded_targets(store: Store) -> list[str]:
    """The targets that :meth:`Registry.record` recorded in ``store`` (none if nothing did)."""
    recorded = store.get_meta(PIPELINES_META)
    targets: list[str] = json.loads(recorded) if recorded else []
    return targets


def _check(param: Param, value: Any) -> Any:
    """``value`` converted to ``param``'s type, as a JSON value; ParameterError if it is not one."""
    kind = param_type(param)
    if isinstance(value, str):
        converted = convert(param, value)
        return str(converted) if isinstance(converted, pathlib.PurePath) else converted
    if value is None:
        if param.default is None:
            return None
        raise ParameterError(f"parameter {param.name!r} may not be null")
    if kind is None or kind is str:
        if isinstance(value, (int, float, bool)):
            return value
        raise ParameterError(
            f"parameter {param.name!r} takes text or a number, not {type(value).__name__}"
        )
    if kind is bool and isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ParameterError(
        f"parameter {param.name!r} expects {_type_name(param)}, not {json.dumps(value)}"
    )
