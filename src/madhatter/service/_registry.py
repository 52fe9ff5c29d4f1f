"""The pipelines a service may run, and the validation of run parameters against them.

Only pipelines registered when ``serve`` or ``worker`` starts can run: a request names one of them
and gives parameter values; nothing in a request is ever imported or executed as code. A pipeline
is named after its module (the file's stem), or ``NAME=TARGET`` gives it a name.

Parameter values arrive as JSON. Text is converted to the parameter's type as on the command line
(``--param n=3``); other JSON values must already have the type (an int is accepted for a float).
``_param_schema`` has the exact rules, and the JSON Schema the API publishes for them. Every problem
names its field, so the API can answer 422 pointing at it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .._errors import MadhatterError, ParameterError
from .._pipeline import Pipeline
from ._param_schema import check, type_name, value_schema
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


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


class Registry:
    """Named pipelines, loaded once from files or modules.

    A worker that follows the store (started without ``PIPELINE`` arguments) extends its registry
    with what ``serve`` records later; readers on other threads see the pipelines before
    or after an extension, never a half-made one (the mapping is replaced, not changed).
    """

    def __init__(self, pipelines: Mapping[str, Pipeline], targets: Iterable[str] = ()) -> None:
        self._pipelines = dict(pipelines)
        self.targets = list(targets)
        self._broken: dict[str, str] = {}  # name -> why its recorded target failed to load
        self._lock = threading.Lock()

    @classmethod
    def load(cls, targets: Iterable[str]) -> Registry:
        """Load ``FILE_OR_MODULE`` or ``NAME=FILE_OR_MODULE`` targets; files by absolute path,
        so the recorded list works for a worker started in another directory."""
        pipelines: dict[str, Pipeline] = {}
        recorded = []
        for target in targets:
            pipeline, where = _load(target)
            if pipeline.name in pipelines:
                raise MadhatterError(
                    f"two pipelines are named {pipeline.name!r}; name one with NAME={target}"
                )
            pipelines[pipeline.name] = pipeline
            recorded.append(f"{pipeline.name}={where}")
        return cls(pipelines, recorded)

    def extend(self, recorded: Iterable[str]) -> tuple[list[str], dict[str, str]]:
        """Load the ``NAME=WHERE`` targets (as :meth:`record` wrote them) this registry does not
        have yet, or has from another place: the worker's side of ``serve`` registering more.

        Pipelines loaded before stay, so runs queued for them still run. A target that fails to
        load is left out, and :meth:`get` says why when a run asks for it; the next call tries
        it again.

        Returns:
            The names added (or replaced), and for each target that failed, its name and why.
        """
        with self._lock:
            pipelines, targets = dict(self._pipelines), list(self.targets)
            added, failed = [], {}
            for target in recorded:
                if target in targets:
                    continue
                name = target.partition("=")[0]
                try:
                    pipeline, where = _load(target)
                except Exception as exc:  # a missing file or a broken module: that pipeline only
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    continue
                pipelines[pipeline.name] = pipeline
                targets = [t for t in targets if t.partition("=")[0] != pipeline.name]
                targets.append(f"{pipeline.name}={where}")
                added.append(pipeline.name)
            self._broken = {
                n: why for n, why in {**self._broken, **failed}.items() if n not in pipelines
            }
            self._pipelines, self.targets = pipelines, targets
        return added, failed

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
            if name in self._broken:
                raise UnknownPipelineError(
                    f"pipeline {name!r} failed to load on this worker: {self._broken[name]}"
                ) from None
            known = ", ".join(self.names()) or "none"
            raise UnknownPipelineError(
                f"no pipeline named {name!r} is registered (registered: {known})"
            ) from None

    def params(self, name: str) -> list[ParamInfo]:
        pipeline = self.get(name)
        return [ParamInfo(p.name, type_name(p), _jsonable(p.default)) for p in pipeline.params.values()]

    def param_schemas(self, name: str) -> dict[str, dict[str, Any]]:
        """The JSON Schema of each run parameter's values: what :meth:`validate` accepts."""
        return {p.name: value_schema(p) for p in self.get(name).params.values()}

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
                values[field] = check(known[field], value)
            except ParameterError as exc:
                problems.append(ParamProblem(field, str(exc)))
        if problems:
            raise InvalidParams(problems)
        return values


def _load(target: str) -> tuple[Pipeline, str]:
    """The pipeline of ``[NAME=]FILE_OR_MODULE``, and where it was found (a file's absolute path)."""
    name, sep, where = target.partition("=")
    if not sep:
        name, where = "", target
    path = pathlib.Path(where)
    if path.suffix == ".py" or path.exists():
        where = str(path.resolve())
    return Pipeline.from_module(where, name=name or None), where


def recorded_targets(store: Store) -> list[str]:
    """The targets that :meth:`Registry.record` recorded in ``store`` (none if nothing did)."""
    recorded = store.get_meta(PIPELINES_META)
    targets: list[str] = json.loads(recorded) if recorded else []
    return targets
