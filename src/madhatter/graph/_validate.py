"""Checks that make a pipeline's mistakes fail at build time, with the step named and the fix said.

Checked here: each step's number of upstreams fits its kind; no cycles (the cycle is named); exactly
one output step; every function's signature can take its inputs; run parameters have defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from .._errors import CycleError, PipelineDefinitionError
from ._model import Graph, Param, Step


def check_graph(steps: Mapping[str, Step], output: str | None) -> Graph:
    """Validate ``steps`` and return them as a :class:`Graph` in topological order."""
    order = topological_order(steps)
    sinks = [name for name in order if not any(name in s.upstreams for s in steps.values())]
    if output is None:
        if len(sinks) != 1:
            raise PipelineDefinitionError(
                f"the pipeline has {len(sinks)} final steps ({', '.join(sinks)}); it needs exactly "
                f"one: add a @postprocess step that depends on all of them, or pass output=..."
            )
        output = sinks[0]
    elif output not in steps:
        raise PipelineDefinitionError(
            f"output={output!r} is not a step (known steps: {', '.join(sorted(steps))})"
        )
    needed = _ancestors(steps, output) | {output}
    return Graph({name: steps[name] for name in order if name in needed}, output)


def check_arity(step: Step) -> None:
    """Each kind takes a fixed number of upstreams: a source none, a parallel step one."""
    count = len(step.upstreams)
    if step.kind == "source" and count:
        raise PipelineDefinitionError(
            f"step {step.name!r} is a @preprocess source and cannot @depends on other steps; "
            f"use @parallel or @postprocess for a step that takes input"
        )
    if step.is_parallel and count != 1:
        raise PipelineDefinitionError(
            f"parallel step {step.name!r} needs exactly one upstream (it has {count}); "
            f"use @depends(one_step), and combine several upstreams in a @postprocess step first"
        )
    if step.kind == "whole" and count == 0:
        raise PipelineDefinitionError(
            f"step {step.name!r} is a @postprocess step with no upstream: add @depends(...)"
        )
    if step.stream and step.kind != "whole":
        raise PipelineDefinitionError(f"stream=True applies to @postprocess steps only ({step.name!r})")


def topological_order(steps: Mapping[str, Step]) -> list[str]:
    """Step names with every step after its upstreams; raises CycleError naming a cycle."""
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" or "done"
    path: list[str] = []

    def visit(name: str) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            upstream_order = path[path.index(name) :]  # we walked from each step to its upstream
            raise CycleError([upstream_order[0], *reversed(upstream_order[1:])])
        state[name] = "visiting"
        path.append(name)
        for upstream in steps[name].upstreams:
            visit(upstream)
        path.pop()
        state[name] = "done"
        order.append(name)

    for name in steps:
        visit(name)
    return order


def _ancestors(steps: Mapping[str, Step], name: str) -> set[str]:
    seen: set[str] = set()
    stack = list(steps[name].upstreams)
    while stack:
        upstream = stack.pop()
        if upstream not in seen:
            seen.add(upstream)
            stack.extend(steps[upstream].upstreams)
    return seen


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def step_param_names(step: Step, signature: inspect.Signature) -> tuple[str, ...]:
    """Check that ``step.func`` can take its inputs; return the names of its run parameters.

    A step receives one positional argument per upstream (a source: none; a parallel step: one).
    Every further parameter must have a default (it becomes a run parameter) or, for a step with
    ``setup=``, may be filled in by the setup's keyword arguments.
    """
    inputs = 1 if step.is_parallel else len(step.upstreams)
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    takes_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    if len(positional) < inputs and not takes_varargs:
        what = "one chunk" if step.kind == "chunks" else "one item"
        receives = what if step.is_parallel else f"{inputs} argument(s), one per upstream"
        raise PipelineDefinitionError(
            f"step {step.name!r} receives {receives} but its signature {signature} "
            f"takes only {len(positional)} positional argument(s)"
        )
    params = []
    for parameter in parameters[inputs:] if len(positional) >= inputs else []:
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if parameter.default is inspect.Parameter.empty:
            if step.setup is not None:
                continue  # filled in by the step's setup
            raise PipelineDefinitionError(
                f"parameter {parameter.name!r} of step {step.name!r} has no default: give it one "
                f"to make it a run parameter, or supply it from the step's setup="
            )
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise PipelineDefinitionError(
                f"parameter {parameter.name!r} of step {step.name!r} is positional-only; run "
                f"parameters are passed by keyword"
            )
        params.append(parameter.name)
    return tuple(params)


def graph_params(graph: Graph) -> dict[str, Param]:
    """The run parameters of a graph, merged by name across steps."""
    merged: dict[str, Param] = {}
    for step in graph:
        if not step.param_names:
            continue
        signature = inspect.signature(step.func)
        for name in step.param_names:
            parameter = signature.parameters[name]
            known = merged.get(name)
            if known is None:
                merged[name] = Param(name, parameter.default, parameter.annotation, (step.name,))
            else:
                merged[name] = Param(name, known.default, known.annotation, (*known.steps, step.name))
    return merged
