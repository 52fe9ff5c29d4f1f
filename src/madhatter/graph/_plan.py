"""Planning: which steps run together, and where.

The planner turns a :class:`Graph` into a :class:`Plan` of stages:

* a *driver* stage runs one ``source`` or ``whole`` step once, in the driver process;
* a *parallel* stage runs a **fused chain** of parallel steps: each chunk makes one round trip to a
  worker and passes through every step of the chain there, instead of one round trip per step.

A parallel step joins its upstream's chain when nothing else reads the upstream's output, and both
would be scheduled alike: same engine, resources, retry policy, timeout and ordering, and a
``chunk_by`` that does not ask for different chunks. The chain's concurrency is the smallest ``n``
of its steps, so every step's cap holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ._model import Graph, Step

StageKind = Literal["driver", "parallel"]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One unit of scheduling: a driver step, or a fused chain of parallel steps."""

    name: str
    kind: StageKind
    steps: tuple[Step, ...]
    upstreams: tuple[str, ...]

    @property
    def first(self) -> Step:
        return self.steps[0]

    @property
    def n(self) -> int | None:
        caps = [step.n for step in self.steps if step.n is not None]
        return min(caps) if caps else None

    @property
    def chunk_by(self) -> int | None:
        return self.first.chunk_by

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Stages in topological order; ``output`` names the stage whose result the run returns."""

    stages: tuple[Stage, ...]
    output: str

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def consumers(self, name: str) -> tuple[Stage, ...]:
        """The stages that read stage ``name``'s output (one entry per reading edge)."""
        return tuple(s for s in self.stages for upstream in s.upstreams if upstream == name)


def scheduling_key(step: Step) -> tuple[Any, ...]:
    """Steps with equal keys are scheduled alike and may share one task per chunk."""
    return (step.engine, step.resources, step.retries, step.retry_delay, step.timeout, step.ordered)


def _fuses_into(graph: Graph, upstream: Step, step: Step) -> bool:
    return (
        step.is_parallel
        and upstream.is_parallel
        and step.upstreams == (upstream.name,)
        and graph.downstream(upstream.name) == (step.name,)
        and scheduling_key(step) == scheduling_key(upstream)
        and step.chunk_by in (None, upstream.chunk_by)
    )


def plan_graph(graph: Graph, *, fuse: bool = True) -> Plan:
    """Group the graph's steps into stages, fusing chains of parallel steps when ``fuse``."""
    chains: list[list[Step]] = []
    chain_of: dict[str, list[Step]] = {}
    for step in graph:
        if fuse and step.is_parallel:
            upstream = graph[step.upstreams[0]]
            if _fuses_into(graph, upstream, step):
                chain = chain_of[upstream.name]
                chain.append(step)
                chain_of[step.name] = chain
                continue
        chain = [step]
        chains.append(chain)
        chain_of[step.name] = chain

    def stage_name(chain: list[Step]) -> str:
        return "+".join(step.name for step in chain)

    stages = tuple(
        Stage(
            name=stage_name(chain),
            kind="parallel" if chain[0].is_parallel else "driver",
            steps=tuple(chain),
            upstreams=tuple(stage_name(chain_of[name]) for name in chain[0].upstreams),
        )
        for chain in chains
    )
    return Plan(stages, stage_name(chain_of[graph.output]))
