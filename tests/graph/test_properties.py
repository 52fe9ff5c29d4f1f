"""Properties over random pipelines: shapes validate and order correctly, cycles are named exactly,
and however items are chunked, fused or ordered, every engine gives the plain-Python result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import madhatter
from madhatter import CycleError, Pipeline, PipelineDefinitionError, depends, parallel, postprocess
from madhatter import preprocess as source_step

KINDS = ("map", "filter", "chunks")

# -- the semantics of the random steps, as plain Python ---------------------------------------


def map_item(i: int, x: int) -> int:
    return x * 3 + i


def keep_item(i: int, x: int) -> bool:
    return (x + i) % 3 != 0


def expand_item(i: int, x: int) -> list[int]:
    """What a ``chunks`` step makes of one item: zero, one or two outputs (flat-map)."""
    return [] if x % 4 == 0 else [x] if x % 2 else [x, -x - i]


def apply_plain(kind: str, i: int, items: list[int]) -> list[int]:
    if kind == "map":
        return [map_item(i, x) for x in items]
    if kind == "filter":
        return [x for x in items if keep_item(i, x)]
    return [y for x in items for y in expand_item(i, x)]


def make_parallel(kind: str, i: int, upstream: Any, **options: Any) -> Callable[..., Any]:
    """A fresh decorated step (a closure, so it is pickled by value for worker processes)."""
    if kind == "map":

        def step(x: int) -> int:
            return map_item(i, x)

        decorator = parallel.map
    elif kind == "filter":

        def step(x: int) -> bool:  # type: ignore[misc]
            return keep_item(i, x)

        decorator = parallel.filter
    else:

        def step(chunk: list[int]) -> list[int]:  # type: ignore[misc]
            return [y for x in chunk for y in expand_item(i, x)]

        decorator = parallel
    return depends(upstream)(decorator(name=f"n{i}", **options)(step))


# -- random DAG shapes -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Node:
    index: int
    kind: str  # "source", "map", "filter", "chunks" or "whole"
    upstreams: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"n{self.index}"


@st.composite
def dag_shapes(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(1, 8))
    nodes: list[Node] = []
    for index in range(count):
        upstreams: tuple[int, ...] = ()
        if index:
            upstreams = tuple(draw(st.lists(st.integers(0, index - 1), unique=True, max_size=3)))
        if not upstreams:
            kind = "source"
        elif len(upstreams) == 1:
            kind = draw(st.sampled_from([*KINDS, "whole"]))
        else:
            kind = "whole"
        nodes.append(Node(index, kind, upstreams))
    return nodes


def build_functions(nodes: list[Node]) -> dict[int, Callable[..., Any]]:
    functions: dict[int, Callable[..., Any]] = {}
    for node in nodes:
        i = node.index
        ups = [functions[u] for u in node.upstreams]
        if node.kind == "source":

            def make(i: int = i) -> list[int]:
                return [i, i + 7, 2 * i + 1]

            functions[i] = source_step(name=node.name)(make)
        elif node.kind == "whole":

            def join(*parts: list[int], i: int = i) -> list[int]:
                return [x for part in parts for x in part] + [i]

            functions[i] = depends(*ups)(postprocess(name=node.name)(join))
        else:
            functions[i] = make_parallel(node.kind, i, ups[0])
    return functions


def evaluate_plain(nodes: list[Node], index: int) -> list[int]:
    node = nodes[index]
    if node.kind == "source":
        return [index, index + 7, 2 * index + 1]
    inputs = [evaluate_plain(nodes, u) for u in node.upstreams]
    if node.kind == "whole":
        return [x for part in inputs for x in part] + [index]
    return apply_plain(node.kind, index, inputs[0])


@settings(max_examples=80, deadline=None)
@given(nodes=dag_shapes(), data=st.data())
def test_random_dags_validate_and_order_topologically(nodes: list[Node], data: st.DataObject) -> None:
    functions = build_functions(nodes)
    listed = data.draw(st.permutations(list(functions.values())))
    sinks = [n.name for n in nodes if not any(n.index in m.upstreams for m in nodes)]
    if len(sinks) != 1:
        with pytest.raises(PipelineDefinitionError, match=rf"has {len(sinks)} final steps") as caught:
            Pipeline(listed)
        assert all(name in str(caught.value) for name in sinks)
        return
    pipeline = Pipeline(listed)
    order = list(pipeline.graph.steps)
    assert sorted(order) == sorted(n.name for n in nodes)
    position = {name: k for k, name in enumerate(order)}
    for node in nodes:
        step = pipeline.graph[node.name]
        assert step.upstreams == tuple(nodes[u].name for u in node.upstreams)
        assert all(position[up] < position[node.name] for up in step.upstreams)
    assert pipeline.graph.output == sinks[0]

    plan = pipeline.plan()
    assert [name for stage in plan.stages for name in stage.step_names] == order
    for stage in plan.stages:
        kinds = {step.kind for step in stage.steps}
        if stage.kind == "parallel":
            assert kinds <= set(KINDS)
            for before, after in zip(stage.steps, stage.steps[1:], strict=False):
                assert after.upstreams == (before.name,)
        else:
            assert len(stage.steps) == 1
            assert kinds <= {"source", "whole"}
    stage_position = {stage.name: k for k, stage in enumerate(plan.stages)}
    assert all(
        stage_position[up] < stage_position[stage.name]
        for stage in plan.stages
        for up in stage.upstreams
    )


@pytest.mark.parametrize(("engine", "examples"), [("serial", 40), ("threads", 40), ("processes", 8)])
def test_random_dags_run_like_plain_python(engine: str, examples: int) -> None:
    @settings(max_examples=examples, deadline=None)
    @given(nodes=dag_shapes(), inline=st.booleans())
    def check(nodes: list[Node], inline: bool) -> None:
        sinks = [n for n in nodes if not any(n.index in m.upstreams for m in nodes)]
        if len(sinks) != 1:
            return
        functions = build_functions(nodes)
        result = madhatter.run(functions[sinks[0].index], engine=engine, workers=2, inline=inline)
        assert result == evaluate_plain(nodes, sinks[0].index)

    check()


# -- random cycles -----------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(
    cycle=st.lists(names, min_size=1, max_size=6, unique=True),
    tail_from=st.integers(0, 5),
    data=st.data(),
)
def test_random_cycles_are_named_exactly(cycle: list[str], tail_from: int, data: st.DataObject) -> None:
    """A loop of ``@depends`` among other, innocent steps: the error names the loop, only it."""
    cycle_steps = []
    for position, name in enumerate(cycle):

        def hop(x: int) -> int:
            return x

        upstream = cycle[position - 1]  # the one before it in the loop feeds it
        cycle_steps.append(depends(upstream)(parallel.map(name=name)(hop)))

    def start() -> list[int]:
        return [1]

    def outside(x: int) -> int:
        return x

    def finish(a: list[int], b: list[int]) -> list[int]:
        return a + b

    innocent_source = source_step(name="Source")(start)
    innocent = depends(innocent_source)(parallel.map(name="Outside")(outside))
    tail = depends(innocent, cycle[tail_from % len(cycle)])(postprocess(name="Tail")(finish))
    listed = data.draw(st.permutations([*cycle_steps, innocent_source, innocent, tail]))

    with pytest.raises(CycleError) as caught:
        Pipeline(listed)
    named = caught.value.cycle
    assert sorted(named) == sorted(cycle)
    # In loop order, read one way or the other: each named step is fed by the next or previous.
    feeds = {(cycle[k - 1], cycle[k]) for k in range(len(cycle))}
    pairs = {(named[k], named[(k + 1) % len(named)]) for k in range(len(named))}
    assert pairs == feeds or {(b, a) for a, b in pairs} == feeds
    assert str(caught.value).startswith("steps form a cycle: " + " -> ".join([*named, named[0]]))


# -- chunking, fusion and ordering give the plain result ---------------------------------------


@st.composite
def chains(draw: st.DrawFn) -> dict[str, Any]:
    length = draw(st.integers(1, 3))
    return {
        "items": draw(st.lists(st.integers(-50, 50), max_size=60)),
        "kinds": draw(st.lists(st.sampled_from(KINDS), min_size=length, max_size=length)),
        "chunk_by": draw(st.lists(st.none() | st.integers(1, 12), min_size=length, max_size=length)),
        "n": draw(st.lists(st.none() | st.integers(1, 3), min_size=length, max_size=length)),
        "ordered": draw(st.booleans()),
        "inline": draw(st.booleans()),
        "fuse": draw(st.booleans()),
        "generator": draw(st.booleans()),
    }


def run_chain(case: dict[str, Any], engine: str) -> list[int]:
    items = case["items"]

    def produce() -> Any:
        return iter(list(items)) if case["generator"] else list(items)

    previous: Any = source_step(name="src")(produce)
    for i, kind in enumerate(case["kinds"]):
        previous = make_parallel(
            kind,
            i,
            previous,
            chunk_by=case["chunk_by"][i],
            n=case["n"][i],
            ordered=case["ordered"],
        )
    report = Pipeline([previous]).execute(
        engine=engine, workers=2, inline=case["inline"], fuse=case["fuse"]
    )
    assert report.skipped == ()
    return list(report.result)


def expected_chain(case: dict[str, Any]) -> list[int]:
    items = list(case["items"])
    for i, kind in enumerate(case["kinds"]):
        items = apply_plain(kind, i, items)
    return items


@pytest.mark.parametrize(("engine", "examples"), [("serial", 120), ("threads", 80), ("processes", 12)])
def test_chunking_gives_the_plain_result_in_order(engine: str, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=chains())
    def check(case: dict[str, Any]) -> None:
        result = run_chain(case, engine)
        expected = expected_chain(case)
        if case["ordered"]:
            assert result == expected
        else:
            assert sorted(result) == sorted(expected)

    check()
