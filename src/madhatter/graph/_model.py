"""The pipeline as plain data: a graph of frozen steps. No threads, no I/O.

A :class:`Graph` is what :mod:`._build` makes from decorated functions and what
:mod:`._validate` checks; the planner (:mod:`._plan`) and the renderers read it. Steps refer to
their upstreams by name, so the graph is easy to print, compare and serialise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._steps import PARALLEL_KINDS, OnError, StepKind


@dataclasses.dataclass(frozen=True)
class Param:
    """A run parameter: a keyword parameter with a default on one or more step functions."""

    name: str
    default: Any
    annotation: Any
    steps: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a pipeline (see :class:`madhatter._steps.StepSpec` for the option meanings)."""

    name: str
    func: Callable[..., Any]
    kind: StepKind
    upstreams: tuple[str, ...] = ()
    n: int | None = None
    chunk_by: int | None = None
    retries: int = 0
    retry_delay: float = 0.0
    timeout: float | None = None
    on_error: OnError = "raise"
    setup: Callable[[], Mapping[str, Any]] | None = None
    ordered: bool = True
    stream: bool = False
    engine: str | None = None
    resources: tuple[tuple[str, Any], ...] = ()
    param_names: tuple[str, ...] = ()

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
