"""Assemble a :class:`Graph` from decorated functions (a module's, or a list of them)."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from .._errors import PipelineDefinitionError
from .._steps import StepSpec, get_spec
from ._model import Graph, Step
from ._validate import check_arity, check_graph, step_param_names


def steps_of_module(module: ModuleType) -> list[Callable[..., Any]]:
    """The decorated functions defined in ``module``, in definition order."""
    return [
        value
        for value in vars(module).values()
        if get_spec(value) is not None and getattr(value, "__module__", None) == module.__name__
    ]


def _step_name(fn: Callable[..., Any], spec: StepSpec) -> str:
    return spec.name or getattr(fn, "__name__", None) or repr(fn)


def build_graph(
    functions: Iterable[Callable[..., Any]],
    *,
    output: Callable[..., Any] | str | None = None,
    chain: bool = False,
) -> Graph:
    """Make a validated graph from step functions.

    Upstreams named by ``@depends`` are pulled in even when not listed. With ``chain=True`` each
    function's upstream is the one listed before it, whatever ``@depends`` says.

    Raises:
        PipelineDefinitionError: (or a subclass) naming the step and the fix, for any mistake.
    """
    listed = list(functions)
    if not listed:
        raise PipelineDefinitionError("a pipeline needs at least one step")
    by_name: dict[str, Callable[..., Any]] = {}
    specs: dict[str, StepSpec] = {}
    upstreams: dict[str, tuple[Callable[..., Any] | str, ...]] = {}

    def add(fn: Callable[..., Any], referenced_by: str | None = None) -> str:
        spec = get_spec(fn)
        if spec is None:
            what = getattr(fn, "__name__", repr(fn))
            where = f"step {referenced_by!r} depends on {what!r}, which" if referenced_by else repr(what)
            raise PipelineDefinitionError(
                f"{where} is not a madhatter step: decorate it with @preprocess, @parallel, "
                f"@parallel.map, @parallel.filter or @postprocess"
            )
        name = _step_name(fn, spec)
        known = by_name.get(name)
        if known is not None and known is not fn:
            raise PipelineDefinitionError(
                f"two different functions are both named {name!r}; give one of them name=..."
            )
        if known is None:
            by_name[name], specs[name], upstreams[name] = fn, spec, spec.upstreams
        return name

    for fn in listed:
        add(fn)
    if chain:
        for before, after in itertools.pairwise(listed):
            upstreams[_step_name(after, specs_of(after))] = (before,)
        upstreams[_step_name(listed[0], specs_of(listed[0]))] = ()

    resolved: dict[str, tuple[str, ...]] = {}
    pending = list(by_name)
    while pending:
        name = pending.pop()
        names: list[str] = []
        for upstream in upstreams[name]:
            if isinstance(upstream, str):
                names.append(upstream)
            else:
                known_before = set(by_name)
                upstream_name = add(upstream, referenced_by=name)
                if upstream_name not in known_before:
                    pending.append(upstream_name)
                names.append(upstream_name)
        resolved[name] = tuple(names)

    for name, upstream_names in resolved.items():
        for upstream_name in upstream_names:
            if upstream_name not in by_name:
                raise PipelineDefinitionError(
                    f"step {name!r} depends on {upstream_name!r}, but there is no step of that name "
                    f"(known steps: {', '.join(sorted(by_name))})"
                )

    steps = {name: _make_step(name, by_name[name], specs[name], resolved[name]) for name in by_name}
    output_name = None
    if output is not None:
        output_name = output if isinstance(output, str) else _step_name(output, specs_of(output))
    return check_graph(steps, output_name)


def specs_of(fn: Callable[..., Any]) -> StepSpec:
    spec = get_spec(fn)
    if spec is None:
        raise PipelineDefinitionError(f"{getattr(fn, '__name__', fn)!r} is not a madhatter step")
    return spec


def _make_step(name: str, fn: Callable[..., Any], spec: StepSpec, upstreams: tuple[str, ...]) -> Step:
    kind = spec.kind or ("whole" if upstreams else "source")
    step = Step.from_spec(spec, name=name, func=fn, kind=kind, upstreams=upstreams)
    check_arity(step)  # before the signature: "add @depends" beats "takes 0 arguments"
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C functions have none
        return step
    return dataclasses.replace(step, param_names=step_param_names(step, signature))
