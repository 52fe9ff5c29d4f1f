"""The pipeline as plain data: a graph of frozen steps. No threads, no I/O.

A :class:`Graph` is what :mod:`._build` makes from decorated functions and what
:mod:`._validate` checks; the planner (:mod:`._plan`) and the renderers read it. Steps refer to
their upstreams by name, so the graph is easy to print, compare and serialise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._steps import PARALLEL_KINDS, StepKind, StepSpec


@dataclasses.dataclass(frozen=True)
class Param:
    """A run parameter: a keyword parameter with a default on one or more step functions."""

    name: str
    default: Any
    annotation: Any
    steps: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step(StepSpec):
    """One step of a pipeline: the decorators' :class:`~madhatter._steps.StepSpec` (its options,
    defined there once) with what building the graph settled: the step's name, its function, its
    kind and its upstreams by name, and which run parameters it takes. Every field is keyword-only
    (``Step(name=..., func=..., kind=...)``), as a spec's are."""

    name: str
    func: Callable[..., Any]
    kind: StepKind
    upstreams: tuple[str, ...] = ()
    param_names: tuple[str, ...] = ()

    @classmethod
    def from_spec(
        cls,
        spec: StepSpec,
        *,
        name: str,
        func: Callable[..., Any],
        kind: StepKind,
        upstreams: tuple[str, ...],
    ) -> Step:
        """The step that ``spec`` describes, with its name, function, kind and upstreams settled."""
        options = {field.name: getattr(spec, field.name) for field in dataclasses.fields(StepSpec)}
        return cls(**{**options, "name": name, "func": func, "kind": kind, "upstreams": upstreams})

    @property
    def is_parallel(self) -> bool:
        """True for steps whose input is split into chunks run by workers."""
        return self.kind in PARALLEL_KINDS


@dataclasses.dataclass(frozen=True)
class Graph:
    """Steps in topological order (every step after its upstreams) and the output step's name."""

    steps: Mapping[str, Step]
    output: str

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps.values())

    def __getitem__(self, name: str) -> Step:
        return self.steps[name]

    def downstream(self, name: str) -> tuple[str, ...]:
        """The names of the steps that take ``name``'s output, in topological order."""
        return tuple(step.name for step in self if name in step.upstreams)
